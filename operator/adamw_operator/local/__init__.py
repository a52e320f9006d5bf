"""`adamw-job run FILE`: run an AdamWTrainingJob on this machine, no cluster needed."""
