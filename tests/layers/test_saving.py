import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

import kpool

from .cases import input_shape, layers_of_rank

LOAD_AND_PREDICT = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np

    import kpool  # Registers the layers with Keras.

    model_path, inputs_path, outputs_path = sys.argv[1:]
    model = keras.saving.load_model(model_path)
    inputs = np.load(inputs_path)
    outputs = model.predict([inputs[f"x{rank}"] for rank in (1, 2, 3)])
    np.savez(outputs_path, *outputs)
    """
)


def test_saved_model_gives_the_same_outputs_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(0)
    xs = [
        rng.standard_normal(input_shape(rank, "channels_last")).astype(
            "float32"
        )
        for rank in (1, 2, 3)
    ]
    inputs = [keras.Input(x.shape[1:]) for x in xs]
    outputs = [
        pooling(inputs[rank - 1])
        for rank in (1, 2, 3)
        for pooling in layers_of_rank(rank)
    ]
    model = keras.Model(inputs, outputs)
    # Weights other than their initial values, so loading must restore them.
    for weight in model.trainable_weights:
        weight.assign(rng.uniform(0, 1, weight.shape))
    expected = model.predict(xs, verbose=0)

    paths = [tmp_path / name for name in ("model.keras", "x.npz", "y.npz")]
    model.save(paths[0])
    np.savez(paths[1], **{f"x{rank}": x for rank, x in enumerate(xs, 1)})
    environment = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(kpool.__file__))]
            + os.environ.get("PYTHONPATH", "").split(os.pathsep)
        ),
    }
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, *map(str, paths)],
        env=environment,
        check=True,
        timeout=600,
    )
    loaded = np.load(paths[2])
    assert len(loaded.files) == len(expected)
    for i, outputs in enumerate(expected):
        np.testing.assert_allclose(loaded[f"arr_{i}"], outputs, rtol=1e-6)
