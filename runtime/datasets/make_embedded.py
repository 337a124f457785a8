"""Regenerate fashion_mnist_small.npz, the dataset symnet falls back on.

Takes the first 300 training and the first 100 test images of every class
(in their original order) from the Fashion-MNIST IDX files installed by the
Debian package dataset-fashion-mnist, and stores them as uint8 with
np.savez_compressed.

Run from the repository root:

    python -m runtime.datasets.make_embedded [SOURCE_DIR]

SOURCE_DIR defaults to /usr/share/datasets/fashion-mnist.
"""

import sys
from pathlib import Path

import numpy as np

from runtime.data import DEBIAN_DIR, EMBEDDED_PATH, FASHION_CLASSES, read_idx

PER_CLASS = {"train": 300, "t10k": 100}


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, ascending."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(len(FASHION_CLASSES))]
    return np.sort(np.concatenate(picked))


def main(source: Path = DEBIAN_DIR) -> None:
    arrays = {"classes": np.array(FASHION_CLASSES)}
    for split, key in (("train", "train"), ("t10k", "test")):
        images = read_idx(source / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz")
        index = first_per_class(labels, PER_CLASS[split])
        arrays[f"x_{key}"] = images[index]                      # uint8 [n, 28, 28]
        arrays[f"y_{key}"] = labels[index]                      # uint8 [n]
        arrays[f"{key}_index"] = index.astype(np.int32)         # positions in the source
    np.savez_compressed(EMBEDDED_PATH, **arrays)
    print(f"wrote {EMBEDDED_PATH} ({EMBEDDED_PATH.stat().st_size} bytes): "
          f"{len(arrays['x_train'])} train, {len(arrays['x_test'])} test images")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEBIAN_DIR)
