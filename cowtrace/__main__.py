"""`python -m cowtrace`: the same as the `cowtrace` command."""

import sys

from cowtrace.cli import main

sys.exit(main())
