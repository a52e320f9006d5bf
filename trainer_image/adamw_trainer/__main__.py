"""`python -m adamw_trainer --config FILE` (what torchrun runs with `-m`)."""

from .cli import entry

entry()
