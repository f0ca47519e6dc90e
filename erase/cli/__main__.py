import sys

from erase.cli import main

sys.exit(main())
