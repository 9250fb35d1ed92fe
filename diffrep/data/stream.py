"""Streaming images: data sets read item by item through a `torch.utils.data.DataLoader`.

`ImageBatches(images, batch_size, workers, …)`: (indices, batch) pairs over a tensor of images
  (the bundled sets, generated or loaded in memory) or an `ImageFiles` (a folder), read by `workers` processes
  (0: in this process), optionally transformed per item (`transform(image, index)`, seeded by the
  index: the same item gets the same transform whatever the batching).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DiffrepError


class _Items(Dataset):
    def __init__(self, images, transform=None):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        return i, image if self.transform is None else self.transform(image, i)

    def __getitems__(self, indices: list[int]) -> list:
        """A batch's items (the DataLoader asks for a batch at once when this exists): a transform with
        a `batch` method transforms them together, with the same result as one by one."""
        if self.transform is None or not hasattr(self.transform, "batch"):
            return [self[i] for i in indices]
        images = self.transform.batch(torch.stack([torch.as_tensor(self.images[i]) for i in indices]), indices)
        return list(zip(indices, images))


class ImageBatches:
    """(indices, B×C×H×W) over `images` (tensor or `ImageFiles`), in order, through a DataLoader: all
    items, the items `indices` in batches of `batch_size`, or exactly the index lists `batches`."""

    def __init__(self, images, batch_size: int, workers: int = 0, transform=None, indices=None,
                 batches: list[list[int]] | None = None):
        if workers < 0:
            raise DiffrepError(f"--workers must be ≥ 0 (0 reads in the main process), got {workers}")
        if batches is None:
            order = list(range(len(images))) if indices is None else [int(i) for i in indices]
            batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        self.batches = batches
        self.loader = DataLoader(_Items(images, transform), batch_sampler=batches, num_workers=workers)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        try:
            yield from self.loader
        except DiffrepError as err:   # from a worker, whose message carries its traceback: keep the last line
            raise DiffrepError(str(err).strip().splitlines()[-1].split("DiffrepError: ")[-1]) from None
        except RuntimeError as err:
            if "stack expects each tensor to be equal size" not in str(err):
                raise
            raise DiffrepError("images of different sizes in one batch; resize them to one size (masks "
                               "nearest-neighbour), or use a batch size of 1") from None
