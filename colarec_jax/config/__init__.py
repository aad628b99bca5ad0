"""The config: every key with its default and meaning (`base`), parsed once into checked
per-stage views (`settings`), and the copy a trained workdir keeps (`stored`).

A config file (`configs/*.py`) imports the names below.
"""

from colarec_jax.config.base import atomic_dataset, base_config, cpu_model, t5_small, with_variant

__all__ = ["atomic_dataset", "base_config", "cpu_model", "t5_small", "with_variant"]
