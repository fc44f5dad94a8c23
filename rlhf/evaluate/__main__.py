"""`python -m rlhf.evaluate`: the evaluations' command line (rlhf.evaluate.cli)."""

import sys

from rlhf.evaluate.cli import main

sys.exit(main())
