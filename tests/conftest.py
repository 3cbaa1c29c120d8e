import os

import keras
import numpy as np
import pytest

# The backend that proves the formulas over the full grid of ranks,
# paddings and data formats (its eager mode runs a case in milliseconds).
# The other backends run the same tests on GRID_SAMPLE only: every op's
# contract, jit and gradients, and each backend's fast paths, on a few
# cases, without one compile per grid cell. KPOOL_FULL_GRID=1 runs the full
# grid on every backend.
FULL_GRID_BACKEND = "tensorflow"
# Every rank, both paddings and both formats appear; each kept case keeps
# all its other parameters (windows, modes, granularities).
GRID_SAMPLE = (
    {"rank": 1, "padding": "valid", "data_format": "channels_last"},
    {"rank": 2, "padding": "same", "data_format": "channels_first"},
    {"rank": 3, "padding": "valid", "data_format": "channels_last"},
    {"rank": 2, "padding": "valid", "data_format": "channels_last"},
)
GRID_PARAMS = ("rank", "padding", "data_format")


def in_grid_sample(params):
    keys = [key for key in GRID_PARAMS if key in params]
    if len(keys) < 2:
        return True
    return any(
        all(params[key] == sample[key] for key in keys)
        for sample in GRID_SAMPLE
    )


def pytest_collection_modifyitems(config, items):
    full = os.environ.get("KPOOL_FULL_GRID") == "1"
    if full or keras.config.backend() == FULL_GRID_BACKEND:
        return
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        (kept if in_grid_sample(params) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for each test."""
    return np.random.default_rng(0)
