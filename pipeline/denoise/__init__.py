"""Noisy-pair filtering: confidence weights, peer review, flip/drop decisions."""
