"""kpool: pooling layers for Keras 3 and a pooling-ablation harness.

Importing kpool registers every layer with Keras, so a saved model that uses
them loads with `keras.saving.load_model` after `import kpool`.
"""

import importlib
import os

_SUBMODULES = ("augment", "layers", "ops")
_REGISTRY = ("downsampling_names", "get_downsampling")

__all__ = ["augment", "downsampling_names", "get_downsampling", "layers", "ops"]


def __getattr__(name):
    # Reached only where the `kpool` command deferred the imports below.
    if name in _SUBMODULES:
        return importlib.import_module(f"kpool.{name}")
    if name in _REGISTRY:
        return getattr(importlib.import_module("kpool.registry"), name)
    raise AttributeError(f"module 'kpool' has no attribute {name!r}")


if os.environ.get("KPOOL_DEFER_IMPORTS") != "1":
    # `augment` registers the harness's augmentation layer, which every
    # model the harness saves contains.
    from kpool import augment, layers, ops
    from kpool.registry import downsampling_names, get_downsampling
