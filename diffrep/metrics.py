"""Metrics of every task: segmentation (mIoU, per-class IoU, pixel accuracy; torchmetrics) and
correspondence (PCK@α and the median end-point error, each per point and per image).

Correspondence thresholds run from strict to loose: α = 0.01 and 0.02 tell sub-pixel refinement
apart from pixel-level matching (on a 256-pixel box, 2.6 and 5.1 pixels), 0.05–0.15 are the usual
SPair-71k ones. The median end-point error (pixels of the target image as given) needs no threshold."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15)


class SegMetrics:
    """mIoU, per-class IoU and pixel accuracy (torchmetrics), accumulated image by image. Classes
    absent from both prediction and ground truth have no IoU (null) and do not enter the mean.
    Never synchronised across processes: under torchrun one process scores (the others would be
    waiting elsewhere, and torchmetrics' gather would hang)."""

    def __init__(self, classes: list[str], ignore_index: int | None):
        self.classes = classes
        self.iou = MulticlassJaccardIndex(len(classes), average="none", ignore_index=ignore_index,
                                          zero_division=float("nan"), sync_on_compute=False)
        self.accuracy = MulticlassAccuracy(len(classes), average="micro", ignore_index=ignore_index,
                                           sync_on_compute=False)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.iou.update(pred.flatten(), target.flatten())
        self.accuracy.update(pred.flatten(), target.flatten())

    def compute(self) -> dict:
        iou = self.iou.compute()
        return {"miou": round(float(iou.nanmean()), 4),
                "per_class": {c: (None if v != v else round(float(v), 4)) for c, v in zip(self.classes, iou.tolist())},
                "pixel_accuracy": round(float(self.accuracy.compute()), 4)}


def correct_matches(predicted: torch.Tensor, truth: torch.Tensor, threshold_size: float, alpha: float) -> torch.Tensor:
    """Which predicted points (K×2) lie within α·threshold_size pixels of the truth (inclusive, as DIFT)."""
    return (predicted - truth).norm(dim=1) <= alpha * threshold_size


def pck(hits: list[torch.Tensor]) -> dict:
    """PCK from per-pair boolean hit vectors: per point (all points pooled) and per image (mean of each
    pair's fraction), in %."""
    points = torch.cat(hits).float()
    per_image = torch.stack([h.float().mean() for h in hits])
    return {"per_point": round(100 * points.mean().item(), 2), "per_image": round(100 * per_image.mean().item(), 2)}


def median_epe(errors: list[torch.Tensor]) -> dict:
    """Median end-point error (pixels) from per-pair error vectors: per point (all points pooled) and
    per image (median over pairs of each pair's median). Medians of an even count take the mean of the
    middle two (torch.median would take the lower)."""
    per_image = torch.stack([e.quantile(0.5) for e in errors])
    return {"per_point": round(torch.cat(errors).quantile(0.5).item(), 2),
            "per_image": round(per_image.quantile(0.5).item(), 2)}


def score_matches(pairs: list, matches: list, alphas=ALPHAS) -> dict:
    """PCK@α for every α, and the median end-point error. With the mutual check, a match that is not
    mutual counts as a miss for PCK; the end-point error measures every match where it landed."""
    out = {}
    for alpha in alphas:
        hits = [pair_hits(p, m, alpha) for p, m in zip(pairs, matches)]
        out[str(alpha)] = pck(hits)
    out["median_epe"] = median_epe([(m.points - p.target_points).norm(dim=1) for p, m in zip(pairs, matches)])
    if matches and matches[0].mutual is not None:
        out["mutual_fraction"] = round(100 * torch.cat([m.mutual for m in matches]).float().mean().item(), 2)
    return out


def pair_hits(pair, m, alpha: float) -> torch.Tensor:
    """One pair's correct matches at α (a non-mutual match, when checked, is a miss)."""
    hit = correct_matches(m.points, pair.target_points, pair.threshold_size, alpha)
    return hit & m.mutual if m.mutual is not None else hit

