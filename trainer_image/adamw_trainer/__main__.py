"""`python -m adamw_trainer --config FILE` (what torchrun runs with `-m`)."""

import sys

from .cli import main

sys.exit(main())
