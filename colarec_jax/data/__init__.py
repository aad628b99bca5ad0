"""Data layer: sources, the Dataset, splitting, tokenisation and preparation."""
