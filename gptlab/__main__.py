"""`python -m gptlab ...` and `torchrun ... -m gptlab train ...`."""

import sys

from gptlab.cli import main

sys.exit(main())
