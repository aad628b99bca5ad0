"""ColaRec in JAX/Flax: content-based collaborative generation for recommendation."""

__version__ = "0.1.0"
