"""The built-in GPT now lives in `models/gpt.py`; this module keeps the old imports working."""

from .models.gpt import GPT, count_parameters, flops_per_token

__all__ = ["GPT", "count_parameters", "flops_per_token"]
