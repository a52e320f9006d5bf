"""AdamW: parameter groups (`groups.py`) and the guarded fused step (`guarded.py`)."""

from .groups import ParamGroup, describe_groups, param_groups, resolve_groups
from .guarded import GuardedAdamW

__all__ = ["GuardedAdamW", "ParamGroup", "describe_groups", "param_groups", "resolve_groups"]
