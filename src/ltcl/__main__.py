"""``python -m ltcl``: the same command line as ``ltcl``, for environments without the console script."""

import sys

from ltcl.cli import main

sys.exit(main())
