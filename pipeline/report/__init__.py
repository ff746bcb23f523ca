"""The per-stage data-quality report (HTML and terminal)."""
