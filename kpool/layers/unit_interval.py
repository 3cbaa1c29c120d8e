import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kpool")
class UnitInterval(keras.constraints.Constraint):
    """Constrains a weight to [0, 1] by clipping it after each update.

    `MixedPooling(mode="learned")` uses it to keep its mixing proportion a
    proportion.
    """

    def __call__(self, w):
        return ops.clip(w, 0.0, 1.0)
