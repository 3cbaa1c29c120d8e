"""Window arithmetic shared by kpool's pooling ops.

`Window` holds what every windowed pooling shares with
`keras.ops.max_pool`: the window size, the strides, the padding and the data
format, with their validation, the output shape, and the building blocks
the ops are made of (zero padding as `"same"` pads, window means, window
extraction). Everything here is `keras.ops`, so it runs on every backend,
eagerly and inside `jit`.

Windows follow Keras: under `"valid"` there are
`floor((n - pool_size) / strides) + 1` outputs along a spatial dim of size
`n`; under `"same"` there are `ceil(n / strides)`, and the input is padded by
`max((out - 1) * strides + pool_size - n, 0)` cells, half of them (rounded
down) before.
"""

import itertools
import math
import numbers

import keras
import numpy as np
from keras import ops

from kpool import backend


def standardize_tuple(value, num_spatial_dims, name):
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
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
        for v in values
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


def standardize_padding(padding):
    standardized = str(padding).lower()
    if standardized not in ("valid", "same"):
        raise ValueError(
            "`padding` must be 'valid' or 'same'. "
            f"Received: padding={padding!r}"
        )
    return standardized


def check_rank(shape, num_spatial_dims, data_format, caller):
    """Raises unless `shape` is (batch, spatial dims..., channels)."""
    rank = num_spatial_dims + 2
    if len(shape) != rank:
        raise ValueError(
            f"`inputs` of {caller} must have rank {rank} (batch, "
            f"{num_spatial_dims} spatial dims and channels in {data_format} "
            f"order). Received: inputs.shape={tuple(shape)}"
        )


def spatial_rank(inputs, pool_size, caller):
    """The number of spatial dims of `inputs`, checked against `pool_size`."""
    rank = len(inputs.shape) - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            f"`inputs` of {caller} must have rank 3, 4 or 5 (batch, 1 to 3 "
            f"spatial dims, channels). Received: inputs.shape="
            f"{tuple(inputs.shape)}"
        )
    if not isinstance(pool_size, numbers.Integral):
        try:
            if len(pool_size) != rank:
                raise ValueError(
                    f"`pool_size` has {len(pool_size)} entries but `inputs` "
                    f"of {caller} has {rank} spatial dims. Received: "
                    f"pool_size={pool_size!r}, inputs.shape="
                    f"{tuple(inputs.shape)}"
                )
        except TypeError:
            pass  # standardize_tuple names the argument.
    return rank


class Window:
    """A pooling window: size, strides, padding and data format.

    Args:
        num_spatial_dims: int, 1, 2 or 3.
        pool_size: int or tuple of ints.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`, case-insensitive.
        data_format: `"channels_last"`, `"channels_first"` or `None`.
    """

    def __init__(
        self,
        num_spatial_dims,
        pool_size,
        strides=None,
        padding="valid",
        data_format=None,
    ):
        n = num_spatial_dims
        self.num_spatial_dims = n
        self.pool_size = standardize_tuple(pool_size, n, "pool_size")
        self.strides = standardize_tuple(
            self.pool_size if strides is None else strides, n, "strides"
        )
        self.padding = standardize_padding(padding)
        self.data_format = standardize_data_format(data_format)

    @classmethod
    def of(cls, inputs, pool_size, strides, padding, data_format, caller):
        """The window of an op called on `inputs`, with its rank checked."""
        rank = spatial_rank(inputs, pool_size, caller)
        return cls(rank, pool_size, strides, padding, data_format)

    @property
    def channels_last(self):
        return self.data_format == "channels_last"

    @property
    def window_axis(self):
        """The axis of `windows`'s result that runs over a window."""
        return -2 if self.channels_last else -1

    @property
    def channel_axis(self):
        return -1 if self.channels_last else 1

    def spatial_axes(self):
        first = 1 if self.channels_last else 2
        return list(range(first, first + self.num_spatial_dims))

    def tiles(self, spatial_shape):
        """Whether the windows tile `spatial_shape`: each stride is its
        window's size and divides the dim."""
        return all(
            k == s and n % s == 0
            for k, s, n in zip(
                self.pool_size, self.strides, spatial_shape, strict=True
            )
        )

    def spatial_shape(self, shape):
        # Python ints: torch's tracer (ONNX export) gives sizes as tensors.
        spatial = shape[1:-1] if self.channels_last else shape[2:]
        return tuple(None if n is None else int(n) for n in spatial)

    def full_shape(self, spatial_entries, other_entry):
        """Places per-spatial-dim entries among batch and channel entries."""
        if self.channels_last:
            return [other_entry, *spatial_entries, other_entry]
        return [other_entry, other_entry, *spatial_entries]

    def check_fits(self, input_shape, caller):
        """Raises where `"valid"` leaves no window along a known dim."""
        if self.padding != "valid":
            return
        spatial = self.spatial_shape(input_shape)
        if any(
            n is not None and n < k
            for n, k in zip(spatial, self.pool_size, strict=True)
        ):
            raise ValueError(
                f"`pool_size`={self.pool_size} of {caller} is larger than "
                f"the spatial shape {spatial} of the input, so "
                "padding='valid' leaves no window. Use a smaller "
                "`pool_size` or padding='same'. "
                f"Received: inputs.shape={tuple(input_shape)}"
            )

    def output_spatial_shape(self, input_shape):
        sizes = []
        for n, k, s in zip(
            self.spatial_shape(input_shape),
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

    def output_shape(self, input_shape, caller="the pooling"):
        """The output shape, after the checks of rank and window size."""
        input_shape = tuple(input_shape)
        check_rank(input_shape, self.num_spatial_dims, self.data_format, caller)
        self.check_fits(input_shape, caller)
        spatial = self.output_spatial_shape(input_shape)
        if self.channels_last:
            return (input_shape[0], *spatial, input_shape[-1])
        return (input_shape[0], input_shape[1], *spatial)

    def max_pool(self, inputs):
        """`keras.ops.max_pool` over these windows; on torch, the backend's
        form (`kpool.backend.torch.max_pool`): no copy of a channels-last
        input, and pads under `"same"` that torch's ONNX export can read."""
        fast = backend.fast_path("max_pool", inputs, self)
        if fast is not None:
            return fast(self, inputs)
        return ops.max_pool(
            inputs,
            pool_size=self.pool_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
        )

    def same_pads(self, spatial_shape):
        pads = []
        for n, k, s in zip(
            spatial_shape, self.pool_size, self.strides, strict=True
        ):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads

    def tile_pads(self, input_shape):
        """How each spatial dim of `input_shape` becomes `strides * out`
        cells, whole tiles of one stride per output cell (the windows of
        SoftPool's reshaped forms): `(keep, before, after)` per dim, the
        first `keep` cells kept, then `before` cells padded in front
        (`"same"`'s own) and `after` behind (what the last tile lacks).
        """
        spatial = self.spatial_shape(input_shape)
        pads = self.same_pads(spatial) if self.padding == "same" else None
        tiles = []
        for d, (n, s, out) in enumerate(
            zip(
                spatial,
                self.strides,
                self.output_spatial_shape(input_shape),
                strict=True,
            )
        ):
            before = pads[d][0] if pads else 0
            tiles.append(
                (min(n, s * out - before), before, max(s * out - n - before, 0))
            )
        return tiles

    def zero_pad(self, inputs):
        """Pads `inputs` with zeros as `"same"` pads (not at all if valid).

        Each window of the result is a `"valid"` window: `windows`,
        `window_means` and `average_pool` take it. Needs the spatial dims
        to be known.
        """
        return self.pad(inputs, 0)

    def pad(self, inputs, value):
        """`zero_pad` with `value` in the padded cells (NaN, say, which
        equals no cell)."""
        if self.padding == "valid":
            return inputs
        spatial_pads = self.same_pads(self.spatial_shape(inputs.shape))
        return ops.pad(
            inputs,
            self.full_shape(spatial_pads, (0, 0)),
            constant_values=value,
        )

    def window_means(self, padded):
        """The mean of each window of zero-padded `padded`, zeros counted."""
        fast = backend.fast_path("window_means", padded, self)
        if fast is not None:
            return fast(self, padded)
        return ops.average_pool(
            padded,
            pool_size=self.pool_size,
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )

    def fraction_inside(self, input_shape, dtype):
        """Each window's fraction of cells inside the input, a constant of
        the shapes, broadcastable to the output (1 under `"valid"`)."""
        spatial = self.spatial_shape(input_shape)
        fraction = np.ones(())
        for n, k, s, (before, _) in zip(
            spatial,
            self.pool_size,
            self.strides,
            self.same_pads(spatial),
            strict=True,
        ):
            if self.padding == "valid":
                inside = np.full((n - k) // s + 1, k)
            else:
                starts = np.arange(math.ceil(n / s)) * s - before
                inside = np.minimum(starts + k, n) - np.maximum(starts, 0)
            fraction = np.multiply.outer(fraction, inside / k)
        fraction = fraction.reshape(self.full_shape(fraction.shape, 1))
        return ops.convert_to_tensor(fraction, dtype)

    def average_pool(self, inputs, padded):
        """Average pooling of `inputs`; `padded` is `self.zero_pad(inputs)`.

        Under `"same"` each window averages its cells inside the input only,
        as `keras.ops.average_pool` does on TensorFlow and JAX. Its torch
        backend (Keras 3.15) instead averages in replicated edge cells where
        the padding is asymmetric (keras-team/keras#19721), so this averages
        zero-padded windows and rescales by the fraction of each window
        inside the input.
        """
        means = self.window_means(padded)
        if self.padding == "valid":
            return means
        return means / self.fraction_inside(inputs.shape, means.dtype)

    def windows(self, padded):
        """Stacks the elements of each window on a new axis.

        `padded` is `self.zero_pad(inputs)`. The result has the output's
        shape plus an axis of length `prod(pool_size)` (`window_axis`: just
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
        spatial_axes = self.spatial_axes()
        windows = padded
        for dim, (k, s) in enumerate(
            zip(self.pool_size, self.strides, strict=True)
        ):
            # Earlier dims have already been split into (out, k) pairs.
            axis = spatial_axes[dim] + dim
            windows, out = _fit_phases(windows, axis, k, s)
            length = windows.shape[axis]
            shape = list(ops.shape(windows))
            shape[axis : axis + 1] = [length // s, s]
            windows = ops.reshape(windows, shape)
            pieces = [
                unit_slice(
                    unit_slice(windows, axis, j, out),
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
        channel_axis = len(windows.shape) - 1 if self.channels_last else 1
        order = [0, *output_axes, *window_axes, channel_axis]
        if not self.channels_last:
            order = [0, channel_axis, *output_axes, *window_axes]
        windows = ops.transpose(windows, order)
        shape = list(ops.shape(windows))
        first = len(order) - self.num_spatial_dims - self.channels_last
        shape[first : first + self.num_spatial_dims] = [
            math.prod(self.pool_size)
        ]
        return ops.reshape(windows, shape)

    def cells(self, padded):
        """Each window's elements as separate tensors of the output's
        shape, `prod(pool_size)` of them in the window's row-major order:
        the `j`-th holds every window's `j`-th element.

        `padded` is `self.zero_pad(inputs)`. As in `windows`, each spatial
        dim is cropped or zero-padded to `s * (out + q)` cells and split
        into `(out + q, s)`; one transpose brings the `s` phases of every
        dim to the front, and offset `o = j * s + r` is then the
        unit-stride slice `[j:j + out]` of phase `r` (the phase itself
        where windows tile the input). Ops on the elements are then ops
        on tensors of the output's size, where `windows` concatenates
        them into one tensor as large as all of them.
        """
        spatial_axes = self.spatial_axes()
        x = padded
        outs, reaches = [], []
        for axis, k, s in zip(
            spatial_axes, self.pool_size, self.strides, strict=True
        ):
            x, out = _fit_phases(x, axis, k, s)
            outs.append(out)
            reaches.append((k - 1) // s)
        # Each spatial dim split into (out + q, s), the phases moved first.
        split = [-1]
        for axis in range(1, len(x.shape)):
            if axis in spatial_axes:
                d = spatial_axes.index(axis)
                split += [outs[d] + reaches[d], self.strides[d]]
            else:
                split.append(int(x.shape[axis]))
        phase_axes = [axis + d + 1 for d, axis in enumerate(spatial_axes)]
        rest = [axis for axis in range(len(split)) if axis not in phase_axes]
        count = math.prod(self.strides)
        phases = ops.transpose(ops.reshape(x, split), phase_axes + rest)
        phases = ops.reshape(phases, [count, *(split[axis] for axis in rest)])
        phases = ops.unstack(phases, num=count)
        cells = []
        for offsets in itertools.product(*(range(k) for k in self.pool_size)):
            phase = 0
            for offset, s in zip(offsets, self.strides, strict=True):
                phase = phase * s + offset % s
            cell = phases[phase]
            for axis, offset, s, out, reach in zip(
                spatial_axes, offsets, self.strides, outs, reaches, strict=True
            ):
                if reach:
                    cell = unit_slice(cell, axis, offset // s, out)
            cells.append(cell)
        return cells

    def broadcast_channels(self, weight):
        """Reshapes a per-channel weight to broadcast against the output."""
        if self.channels_last or not len(weight.shape):
            return weight
        return ops.reshape(weight, (-1,) + (1,) * self.num_spatial_dims)


def _fit_phases(padded, axis, k, s):
    """`(padded, out)`: `padded` cropped or zero-padded along `axis` to `s *
    (out + (k - 1) // s)` cells, whole phases of the stride `s` for the
    `out` windows of size `k` (`Window.windows`, `Window.cells`). The cells
    cropped or padded are in no window."""
    n = padded.shape[axis]
    out = (n - k) // s + 1
    length = s * (out + (k - 1) // s)
    if length > n:
        pads = [(0, 0)] * len(padded.shape)
        pads[axis] = (0, length - n)
        padded = ops.pad(padded, pads)
    elif length < n:
        padded = unit_slice(padded, axis, 0, length)
    return padded, out


def unit_slice(tensor, axis, start, size):
    """`tensor[..., start:start + size, ...]` along `axis`.

    A unit-stride `ops.slice`, whose TensorFlow gradient is a cheap pad (see
    `Window.windows`); a slice that keeps everything is skipped. A dim of
    unknown size (an exported model's batch) is kept whole as `-1`, so the
    slice's arguments are constants: read from `ops.shape`, they were a
    shape, a strided slice and a stack per slice in TFLite and ONNX graphs.
    """
    if start == 0 and size == tensor.shape[axis]:
        return tensor
    starts = [0] * len(tensor.shape)
    starts[axis] = start
    shape = [-1 if n is None else n for n in tensor.shape]
    shape[axis] = size
    return ops.slice(tensor, starts, shape)


def float_compute_dtype(dtype):
    """The dtype a pooling of `dtype` computes in: float32 for float16 and
    bfloat16 (whose range or precision its intermediate values outgrow);
    for integers and bools float32, or float64 from 32 bits up where the
    backend has it (means, powers and infinite padding need a float; the
    result is cast back, truncating as a cast does); else `dtype`."""
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" in dtype or dtype == "bool":
        wide = dtype.endswith(("32", "64")) and backend.has_float64()
        return "float64" if wide else "float32"
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def integers_as_floats(inputs):
    """`inputs` cast to `float_compute_dtype` where its dtype is not a
    float one (integers, bools: negations, means and masks need a float),
    else as it is. Cast the result back to `inputs.dtype`."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if "float" in dtype:
        return inputs
    return ops.cast(inputs, float_compute_dtype(dtype))


def as_tensor(inputs):
    """`inputs` as a tensor of the backend, or as it is if symbolic."""
    if isinstance(inputs, keras.KerasTensor) or ops.is_tensor(inputs):
        return inputs
    return ops.convert_to_tensor(inputs)
