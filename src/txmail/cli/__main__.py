"""`python -m txmail.cli`: what the `txmail` script runs, for tests and containers."""

import sys

from txmail.cli import main

sys.exit(main())
