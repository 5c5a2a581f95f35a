"""The study runner: Ray Tune (Optuna TPE + ASHA, then a seeded confirm stage) over the trials, MLflow records, resume."""
