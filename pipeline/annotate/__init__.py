"""Annotators: pairwise judges, pointwise rubrics, reward models, judge statistics."""
