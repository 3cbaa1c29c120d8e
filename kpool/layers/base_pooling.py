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

        Each window of the result is a `"valid"` window: `_windows`,
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

    def _windows(self, padded):
        """Stacks the elements of each window on a new axis.

        `padded` is `self._zero_pad(inputs)`. The result has the output's
        shape plus an axis of length `prod(pool_size)` (`_window_axis`: just
        before the channels under channels_last, last otherwise) holding
        each window's elements in row-major order, so a reduction over a
        window is one reduction over that axis. Padded cells read as zeros.

        Strided slices would do, but TensorFlow's CPU gradient of a strided
        slice is tens of times slower than max pooling. Instead each spatial
        dim of size `n` is cropped or zero-padded to `s * (out + q)` cells,
        with `q = (k - 1) // s`, and split into `(out + q, s)`: offset
        `o = j * s + r` of output cell `t` is then cell `(t + j, r)`, and the
        `q + 1` unit-stride slices `[j:j + out, :min(s, k - j * s)]`,
        concatenated on the phase axis, give that dim's `(out, k)` windows.
        The cells cropped or padded this way are in no window.
        """
        spatial_axes = self._spatial_axes()
        windows = padded
        for dim, (k, s) in enumerate(
            zip(self.pool_size, self.strides, strict=True)
        ):
            # Earlier dims have already been split into (out, k) pairs.
            axis = spatial_axes[dim] + dim
            n = windows.shape[axis]
            out = (n - k) // s + 1
            length = s * (out + (k - 1) // s)
            if length > n:
                pads = [(0, 0)] * len(windows.shape)
                pads[axis] = (0, length - n)
                windows = ops.pad(windows, pads)
            elif length < n:
                windows = self._unit_slice(windows, axis, 0, length)
            shape = list(ops.shape(windows))
            shape[axis : axis + 1] = [length // s, s]
            windows = ops.reshape(windows, shape)
            pieces = [
                self._unit_slice(
                    self._unit_slice(windows, axis, j, out),
                    axis + 1,
                    0,
                    min(s, k - j * s),
                )
                for j in range((k - 1) // s + 1)
            ]
            windows = (
                pieces[0]
                if len(pieces) == 1
                else ops.concatenate(pieces, axis=axis + 1)
            )
        # Gather the window axes, each now right after its output axis, into
        # one axis after the spatial ones. Under channels_last the channels
        # stay innermost, so the transpose moves whole rows of channels.
        window_axes = [a + d + 1 for d, a in enumerate(spatial_axes)]
        output_axes = [a + d for d, a in enumerate(spatial_axes)]
        channel_axis = len(windows.shape) - 1 if self._channels_last else 1
        order = [0, *output_axes, *window_axes, channel_axis]
        if not self._channels_last:
            order = [0, channel_axis, *output_axes, *window_axes]
        windows = ops.transpose(windows, order)
        shape = list(ops.shape(windows))
        first = len(order) - self.num_spatial_dims - self._channels_last
        shape[first : first + self.num_spatial_dims] = [
            math.prod(self.pool_size)
        ]
        return ops.reshape(windows, shape)

    @property
    def _channels_last(self):
        return self.data_format == "channels_last"

    @property
    def _window_axis(self):
        """The axis of `_windows`'s result that runs over a window."""
        return -2 if self._channels_last else -1

    @staticmethod
    def _unit_slice(tensor, axis, start, size):
        """`tensor[..., start:start + size, ...]` along `axis`.

        A unit-stride `ops.slice`, whose TensorFlow gradient is a cheap pad
        (see `_windows`); a slice that keeps everything is skipped.
        """
        if start == 0 and size == tensor.shape[axis]:
            return tensor
        starts = [0] * len(tensor.shape)
        starts[axis] = start
        shape = list(ops.shape(tensor))
        shape[axis] = size
        return ops.slice(tensor, starts, shape)

    def _spatial_axes(self):
        first = 1 if self.data_format == "channels_last" else 2
        return list(range(first, first + self.num_spatial_dims))

    def _full_shape(self, spatial_entries, other_entry):
        """Places per-spatial-dim entries among batch and channel entries."""
        if self.data_format == "channels_last":
            return [other_entry, *spatial_entries, other_entry]
        return [other_entry, other_entry, *spatial_entries]
