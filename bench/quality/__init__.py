"""Quality benchmark: Ladder's samplers vs Optuna at equal budget (see run.py)."""
