"""``python -m medrt``: the medrt command line."""

import sys

from medrt.cli import main

sys.exit(main())
