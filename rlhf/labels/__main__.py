"""`python -m rlhf.labels`: the labels command line (rlhf.labels.cli)."""

import sys

from rlhf.labels.cli import main

sys.exit(main())
