"""Aggregation of votes: Dawid-Skene EM and the integer codes it runs on."""
