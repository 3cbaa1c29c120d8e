"""Draws what each kpool operator does to a photograph, and a worked example.

`operators.png`: the luminance of a crop of scikit-learn's sample photograph
`china.jpg` (it ships with scikit-learn, so this runs offline), downsampled
by each operator with the same 4x4 window, stride 4, side by side, each panel
titled with its call. `worked_example.png`: max and average pooling of the
4x4 map 1..16 with a 2x2 window, stride 2, as annotated number grids.

    python experiments/make_gallery.py --out results/gallery
"""

import argparse
import os

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kpool import ops

WINDOW = 4
SEED = 0
# A 192x192 detail of the pagoda (columns, railings, roof tiles), so that a
# 4x4 window's effect shows at the figure's scale: 48x48 outputs.
CROP = (slice(130, 322), slice(80, 272))
DPI = 100
OPERATORS_FIGSIZE = (16, 13.5)
WORKED_EXAMPLE_FIGSIZE = (10, 3.6)
CHANNELS_LAST = "channels_last"


def luminance_crop():
    """The crop's luminance in [0, 1], shaped (1, height, width, 1)."""
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg")[CROP].astype(np.float32) / 255.0
    # ITU-R BT.601 luma weights, those of PIL's `convert("L")`.
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return luma[None, :, :, None]


def worked_example():
    """Keras's 2x2, stride 2 max and average pooling of the map 1..16."""
    grid = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    x = grid[None, :, :, None]
    pooled = {
        name: keras.ops.convert_to_numpy(
            pool(x, 2, strides=2, data_format=CHANNELS_LAST)
        )[0, :, :, 0]
        for name, pool in (
            ("max", keras.ops.max_pool),
            ("average", keras.ops.average_pool),
        )
    }
    return {"input": grid, **pooled}


def tree_kernels(cells):
    """Untrained tree weights as `TreePooling2D` starts them, drawn from
    `SEED`: two leaves uniform in [0, 2 / cells], one gate at zero."""
    rng = np.random.default_rng(SEED)
    leaves = rng.uniform(0.0, 2.0 / cells, (cells, 2)).astype(np.float32)
    return leaves, np.zeros((cells, 1), np.float32)


def pyramid_canvas(vector, bins, cell_pixels):
    """The spatial pyramid's levels, `b x b` each, side by side as images
    of `cell_pixels` pixels a side, NaN (blank) between them."""
    levels, start = [], 0
    for b in bins:
        level = vector[start : start + b * b].reshape(b, b)
        start += b * b
        block = cell_pixels // b
        levels.append(np.kron(level, np.ones((block, block))))
    gap = np.full((cell_pixels, cell_pixels // 8), np.nan)
    return np.concatenate(
        [part for level in levels for part in (level, gap)][:-1], axis=1
    )


def operator_panels(x):
    """(title, image, display maximum) for each panel, from the input `x`."""
    k = WINDOW
    size = x.shape[1]
    channels_last = {"data_format": CHANNELS_LAST}
    window = {"strides": k, **channels_last}
    values, indices = ops.max_pool_with_argmax(x, k, **window)
    leaves, gates = tree_kernels(k * k)
    bins = (1, 2, 4)
    pyramid = ops.spatial_pyramid_pool(
        x, bins=bins, mode="average", **channels_last
    )
    gem = ops.global_gem_pool(x, p=3.0, **channels_last)
    gem_value = float(keras.ops.convert_to_numpy(gem)[0, 0])
    return [
        panel("input x: luminance of the crop", x),
        panel(
            f"keras.ops.max_pool(x, {k}, {k})",
            keras.ops.max_pool(x, k, **window),
        ),
        panel(
            f"keras.ops.average_pool(x, {k}, {k})",
            keras.ops.average_pool(x, k, **window),
        ),
        panel(f"min_pool(x, {k})", ops.min_pool(x, k, **window)),
        panel(
            f"mixed_pool(x, {k}, alpha=0.5)\n(inference: the expectation)",
            ops.mixed_pool(x, k, alpha=0.5, **window),
        ),
        panel(
            f"stochastic_pool(x, {k},\ntraining=True, seed={SEED})",
            ops.stochastic_pool(x, k, training=True, seed=SEED, **window),
        ),
        panel(
            f"stochastic_pool(x, {k})\n(inference: the expectation)",
            ops.stochastic_pool(x, k, **window),
        ),
        panel(
            f"lp_pool(x, 2, {k})\n(gray scale 0 .. {k} = sqrt({k * k}))",
            ops.lp_pool(x, 2, k, **window),
            vmax=float(k),
        ),
        panel(
            f"fractional_max_pool(x,\noutput_ratio={1 / k}, seed={SEED})",
            ops.fractional_max_pool(
                x, output_ratio=1 / k, seed=SEED, **channels_last
            ),
        ),
        panel(
            f"max_unpool(\n*max_pool_with_argmax(x, {k}), {k})"
            "\n(the maxima in place, zeros elsewhere)",
            ops.max_unpool(values, indices, k, **window),
        ),
        panel(
            f"blur_pool(x, filter_size={k}, strides={k})",
            ops.blur_pool(x, filter_size=k, **window),
        ),
        panel(
            f"max_blur_pool(x, {k},\nstrides={k}, filter_size={k})",
            ops.max_blur_pool(x, k, filter_size=k, **window),
        ),
        panel(f"soft_pool(x, {k})", ops.soft_pool(x, k, **window)),
        panel(
            f"tree_pool(x, {k}, leaf_kernels, gate_kernels)\n"
            f"(untrained: leaves U[0, 2/{k * k}], seed {SEED}; gate 0)",
            ops.tree_pool(
                x, k, leaf_kernels=leaves, gate_kernels=gates, **window
            ),
        ),
        panel(f"median_pool(x, {k})", ops.median_pool(x, k, **window)),
        panel(
            "spatial_pyramid_pool(x, (1, 2, 4),\nmode='average')\n"
            "(a vector: its 1x1, 2x2 and 4x4 levels drawn)",
            pyramid,
            image=pyramid_canvas(
                keras.ops.convert_to_numpy(pyramid)[0], bins, size // k
            ),
        ),
        panel(
            f"global_gem_pool(x, p=3) = {gem_value:.3f}\n"
            "(global: one value per channel, drawn as one cell)",
            gem,
            image=np.full((1, 1), gem_value),
        ),
    ]


def panel(title, result, vmax=1.0, image=None):
    """(title and the op's output shape, image, display maximum): the image
    is `result`'s map, or `image` where the output is not a map."""
    result = keras.ops.convert_to_numpy(result)
    if image is None:
        image = result[0, :, :, 0]
    return (f"{title}\n{tuple(result.shape)}", image, vmax)


def draw_operators(panels, path):
    columns = 5
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=OPERATORS_FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, image, vmax) in zip(
        axes.flat[: len(panels)], panels, strict=True
    ):
        ax.imshow(
            image, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(title, fontsize=9)
    height, width = panels[0][1].shape
    fig.suptitle(
        "kpool operators on one channel (luminance, 0 = black .. 1 = white)"
        f" of a {height}x{width} crop of"
        " scikit-learn's china.jpg\n"
        f"window {WINDOW}x{WINDOW}, stride {WINDOW}, 'valid' wherever an op"
        " takes one; calls are kpool.ops.* unless named keras.ops",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)


def draw_grid(ax, grid, title, colors, block):
    """`grid`'s numbers over cells shaded by their `block x block` window."""
    rows, columns = grid.shape
    shade = np.array(
        [
            [
                colors[(r // block) * (columns // block) + c // block]
                for c in range(columns)
            ]
            for r in range(rows)
        ]
    )
    ax.imshow(shade)
    for r in range(rows):
        for c in range(columns):
            text = f"{grid[r, c]:g}"
            ax.text(c, r, text, ha="center", va="center", fontsize=16)
    for edge in range(rows + 1):
        width = 2.5 if edge % block == 0 else 0.8
        ax.axhline(edge - 0.5, color="black", linewidth=width)
    for edge in range(columns + 1):
        width = 2.5 if edge % block == 0 else 0.8
        ax.axvline(edge - 0.5, color="black", linewidth=width)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11)


def draw_worked_example(example, path):
    # One light color per 2x2 window, and its output cell.
    colors = np.array(
        [
            [0.80, 0.88, 1.00],
            [1.00, 0.86, 0.78],
            [0.84, 0.95, 0.80],
            [0.96, 0.88, 1.00],
        ]
    )
    fig = Figure(figsize=WORKED_EXAMPLE_FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, width_ratios=(2, 1, 1))
    draw_grid(
        axes[0], example["input"], "x = arange(1, 17).reshape(4, 4)", colors, 2
    )
    draw_grid(axes[1], example["max"], "keras.ops.max_pool(x, 2, 2)", colors, 1)
    draw_grid(
        axes[2],
        example["average"],
        "keras.ops.average_pool(x, 2, 2)",
        colors,
        1,
    )
    fig.suptitle(
        "2x2 window, stride 2: each shaded window of x gives the output cell"
        " of its shade (computed by Keras)",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        default="results/gallery",
        help="directory for the PNGs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    paths = {
        "operators": os.path.join(args.out, "operators.png"),
        "worked_example": os.path.join(args.out, "worked_example.png"),
    }
    draw_operators(operator_panels(luminance_crop()), paths["operators"])
    draw_worked_example(worked_example(), paths["worked_example"])
    for path in paths.values():
        print(f"{path}: {os.path.getsize(path) // 1024} KiB")
    return paths


if __name__ == "__main__":
    main()
