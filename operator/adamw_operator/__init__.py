"""adamw_operator: the Kopf operator for AdamWTrainingJob resources (no torch here)."""

__version__ = "0.1.0"
