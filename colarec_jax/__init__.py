"""ColaRec in JAX/Flax: content-based collaborative generation for recommendation."""

__version__ = "0.1.0"


def __getattr__(name: str):
  """`colarec_jax.Recommender` (colarec_jax/serving/recommender.py), imported on first use so that
  `import colarec_jax` stays light."""
  if name == "Recommender":
    from colarec_jax.serving.recommender import Recommender
    return Recommender
  raise AttributeError(f"module 'colarec_jax' has no attribute {name!r}")
