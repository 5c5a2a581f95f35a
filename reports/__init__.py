"""Tables and figures from MLflow / parquet (issue 5; not built yet)."""
