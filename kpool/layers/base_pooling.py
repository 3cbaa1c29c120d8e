import itertools
import math
import numbers

import keras
import numpy as np
from keras import ops


def standardize_window(value, num_spatial_dims, name):
    """Returns `value` (an int or a sequence of ints) as a positive tuple."""
    try:
        values = (
            (value,) * num_spatial_dims
            if isinstance(value, numbers.Integral)
            else tuple(value)
        )
    except TypeError:
        values = ()
    if len(values) != num_spatial_dims or not all(
        isinstance(v, numbers.Integral) and v > 0 for v in values
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of "
            f"{num_spatial_dims} positive ints. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


def standardize_data_format(data_format):
    """Returns `data_format`, or Keras's default when it is `None`."""
    if data_format is None:
        return keras.config.image_data_format()
    standardized = str(data_format).lower()
    if standardized not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return standardized


def check_input_rank(layer, input_shape):
    """Raises unless `input_shape` is (batch, spatial dims..., channels)."""
    rank = layer.num_spatial_dims + 2
    if len(input_shape) != rank:
        raise ValueError(
            f"`inputs` of {type(layer).__name__} must have rank {rank} "
            f"(batch, {layer.num_spatial_dims} spatial dims and channels in "
            f"{layer.data_format} order). "
            f"Received: inputs.shape={tuple(input_shape)}"
        )


class BasePooling(keras.layers.Layer):
    """Base class of the windowed kpool poolings, for any number of dims.

    It holds what every pooling shares with `keras.layers.MaxPooling2D`:
    argument validation, the output shape, the config, and the checks of the
    input made in `build`. A subclass sets `num_spatial_dims` and defines
    `call`.

    Windows follow Keras: under `"valid"` there are
    `floor((n - pool_size) / strides) + 1` outputs along a spatial dim of
    size `n`; under `"same"` there are `ceil(n / strides)`, and the input is
    padded by `max((out - 1) * strides + pool_size - n, 0)` cells, half of
    them (rounded down) before.
    """

    num_spatial_dims = None

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        n = self.num_spatial_dims
        self.pool_size = standardize_window(pool_size, n, "pool_size")
        self.strides = standardize_window(
            self.pool_size if strides is None else strides, n, "strides"
        )
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(
                "`padding` must be 'valid' or 'same'. "
                f"Received: padding={padding!r}"
            )
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        check_input_rank(self, input_shape)
        if self.padding == "valid":
            spatial = self._spatial_shape(input_shape)
            too_small = (
                n is not None and n < k
                for n, k in zip(spatial, self.pool_size, strict=True)
            )
            if any(too_small):
                raise ValueError(
                    f"`pool_size`={self.pool_size} is larger than the "
                    f"spatial shape {spatial} of the input, so "
                    "padding='valid' leaves no window. Use a smaller "
                    "`pool_size` or padding='same'. "
                    f"Received: inputs.shape={tuple(input_shape)}"
                )
        # Later calls are then checked by Keras itself.
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))

    def compute_output_shape(self, input_shape):
        output_spatial = self._output_spatial_shape(input_shape)
        if self.data_format == "channels_last":
            return (input_shape[0], *output_spatial, input_shape[-1])
        return (input_shape[0], input_shape[1], *output_spatial)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        return config

    def _spatial_shape(self, shape):
        if self.data_format == "channels_last":
            return tuple(shape[1:-1])
        return tuple(shape[2:])

    def _output_spatial_shape(self, input_shape):
        sizes = []
        for n, k, s in zip(
            self._spatial_shape(input_shape),
            self.pool_size,
            self.strides,
            strict=True,
        ):
            if n is None:
                sizes.append(None)
            elif self.padding == "same":
                sizes.append(math.ceil(n / s))
            else:
                sizes.append((n - k) // s + 1)
        return tuple(sizes)

    def _max_pool(self, inputs):
        return ops.max_pool(
            inputs,
            pool_size=self.pool_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
        )

    def _zero_pad(self, inputs):
        """Pads `inputs` with zeros as `"same"` pads (not at all if valid).

        Each window of the result is a `"valid"` window: `_window_elements`,
        `_window_means` and `_average_pool` take it. Needs the spatial dims
        to be known.
        """
        if self.padding == "valid":
            return inputs
        spatial_pads = self._same_pads(self._spatial_shape(inputs.shape))
        return ops.pad(inputs, self._full_shape(spatial_pads, (0, 0)))

    def _same_pads(self, spatial_shape):
        pads = []
        for n, k, s in zip(
            spatial_shape, self.pool_size, self.strides, strict=True
        ):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads

    def _window_means(self, padded):
        """The mean of each window of zero-padded `padded`, zeros counted."""
        return ops.average_pool(
            padded,
            pool_size=self.pool_size,
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )

    def _average_pool(self, inputs, padded):
        """Average pooling of `inputs`; `padded` is `self._zero_pad(inputs)`.

        Under `"same"` each window averages its cells inside the input only,
        as `keras.ops.average_pool` does on TensorFlow and JAX. Its torch
        backend (Keras 3.15) instead averages in replicated edge cells where
        the padding is asymmetric (keras-team/keras#19721), so the layers
        average zero-padded windows and rescale by the fraction of each
        window inside the input, a constant of the shapes.
        """
        means = self._window_means(padded)
        if self.padding == "valid":
            return means
        spatial = self._spatial_shape(inputs.shape)
        fraction_inside = np.ones(())
        for n, k, s, (before, _) in zip(
            spatial,
            self.pool_size,
            self.strides,
            self._same_pads(spatial),
            strict=True,
        ):
            starts = np.arange(math.ceil(n / s)) * s - before
            inside = np.minimum(starts + k, n) - np.maximum(starts, 0)
            fraction_inside = np.multiply.outer(fraction_inside, inside / k)
        fraction_inside = fraction_inside.reshape(
            self._full_shape(fraction_inside.shape, 1)
        )
        return means / ops.convert_to_tensor(fraction_inside, means.dtype)

    def _window_elements(self, padded):
        """Lists, for each offset in the window, that element of every window.

        `padded` is `self._zero_pad(inputs)`. Entry `j` (offsets in
        row-major order) has the output's shape and holds the `j`-th element
        of each window, so a reduction over a window becomes elementwise
        arithmetic over `prod(pool_size)` tensors: no patch extraction, and
        the gradient of each entry lands on exactly the input cells it was
        sliced from. Padded cells read as zeros.
        """
        outputs = [
            (n - k) // s + 1
            for n, k, s in zip(
                self._spatial_shape(padded.shape),
                self.pool_size,
                self.strides,
                strict=True,
            )
        ]
        elements = []
        for offset in itertools.product(*(range(k) for k in self.pool_size)):
            spatial_slices = [
                slice(o, o + (out - 1) * s + 1, s)
                for o, out, s in zip(offset, outputs, self.strides, strict=True)
            ]
            elements.append(
                padded[tuple(self._full_shape(spatial_slices, slice(None)))]
            )
        return elements

    def _full_shape(self, spatial_entries, other_entry):
        """Places per-spatial-dim entries among batch and channel entries."""
        if self.data_format == "channels_last":
            return [other_entry, *spatial_entries, other_entry]
        return [other_entry, other_entry, *spatial_entries]
