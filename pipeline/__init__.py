"""prefcurate stage logic: pure functions over Arrow / polars tables (no Prefect here)."""

__version__ = "0.1.0"
