"""A model the harness builds, saved as `.keras`, loads after
`import kpool.harness` in a fresh process (the augmentation layer is the
harness's; the poolings are the library's)."""

import subprocess
import sys

import keras
import numpy as np

from kpool.harness.config import ModelConfig
from kpool.harness.models import build_model

LOAD = """
import sys
import keras
import numpy as np
import kpool.harness

model = keras.saving.load_model(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(images)))
"""


def test_saved_harness_model_loads_after_import_kpool_harness(tmp_path):
    model = build_model(ModelConfig(width=4), "maxblurpool", augment=True)
    assert "augment" in [layer.name for layer in model.layers]
    path = tmp_path / "model.keras"
    model.save(path)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3))
    images = images.astype("float32")
    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD,
            str(path),
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npy"),
        ],
        check=True,
        capture_output=True,
    )
    expected = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6
    )
