"""Market store, point-in-time readers, sources and data quality."""
