"""Arrow schemas of every stage boundary and the pydantic run configuration."""
