"""``python -m wrennd.cli``: wrennctl."""

import sys

from wrennd.cli import main

sys.exit(main())
