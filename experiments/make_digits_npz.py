"""Writes scikit-learn's handwritten digits as an npz for `data.source=npz`.

The 1,797 8x8 scans (values 0..16) become uint8 images (N, size, size, 3)
with values 0..255: each pixel is scaled by 255/16, repeated into a
`size/8` x `size/8` block (nearest-neighbour upsampling, so no new values
appear) and copied to 3 channels, the harness's CIFAR-like format. The
train/test split is stratified and fixed by `seed`.

A small set of real images that ships inside a package: short learning
runs on it show what the synthetic set cannot.

    python experiments/make_digits_npz.py results/_scratch/digits.npz
    kpool run configs/quickstart.yaml --set data.source=npz \
        --set data.path=results/_scratch/digits.npz
"""

import argparse
import os

import numpy as np


def digits_arrays(size=32, n_train=1400, seed=0):
    """The digits as a dict of `x_train`, `y_train`, `x_test`, `y_test`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if size % 8:
        raise ValueError(f"`size` must be a multiple of 8. Received: {size}")
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    block = size // 8
    images = images.repeat(block, axis=1).repeat(block, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        digits.target.astype(np.int32),
        train_size=n_train,
        stratify=digits.target,
        random_state=seed,
    )
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "path",
        nargs="?",
        default="results/_scratch/digits.npz",
        help="where to write the .npz (default: %(default)s)",
    )
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=1400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = digits_arrays(args.size, args.n_train, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    np.savez_compressed(args.path, **arrays)
    print(
        f"{args.path}: {len(arrays['x_train'])} train and "
        f"{len(arrays['x_test'])} test images of shape "
        f"{arrays['x_train'].shape[1:]}"
    )


if __name__ == "__main__":
    main()
