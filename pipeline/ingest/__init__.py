"""Ingest: read prompts or pairs files into the PROMPTS / CANDIDATES tables."""
