"""kpool: pooling layers for Keras 3 and a pooling-ablation harness.

Importing kpool registers every layer with Keras, so a saved model that uses
them loads with `keras.saving.load_model` after `import kpool`.
"""

# `augment` registers the harness's augmentation layer, which every model the
# harness saves contains.
from kpool import augment, layers, ops
from kpool.registry import downsampling_names, get_downsampling

__all__ = ["augment", "downsampling_names", "get_downsampling", "layers", "ops"]
