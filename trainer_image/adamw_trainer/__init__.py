"""adamw_trainer: a fused-AdamW GPT trainer with Prometheus metrics.

Importing this package must not import torch: the operator imports `config` and
`exit_codes` from here without torch installed.
"""

__version__ = "0.1.0"
