"""The study runner: Ray Tune + Optuna + ASHA, MLflow records (issue 4; not built yet)."""
