"""`python -m comical` runs the CLI."""

import sys

from comical.cli import main

sys.exit(main())
