"""`python -m erase ...` (and `accelerate launch -m erase batch ...`): the erase command line."""

import sys

from erase.cli import main

sys.exit(main())
