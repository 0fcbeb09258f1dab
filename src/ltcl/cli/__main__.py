"""``python -m ltcl.cli`` (what torchrun starts) runs the command line."""

import sys

from ltcl.cli import main

sys.exit(main())
