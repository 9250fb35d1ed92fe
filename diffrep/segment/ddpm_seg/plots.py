"""Pictures for DDPM-Seg: overlays next to the ground truth, uncertainty maps, per-class IoU bars,
and the files `segment predict` writes (label PNG, overlay, uncertainty)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

from ...plotting import pyplot, save_figure
from ...runs import atomic_path


def palette(n: int) -> np.ndarray:
    """n×3 uint8 colours: black for class 0 (usually background), then tab20's."""
    cmap = matplotlib.colormaps["tab20" if n <= 21 else "hsv"]
    colours = [(0.0, 0.0, 0.0)] + [cmap(i / (20 if n <= 21 else n))[:3] for i in range(n - 1)]
    return (np.array(colours) * 255).round().astype(np.uint8)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """C×H×W in [-1, 1] -> H×W×3 uint8."""
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def overlay(image: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float = 0.55) -> np.ndarray:
    """The image with each pixel tinted by its class colour (class 0 left untinted)."""
    rgb = to_rgb(image).astype(np.float32)
    lab = labels.clamp(0, n_classes - 1).numpy()
    colour = palette(n_classes)[lab].astype(np.float32)
    tint = np.where((lab > 0)[..., None], alpha, 0.0)
    return (rgb * (1 - tint) + colour * tint).round().astype(np.uint8)


def plot_examples(examples: list, classes: list[str], path: Path) -> None:
    """Per test image: the image, ground truth and prediction overlays, and the uncertainty map."""
    if not examples:
        return
    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 4, figsize=(8, 2.1 * len(examples)), squeeze=False)
    for row, (image, mask, pred, unc) in zip(axes, examples):
        shown = mask.clone()
        shown[(mask < 0) | (mask >= len(classes))] = 0   # the ignore label is shown untinted
        panels = [to_rgb(image), overlay(image, shown, len(classes)), overlay(image, pred, len(classes)), unc.numpy()]
        for ax, panel, title in zip(row, panels, ["image", "ground truth", "prediction", "uncertainty"]):
            ax.imshow(panel, cmap="magma" if panel.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_per_class(result: dict, path: Path) -> None:
    """Grouped bars: per class, the IoU of the ensemble and of each baseline."""
    plt = pyplot()
    methods = {"diffusion (ensemble)": result["per_class"], **{m: r["per_class"] for m, r in result["baselines"].items()}}
    classes = list(result["per_class"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(classes) + 2), 3.5))
    for j, (name, per_class) in enumerate(methods.items()):
        values = [100 * (per_class[c] or 0) for c in classes]
        ax.bar(np.arange(len(classes)) + (j - (len(methods) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"per-class IoU on {result['data']} (mIoU {100 * result['miou']:.1f})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def save_prediction(image: torch.Tensor, labels: torch.Tensor, uncertainty: torch.Tensor, classes: list[str],
                    stem: Path) -> list[Path]:
    """stem-labels.png (palette PNG: each pixel's value is its class index), stem-overlay.png and
    stem-uncertainty.png (8-bit, 255 = the largest possible disagreement, ln of the class count)."""
    paths = [stem.with_name(stem.name + s) for s in ("-labels.png", "-overlay.png", "-uncertainty.png")]
    h, w = labels.shape
    if len(classes) <= 256:   # built from the raw bytes: a mode conversion would remap the indices
        label_png = Image.frombytes("P", (w, h), labels.numpy().astype(np.uint8).tobytes())
        label_png.putpalette(palette(len(classes)).flatten().tolist())
    else:
        label_png = Image.fromarray(labels.numpy().astype(np.uint16))
    scale = float(np.log(max(len(classes), 2)))
    pictures = [label_png, Image.fromarray(overlay(image, labels, len(classes))),
                Image.fromarray((uncertainty / scale).clamp(0, 1).mul(255).round().byte().numpy())]
    for picture, path in zip(pictures, paths):
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
    return paths
