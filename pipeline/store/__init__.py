"""Stores: versioned datasets, stage outputs, diffs between versions."""
