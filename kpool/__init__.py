"""kpool: pooling operators for Keras 3, as functional ops and layers.

`import kpool` loads the library alone: `kpool.ops`, `kpool.layers`, the
registry (`kpool.get_downsampling`) and the backend pieces under them. It
registers every layer with Keras, so a saved model that uses them loads with
`keras.saving.load_model` after `import kpool`. The experiment harness is
`kpool.harness`, imported only when asked for.
"""

import importlib
import os

_SUBMODULES = ("layers", "ops", "registry")
_REGISTRY = ("downsampling_names", "get_downsampling")

__all__ = ["downsampling_names", "get_downsampling", "layers", "ops"]


def __getattr__(name):
    # Reached only where the `kpool` command deferred the imports below.
    if name in _SUBMODULES:
        return importlib.import_module(f"kpool.{name}")
    if name in _REGISTRY:
        return getattr(importlib.import_module("kpool.registry"), name)
    raise AttributeError(f"module 'kpool' has no attribute {name!r}")


# The `kpool` command (`kpool_cli`) sets this so that `--help` and `report`
# start without importing Keras; `kpool run` imports the layers when it
# builds a model.
if os.environ.get("KPOOL_DEFER_IMPORTS") != "1":
    from kpool import layers, ops
    from kpool.registry import downsampling_names, get_downsampling
