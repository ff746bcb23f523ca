"""General preference model heads over embeddings (annotator, active selection, cycles)."""
