"""GIDs: compiled balanced k-means, the hierarchical builder, the GID table and its sources."""
