"""Data: sources -> store -> compiled arrays -> Grain loader."""
