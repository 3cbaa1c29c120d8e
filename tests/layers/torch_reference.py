"""PyTorch's functional poolings as references, on NumPy arrays.

torch is a test dependency on every backend: these helpers run torch on
CPU whatever `KERAS_BACKEND` is, converting kpool's layouts to torch's
channels-first one and back.
"""

import numpy as np
import torch


def to_channels_first(x, data_format):
    if data_format == "channels_last":
        return np.moveaxis(x, -1, 1)
    return x


def from_channels_first(x, data_format):
    if data_format == "channels_last":
        return np.moveaxis(x, 1, -1)
    return x


def value_and_gradient(function, x, upstream, data_format):
    """`function(torch_x)` and the gradient of `sum(upstream * it)`.

    `x` and `upstream` are NumPy arrays in `data_format`; `function` takes
    and returns channels-first tensors. Returns NumPy arrays in
    `data_format`.
    """
    tensor = torch.tensor(
        to_channels_first(x, data_format).copy(), requires_grad=True
    )
    outputs = function(tensor)
    weights = torch.tensor(to_channels_first(upstream, data_format).copy())
    (outputs * weights).sum().backward()
    return (
        from_channels_first(outputs.detach().numpy(), data_format),
        from_channels_first(tensor.grad.numpy(), data_format),
    )
