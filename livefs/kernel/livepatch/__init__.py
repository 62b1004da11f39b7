"""The livepatch core: kernel/livepatch/ in the model (core, patch, transition)."""

from .core import KlpFunc, KlpObject, KlpPatch, Livepatch

__all__ = ["KlpFunc", "KlpObject", "KlpPatch", "Livepatch"]
