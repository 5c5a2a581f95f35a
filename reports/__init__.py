"""Tables and figures from MLflow: `python -m reports.table --experiment NAME` (see `reports.build`)."""
