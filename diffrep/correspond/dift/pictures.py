"""Pictures for correspondence: match lines between two images, and feature maps as PCA colours.

The PCA is fitted on both images' features together, so the same colour means the same feature in
either picture: corresponding parts should light up alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...data import match_channels
from ...plotting import pyplot, save_figure

GOOD, BAD = "#2ecc40", "#ff4136"  # correct / wrong matches when ground truth is known


def to_rgb(image: torch.Tensor):
    """C×H×W in [-1, 1] to an H×W×3 array in [0, 1] for imshow."""
    return ((match_channels(image, 3).clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def side_by_side(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Both images on one canvas (the shorter one padded with white at the bottom); the target's x offset."""
    h = max(source.shape[-2], target.shape[-2])
    pad = lambda im: F.pad(im, (0, 0, 0, h - im.shape[-2]), value=1.0)  # noqa: E731
    gap = torch.ones(3, h, max(4, source.shape[-1] // 40))
    canvas = torch.cat([pad(match_channels(source, 3)), gap, pad(match_channels(target, 3))], -1)
    return canvas, source.shape[-1] + gap.shape[-1]


def draw_matches(source: torch.Tensor, target: torch.Tensor, src_points: torch.Tensor, tgt_points: torch.Tensor,
                 path: str | Path, correct: torch.Tensor | None = None, title: str = "") -> Path:
    """Lines from each source point to its match. With `correct`, green for right and red for wrong;
    without ground truth, one colour per point so that crossing lines stay readable."""
    plt = pyplot()
    canvas, offset = side_by_side(source, target)
    fig, ax = plt.subplots(figsize=(canvas.shape[-1] / 60 + 1, canvas.shape[-2] / 60 + 0.8))
    ax.imshow(to_rgb(canvas), interpolation="nearest")
    cmap = plt.get_cmap("hsv")
    for i, ((sx, sy), (tx, ty)) in enumerate(zip(src_points.tolist(), tgt_points.tolist())):
        colour = (GOOD if correct[i] else BAD) if correct is not None else cmap(i / max(1, len(src_points)))
        ax.plot([sx, tx + offset], [sy, ty], color=colour, linewidth=1.0, alpha=0.9)
        ax.scatter([sx, tx + offset], [sy, ty], color=colour, s=10, edgecolors="black", linewidths=0.4, zorder=3)
    ax.set_axis_off()
    if correct is not None:
        title = f"{title}  ({int(correct.sum())}/{len(correct)} correct: green, wrong: red)".strip()
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def pca_rgb(maps: list[torch.Tensor], prepared: list, max_samples: int = 20000) -> list[torch.Tensor]:
    """Each C×h×w map projected on the first three principal components of all maps' pixels together,
    upsampled to its prepared image (`correspond.Prepared`; padding cut off) and scaled to [-1, 1] per
    component: 3×H×W each."""
    pixels = torch.cat([m.flatten(1).T for m in maps]).float()
    mean = pixels.mean(0)
    sample = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))[:max_samples]]
    _, _, v = torch.pca_lowrank(sample - mean, q=min(3, pixels.shape[1]), center=False)
    v = F.pad(v, (0, 3 - v.shape[1]))  # fewer than 3 channels: the missing colours stay mid-grey
    proj = [torch.einsum("chw,ck->khw", m.float() - mean[:, None, None], v) for m in maps]
    lo = torch.stack([p.amin((1, 2)) for p in proj]).amin(0)[:, None, None]
    hi = torch.stack([p.amax((1, 2)) for p in proj]).amax(0)[:, None, None]
    out = []
    for p, prep in zip(proj, prepared):
        rgb = (p - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1
        h, w = prep.hw
        out.append(F.interpolate(rgb[None], size=prep.padded_hw, mode="bilinear", align_corners=False)[0, :, :h, :w])
    return out


def draw_pca(images: list[torch.Tensor], rgb_maps: list[torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Images (top row) over their features' PCA colours (bottom row)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(images), figsize=(3 * len(images), 6.2), squeeze=False)
    for j, (im, rgb) in enumerate(zip(images, rgb_maps)):
        axes[0, j].imshow(to_rgb(im))
        axes[1, j].imshow(to_rgb(rgb), interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle(title or "features: first three principal components as RGB (fitted on both images)", fontsize=9)
    return _save(fig, path)


def _save(fig, path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
