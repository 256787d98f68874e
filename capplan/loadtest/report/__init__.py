"""Reports from a run directory: requests.parquet, report.md, report.html."""
