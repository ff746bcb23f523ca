"""Prompt hygiene before any model call: dedup and benchmark decontamination."""
