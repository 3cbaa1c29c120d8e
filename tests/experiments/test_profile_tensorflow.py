"""experiments/profile_tensorflow.py reads TensorFlow's step statistics:
each case's kernels are the ops its graph really runs."""

import collections
import csv

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="TensorFlow's step statistics",
)


def test_kernels_are_the_graphs_ops(tmp_path):
    import profile_tensorflow

    output = tmp_path / "profile.csv"
    profile_tensorflow.main(
        [
            "--batch-shape",
            "2",
            "8",
            "8",
            "4",
            "--repeats",
            "2",
            "--top",
            "50",
            "--output",
            str(output),
        ]
    )
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    ops = collections.defaultdict(collections.Counter)
    for row in rows:
        ops[(row["case"], row["side"])][row["op"]] += 1
        assert float(row["ms"]) >= 0
        assert 0 <= float(row["share"]) <= 1
    peer = ops[("fractional_max_pool", "tf.nn.fractional_max_pool")]
    assert peer["FractionalMaxPool"] == 1
    assert ops[("TreePooling2D", "MaxPooling2D(2)")]["MaxPool"] == 1
    # One sequence per example and channel: two gathers per dim, each dim
    # laid out behind the batch dims (three transposes for 2D inputs).
    per_example = ops[("fractional_max_pool_per_example", "kpool")]
    assert per_example["GatherV2"] == 4
    assert per_example["Transpose"] == 3
    # Graph mode's form of tree pooling: one depthwise convolution per
    # leaf and gate (two leaves and one gate by default), no 3D one.
    tree = ops[("TreePooling2D", "kpool")]
    assert tree["DepthwiseConv2dNative"] == 3
    assert tree["Conv3D"] == 0
    gated = ops[("MixedPooling2D_gated", "kpool")]
    assert gated["DepthwiseConv2dNative"] == 1
    assert gated["MaxPool"] == 1
