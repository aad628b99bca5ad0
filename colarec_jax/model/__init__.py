"""Flax models: the T5 encoder-decoder stack and the ColaRec model built on it."""
