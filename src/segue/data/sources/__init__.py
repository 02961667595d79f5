"""Input formats. Each module turns one format into `Chunk`s of the same columns (see base.py)."""
