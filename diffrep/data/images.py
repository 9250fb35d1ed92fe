"""Images as tensors in [-1, 1]: the one data-set type (`ImageSet`), the one way of listing image
files, reading, channel conversion, fitting images to a model, and class-folder data sets.

Decisions:
- An `ImageSet` holds images (N×C×H×W float32, or for folders `ImageFiles`, read item by item) and, as the task has them, integer labels and class
  names (classification) or N×H×W masks and an ignore label (segmentation).
- `ImageFiles`: a folder's images as a lazy sequence: `files[i]` reads, converts and fits one file
  (`read_image`); `files[index]` (a slice or indices) is another lazy sequence; nothing is read until
  an item is asked for, so a folder of a million images costs its list of paths.
- Image files are found by `list_images` (by suffix, sorted; recursive or one folder deep).
- Fitting an image to a model's size: an image a little smaller (at least ¾ of the side) is padded,
  centred, with its edge values, so that the model sees it at its own scale, as the bundled MNIST
  digits (28×28, padded to 32×32 with their black background); any other size is resized (bicubic
  for files, bilinear with antialiasing for tensors). A note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DiffrepError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PAD_AT_LEAST = 0.75   # images at least this fraction of the model's side are padded rather than resized


@dataclass
class ImageSet:
    """Images (N×C×H×W, float32 in [-1, 1]) with what the task labels them with."""

    images: torch.Tensor                    # or an ImageFiles (folders: read as used)
    labels: torch.Tensor | None = None      # N class indices (classification)
    classes: list[str] | None = None        # class names
    name: str = ""
    masks: torch.Tensor | None = None       # N×H×W class indices (segmentation)
    ignore_index: int | None = None         # a mask label that is not a class (segmentation)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "ImageSet":
        """The images at `index` (a slice or indices), with their labels or masks."""
        pick = (lambda x: None if x is None else x[index])
        return ImageSet(self.images[index], pick(self.labels), self.classes, self.name, pick(self.masks),
                        self.ignore_index)


class ImageFiles:
    """Image files as a lazy sequence of C×H×W tensors in [-1, 1] (`channels`, fitted to size×size)."""

    def __init__(self, paths: list[Path], channels: int, size: int | None):
        self.paths, self.channels, self.size = list(paths), channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, path: Path) -> torch.Tensor:
        """One file as the sequence serves it (a subclass may read another way)."""
        return read_image(path, self.channels, self.size)[0]

    def __getitem__(self, index):
        if isinstance(index, int) or (torch.is_tensor(index) and index.ndim == 0):
            return self.read(self.paths[int(index)])
        paths = self.paths[index] if isinstance(index, slice) else [self.paths[int(i)] for i in index]
        return type(self)(paths, self.channels, self.size)   # a subset reads as this one does

    @property
    def shape(self) -> tuple:
        """N×C×H×W as a tensor's shape (H, W read from the first file when no size is set)."""
        h, w = (self.size, self.size) if self.size else self[0].shape[-2:]
        return (len(self), self.channels, h, w)

    def fitted(self, channels: int, size: int) -> "ImageFiles":
        return ImageFiles(self.paths, channels, size)

    def stack(self) -> torch.Tensor:
        """All of them in one tensor: only for the few images a task holds in memory (DDPM-Seg's labelled ones)."""
        return torch.stack([self[i] for i in range(len(self))])


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (or directly in it), sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey ↔ RGB for images of shape …×C×H×W (one image or a batch): grey is the channel mean,
    RGB repeats grey. Sizes are kept; models with other channel counts are refused."""
    if images.shape[-3] == channels:
        return images
    if channels not in (1, 3):
        raise DiffrepError(f"the model takes {channels}-channel images; cannot convert "
                           f"{images.shape[-3]}-channel images to that")
    grey = images.mean(-3, keepdim=True)
    return grey if channels == 1 else grey.expand(*grey.shape[:-3], 3, *grey.shape[-2:])


def _pads(h: int, w: int, size: int) -> tuple[int, int, int, int] | None:
    """(left, right, top, bottom) padding that centres an h×w image in size×size, when it should be padded."""
    if not (PAD_AT_LEAST * size <= h <= size and PAD_AT_LEAST * size <= w <= size):
        return None
    return (size - w) // 2, size - w - (size - w) // 2, (size - h) // 2, size - h - (size - h) // 2


def read_image(path: Path, channels: int, size: int | None) -> tuple[torch.Tensor, str | None]:
    """One image file as C×H×W in [-1, 1], converted to `channels` (1 or 3) and fitted to size×size
    (see the module's decisions); and how its size changed ('padded', 'resized' or None)."""
    try:
        with Image.open(path) as im:
            return _fitted(im.convert("L" if channels == 1 else "RGB"), size)
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"cannot read image {path}: {err}") from None


def _fitted(im: Image.Image, size: int | None) -> tuple[torch.Tensor, str | None]:
    """A decoded image as C×H×W in [-1, 1], padded or resized (bicubic) to size×size; how it changed."""
    changed = size is not None and im.size != (size, size)
    pads = _pads(im.size[1], im.size[0], size) if changed else None
    if changed and pads is None:
        im = im.resize((size, size), Image.BICUBIC)
    t = as_tensor(im)
    if pads is not None:
        t = F.pad(t[None], pads, mode="replicate")[0]
    return t, (None if not changed else "padded" if pads is not None else "resized")


def as_tensor(im: Image.Image) -> torch.Tensor:
    """A decoded 8-bit image (L or RGB) as C×H×W in [-1, 1]."""
    t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def resized_as_files(images: torch.Tensor, size: int) -> torch.Tensor:
    """N×C×H×W images in [-1, 1] decoded from 8-bit files, fitted to size×size by the very function that
    fits the files as they are read (`_fitted`): a model trained on, or whose features were cached
    from, the files then sees the same pixels from the tensors."""
    if images.shape[-2:] == (size, size):
        return images
    u8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return torch.stack([_fitted(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a), size)[0] for a in u8])


def fit_images(images, channels: int, size: int, what: str = "images"):
    """Convert a data set to what a model takes, saying so: grey↔RGB, then padded or resized to
    size×size. (The Python `Featurizer.extract` refuses instead; this is the command line's convenience.)
    Image files (`ImageFiles`) are converted as each is read."""
    if isinstance(images, ImageFiles):
        if (images.channels, images.size) != (channels, size):
            print(f"note: {what} are read as {channels}-channel {size}×{size} images for the model (padded when at "
                  f"least {PAD_AT_LEAST:.0%} of that side, else resized)")
        return images.fitted(channels, size)
    if images.shape[1] != channels:
        print(f"note: converting {what} from {images.shape[1]} to {channels} channel(s) for the model")
        images = match_channels(images, channels)
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        pads = _pads(h, w, size)
        how = "padding" if pads is not None else "resizing"
        print(f"note: {how} {what} from {h}×{w} to {size}×{size} for the model")
        images = F.pad(images, pads, mode="replicate") if pads is not None else \
            F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.contiguous()


def pad_to_multiple(image: torch.Tensor, stride: int) -> torch.Tensor:
    """C×H×W padded at the bottom and right (edge values) to a multiple of `stride`: no pixel moves."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % stride, -w % stride
    if pad_h or pad_w:
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return image


def image_folder(folder: str | Path, channels: int = 3, size: int | None = None) -> ImageSet:
    """All images under `folder`, read lazily (`ImageFiles`: each file when it is used). Sub-folders,
    if every image lies in one, are classes (ImageFolder layout). Without a size, every image must
    have the same size (read from the files' headers)."""
    root = Path(folder)
    if not root.is_dir():
        raise DiffrepError(f"image folder {root} does not exist or is not a folder")
    files = list_images(root)
    if not files:
        raise DiffrepError(f"image folder {root} holds no images (looked for {sorted(IMAGE_SUFFIXES)})")
    if size is None:
        shapes = {_header_size(p) for p in files}
        if len(shapes) > 1:
            raise DiffrepError(f"images in {root} have different sizes {sorted(shapes)[:4]}; pass a size to resize them")
    elif (first := _header_size(files[0])) != (size, size):   # the others are only looked at when read
        how = "padded" if _pads(first[1], first[0], size) is not None else "resized"
        print(f"note: images in {root} are fitted to {size}×{size} as they are read (the first, "
              f"{first[0]}×{first[1]}, is {how}; those at least {PAD_AT_LEAST:.0%} of the side are padded)")
    labels, classes = None, None
    if all(p.parent != root for p in files):
        classes = sorted({p.relative_to(root).parts[0] for p in files})
        labels = torch.tensor([classes.index(p.relative_to(root).parts[0]) for p in files])
    return ImageSet(ImageFiles(files, channels, size), labels, classes, str(root))


def _header_size(path: Path) -> tuple[int, int]:
    """An image file's (width, height) from its header alone."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DiffrepError(f"cannot read image {path}: {err}") from None
