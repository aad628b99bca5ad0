"""Ranking with a trained ColaRec: constrained beam search over the GID trie (`decode`) and the
`Ranker` that batches users through it and scores whole splits (`ranker`)."""
