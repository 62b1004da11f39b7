import sys

from livefs.cli import main

sys.exit(main())
