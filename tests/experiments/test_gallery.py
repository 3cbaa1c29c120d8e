"""The operator gallery script: it writes its PNGs, and its worked example
holds the numbers of the max and average pooling formulas."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def make_gallery():
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    import make_gallery

    return make_gallery


def pooled_2x2(grid, reduce):
    """`reduce` over each 2x2 window, stride 2: `y[i, j] = reduce(x[2i:2i+2,
    2j:2j+2])`, by a reshape into (rows, 2, columns, 2)."""
    rows, columns = grid.shape
    windows = grid.reshape(rows // 2, 2, columns // 2, 2)
    return reduce(windows, axis=(1, 3))


def test_main_writes_both_figures_at_their_size(make_gallery, tmp_path):
    from PIL import Image

    paths = make_gallery.main(["--out", str(tmp_path)])

    figsizes = {
        "operators": make_gallery.OPERATORS_FIGSIZE,
        "worked_example": make_gallery.WORKED_EXAMPLE_FIGSIZE,
    }
    assert set(paths) == set(figsizes)
    for name, (width, height) in figsizes.items():
        assert paths[name] == str(tmp_path / f"{name}.png")
        with Image.open(paths[name]) as image:
            assert image.format == "PNG"
            assert image.size == (
                round(width * make_gallery.DPI),
                round(height * make_gallery.DPI),
            )
            image.load()  # decodes every pixel: a truncated file raises


def test_worked_example_follows_the_pooling_formulas(make_gallery):
    example = make_gallery.worked_example()

    grid = np.arange(1, 17, dtype=np.float64).reshape(4, 4)
    np.testing.assert_array_equal(example["input"], grid)
    np.testing.assert_array_equal(example["max"], pooled_2x2(grid, np.max))
    np.testing.assert_allclose(example["average"], pooled_2x2(grid, np.mean))
    # The numbers the seed docs print.
    np.testing.assert_array_equal(example["max"], [[6, 8], [14, 16]])
    np.testing.assert_allclose(example["average"], [[3.5, 5.5], [11.5, 13.5]])
