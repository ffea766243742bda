"""Entry point: `python -m bench [quick|full]`."""

import sys

from bench.cli import main

sys.exit(main())
