"""Anti-aliased downsampling (Zhang, 2019): blur pooling and max-blur pooling.

`Blur` holds a blur pooling's arguments, their validation and its output
shape, as `kpool.ops.windows.Window` does for a window; `blur_pool` and
`max_blur_pool` are the functional ops.
"""

import math
import numbers

import numpy as np
from keras import ops

from kpool import backend
from kpool.ops.windows import (
    Window,
    as_tensor,
    check_rank,
    float_compute_dtype,
    spatial_rank,
    standardize_data_format,
    standardize_tuple,
    unit_slice,
)

PADDING_MODES = ("reflect", "replicate", "zero", "constant")
MAX_FILTER_SIZE = 7


def binomial_filter(filter_size):
    """The binomial filter `C(f - 1, k) / 2**(f - 1)`, k = 0 .. f - 1:
    [1], [1, 1] / 2, [1, 2, 1] / 4, [1, 3, 3, 1] / 8, ... (float64)."""
    row = np.array([math.comb(filter_size - 1, k) for k in range(filter_size)])
    return row / row.sum()


class Blur:
    """A blur pooling: filter size, strides, padding mode and data format.

    Args:
        num_spatial_dims: int, 1, 2 or 3.
        filter_size: int in [1, 7]. Length of the binomial filter.
        strides: int or tuple of ints, one per spatial dim.
        padding_mode: `"reflect"`, `"replicate"`, `"zero"` or `"constant"`
            (zeros), case-insensitive.
        data_format: `"channels_last"`, `"channels_first"` or `None`.
    """

    def __init__(
        self,
        num_spatial_dims,
        filter_size=3,
        strides=2,
        padding_mode="reflect",
        data_format=None,
    ):
        if not (
            isinstance(filter_size, numbers.Integral)
            and not isinstance(filter_size, bool)
            and 1 <= filter_size <= MAX_FILTER_SIZE
        ):
            raise ValueError(
                f"`filter_size` must be an int from 1 to {MAX_FILTER_SIZE}. "
                f"Received: filter_size={filter_size!r}"
            )
        standardized = str(padding_mode).lower()
        if standardized not in PADDING_MODES:
            raise ValueError(
                f"`padding_mode` must be one of {list(PADDING_MODES)}. "
                f"Received: padding_mode={padding_mode!r}"
            )
        self.num_spatial_dims = num_spatial_dims
        self.filter_size = int(filter_size)
        self.strides = standardize_tuple(strides, num_spatial_dims, "strides")
        self.padding_mode = standardized
        self.data_format = standardize_data_format(data_format)
        # Zhang's Downsample: f - 1 cells in all, the extra one after.
        self.pads = ((self.filter_size - 1) // 2, self.filter_size // 2)

    def spatial_axes(self):
        first = 1 if self.data_format == "channels_last" else 2
        return list(range(first, first + self.num_spatial_dims))

    def output_shape(self, input_shape, caller="blur_pool"):
        """`ceil(n / strides)` along each spatial dim, after the checks."""
        input_shape = tuple(input_shape)
        check_rank(input_shape, self.num_spatial_dims, self.data_format, caller)
        self.check_fits(input_shape, caller)
        output_shape = list(input_shape)
        for axis, s in zip(self.spatial_axes(), self.strides, strict=True):
            n = input_shape[axis]
            output_shape[axis] = None if n is None else math.ceil(n / s)
        return tuple(output_shape)

    def check_fits(self, input_shape, caller):
        """Raises where reflection would reach past the other edge."""
        if self.padding_mode != "reflect":
            return
        spatial = [input_shape[axis] for axis in self.spatial_axes()]
        if any(n is not None and n <= self.pads[1] for n in spatial):
            raise ValueError(
                f"padding_mode='reflect' of {caller} reflects "
                f"{self.pads[1]} cells at an edge, so it needs more than "
                f"{self.pads[1]} cells along each spatial dim (as torch's "
                "ReflectionPad does). Use a smaller `filter_size` or "
                "padding_mode='replicate' or 'zero'. "
                f"Received: inputs.shape={tuple(input_shape)}"
            )

    def __call__(self, inputs):
        """Blurs and subsamples `inputs` along each spatial dim in turn."""
        dtype = inputs.dtype
        compute_dtype = float_compute_dtype(dtype)
        outputs = ops.cast(inputs, compute_dtype)
        weights = binomial_filter(self.filter_size)
        # torch, and TensorFlow's graph mode in 2D, blur every axis in one
        # depthwise convolution.
        fast = backend.fast_path("blur", inputs, self)
        if fast is not None:
            return ops.cast(fast(self, outputs, weights), dtype)
        # The sliced form suits XLA; the TensorFlow graph runs the depthwise
        # convolution faster (`depthwise_filter_axis`, a backend's choice).
        filter_axis = (
            backend.fast_path("blur_filter_axis", inputs) or sliced_filter_axis
        )
        for axis, s in zip(self.spatial_axes(), self.strides, strict=True):
            outputs = filter_axis(self, outputs, axis, s, weights)
        return ops.cast(outputs, dtype)

    def pad(self, view):
        """Pads axis 1 of `view` by `self.pads`, as `padding_mode` says."""
        before, after = self.pads
        if not before and not after:
            return view
        if self.padding_mode in ("zero", "constant"):
            return ops.pad(view, [(0, 0), (before, after), (0, 0)])
        n = view.shape[1]
        if self.padding_mode == "reflect":
            # Mirrored about the edge cell, which is not repeated.
            head = ops.flip(view[:, 1 : before + 1], axis=1)
            tail = ops.flip(view[:, n - 1 - after : n - 1], axis=1)
        else:
            head = ops.repeat(view[:, :1], before, axis=1)
            tail = ops.repeat(view[:, n - 1 :], after, axis=1)
        pieces = [head, view, tail] if before else [view, tail]
        return ops.concatenate(pieces, axis=1)


def sliced_filter_axis(blur, inputs, axis, stride, weights):
    """The 1-D blur and subsampling of `inputs` along `axis`.

    Whatever the data format, `inputs` is viewed (by a reshape, no
    transpose) as `(outer, n, inner)`, the dims before `axis` folded
    into `outer` and those after it into `inner`: every channel gets
    the same filter. Output `t` is `sum_j weights[j] * padded[t * s +
    j]`. Strided slices would give each term, but their TensorFlow
    gradient is slow (see `Window.windows`); instead the padded axis is
    cropped or zero-extended to `s * (out + q)` cells, `q = (f - 1) //
    s`, and split into `(out + q, s)`, so that cell `t * s + j` is
    `(t + j // s, j % s)` and each term is a unit-stride slice. This
    costs `f` multiply-adds per output, which XLA fuses: on its CPU
    backend a depthwise convolution with `inner` channels runs several
    times slower.
    """
    shape = list(inputs.shape)
    n, inner = shape[axis], math.prod(shape[axis + 1 :])
    out = math.ceil(n / stride)
    shape[axis] = out
    view = blur.pad(ops.reshape(inputs, (-1, n, inner)))
    if len(weights) == 1 and stride == 1:
        return ops.reshape(view, [-1, *shape[1:]])
    length = stride * (out + (len(weights) - 1) // stride)
    padded = view.shape[1]
    if length > padded:
        view = ops.pad(view, [(0, 0), (0, length - padded), (0, 0)])
    elif length < padded:
        view = unit_slice(view, 1, 0, length)
    view = ops.reshape(view, (-1, length // stride, stride, inner))
    total = None
    for j, weight in enumerate(weights):
        term = unit_slice(view, 1, j // stride, out)
        term = ops.squeeze(unit_slice(term, 2, j % stride, 1), 2)
        if weight != 1:
            term = term * ops.cast(weight, view.dtype)
        total = term if total is None else total + term
    return ops.reshape(total, [-1, *shape[1:]])


def blur_pool(
    inputs, filter_size=3, strides=2, padding_mode="reflect", data_format=None
):
    """Blur pooling (Zhang, 2019): a binomial low-pass filter, subsampled.

    Along each spatial dim in turn the input is padded by
    `(filter_size - 1) // 2` cells before and `filter_size // 2` after, as
    `padding_mode` says, then convolved, with stride `strides`, with the
    normalised binomial filter `[1]`, `[1, 1] / 2`, `[1, 2, 1] / 4`,
    `[1, 3, 3, 1] / 8`, ... of length `filter_size` (the 2D and 3D filters
    are the outer products of these). Every channel gets the same filter.
    This is the `Downsample` of Zhang's antialiased-cnns. A spatial dim of
    size `n` gives `ceil(n / strides)` outputs; `filter_size=1` is plain
    subsampling, `x[::strides]`.

    `padding_mode` is `"reflect"` (the mirror image about the edge cell,
    which is not repeated: torch's `ReflectionPad`, the paper's default),
    `"replicate"` (the edge cell repeated) or `"zero"` / `"constant"`
    (zeros). With an odd `filter_size` the padding is symmetric, and
    `padding_mode="zero"` computes exactly `kornia.filters.blur_pool2d`
    (zero padding of `(k - 1) // 2` cells on each side); timm's
    `BlurPool2d` pads `((stride - 1) + (filt_size - 1)) // 2` reflected
    cells on each side, which is `padding_mode="reflect"` when `filter_size`
    is odd and `strides` is 1 or 2. For an even `filter_size` both pad
    symmetrically, one cell less (kornia) or more (timm) in all than
    Zhang's `filter_size - 1`, so their output sizes differ from it.

    Reference:
        Zhang, "Making Convolutional Networks Shift-Invariant Again",
        ICML 2019.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
            The spatial dims must be known; with `"reflect"` each must
            exceed `filter_size // 2`.
        filter_size: int from 1 to 7. Length of the binomial filter.
        strides: int or tuple of ints, one per spatial dim.
        padding_mode: `"reflect"`, `"replicate"`, `"zero"` or `"constant"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        The blurred and subsampled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([0.0, 0.0, 4.0, 0.0, 0.0, 0.0]).reshape(1, 6, 1)
    >>> kpool.ops.blur_pool(x)  # [1, 2, 1] / 4 at cells 0, 2, 4
    >>> # [[[0.], [2.], [0.]]]
    """
    inputs = as_tensor(inputs)
    blur = Blur(
        spatial_rank(inputs, 1, "blur_pool"),
        filter_size,
        strides,
        padding_mode,
        data_format,
    )
    blur.output_shape(inputs.shape, "blur_pool")
    return blur(inputs)


def max_blur_pool(
    inputs,
    pool_size=2,
    strides=2,
    filter_size=3,
    padding="valid",
    padding_mode="reflect",
    data_format=None,
):
    """Anti-aliased max pooling (Zhang, 2019): dense max, then blur pooling.

    `blur_pool(max_pool(x, pool_size, strides=1, padding), filter_size,
    strides, padding_mode)`: the max is taken densely (stride 1) and the
    blur pooling does the subsampling. A spatial dim of size `n` gives
    `ceil(m / strides)` outputs, with `m = n - pool_size + 1` under
    `padding="valid"` and `m = n` under `"same"`. With `pool_size=2`,
    `strides=2`, `"valid"` this is Zhang's `MaxBlurPool`
    (`MaxPool2d(2, stride=1)` then `Downsample`), and gives as many cells
    as `MaxPooling2D(2)` where `n` is even. kornia's `max_blur_pool2d` is
    the same with the blur's `padding_mode="zero"` and an odd
    `filter_size` (see `blur_pool`).

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        pool_size: int or tuple of ints. The max pooling window.
        strides: int or tuple of ints. The blur pooling's strides.
        filter_size: int from 1 to 7. Length of the binomial filter.
        padding: `"valid"` or `"same"`, of the max pooling.
        padding_mode: `"reflect"`, `"replicate"`, `"zero"` or `"constant"`,
            of the blur.
        data_format: `"channels_last"`, `"channels_first"`, or `None`.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> kpool.ops.max_blur_pool(np.random.rand(2, 32, 32, 3)).shape
    >>> # (2, 16, 16, 3)
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, 1, padding, data_format, "max_blur_pool"
    )
    blur = Blur(
        window.num_spatial_dims,
        filter_size,
        strides,
        padding_mode,
        data_format,
    )
    maxed_shape = window.output_shape(inputs.shape, "max_blur_pool")
    blur.output_shape(maxed_shape, "max_blur_pool")
    # TensorFlow has no float16 MaxPool3D on CPU; a max is exact in any
    # float, and the blur computes in float32 anyway.
    dtype = inputs.dtype
    maxed = window.max_pool(ops.cast(inputs, float_compute_dtype(dtype)))
    return ops.cast(blur(maxed), dtype)
