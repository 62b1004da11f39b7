"""livefs: a sysfs-faithful FUSE mock of the Linux kernel's livepatch interface."""

__version__ = "0.2.0"
