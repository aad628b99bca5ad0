"""Collaborative filtering: LightGCN (item embeddings for GIDs, and a baseline) and MostPop."""
