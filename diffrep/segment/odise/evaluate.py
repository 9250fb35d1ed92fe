"""Panoptic inference and scoring: Mask2Former's panoptic post-processing (transformers' image
processor), PQ / SQ / RQ per category (torchmetrics' PanopticQuality) and mIoU, split into categories
seen and unseen in training, and overlays with category names.

Decisions:
- Unlabelled pixels (segment id 0) are left out of every score, as COCO's panoptic evaluation does.
- Stuff predictions of one category are fused into one segment; things keep one segment per query.
- Scenes are scored at their label resolution: mask logits are upsampled to it.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torchmetrics.detection import PanopticQuality

from ...data.images import resized_as_files
from ...plotting import pyplot, save_figure
from .vocab import Vocabulary

UNLABELLED = 0   # the category id of pixels no segment covers (void) in predictions and targets


def images_of(items, side: int) -> torch.Tensor:
    """The items' images fitted to the model's side as their files are when read at that side (labels
    stay at their own size). Pre-training and the cached feature maps read the files; a different
    resize here (bilinear) cost the runs 1–4 PQ on val between training's scores and `eval`'s."""
    return resized_as_files(torch.stack([it.image for it in items]), side)


def panoptic_maps(out: dict, vocab: Vocabulary, size: tuple[int, int], threshold: float = 0.5,
                  overlap: float = 0.8) -> torch.Tensor:
    """B×H×W×2 (category id, instance id) predictions of the last decoder layer, post-processed by
    transformers' Mask2Former image processor."""
    from transformers.models.mask2former import Mask2FormerImageProcessorPil

    stuff = {i for i, c in enumerate(vocab.categories) if not c.isthing}
    logits = out["logits"][-1].float()
    result = Mask2FormerImageProcessorPil().post_process_panoptic_segmentation(
        types.SimpleNamespace(class_queries_logits=logits, masks_queries_logits=out["masks"][-1].float()),
        threshold=threshold, overlap_mask_area_threshold=overlap, label_ids_to_fuse=stuff,
        target_sizes=[size] * len(logits))
    maps = torch.zeros(len(result), *size, 2, dtype=torch.long)
    for b, r in enumerate(result):
        seg = r["segmentation"].long()
        for info in r["segments_info"]:
            where = seg == info["id"]
            maps[b][where] = torch.tensor([vocab.categories[info["label_id"]].id, info["id"]])
    return maps


def target_maps(items) -> torch.Tensor:
    """B×H×W×2 (category id, segment id) labels; unlabelled pixels get category UNLABELLED."""
    out = []
    for it in items:
        cat, inst = it.category_map()
        cat = torch.where(cat < 0, torch.full_like(cat, UNLABELLED), cat)
        out.append(torch.stack([cat, inst], -1))
    return torch.stack(out)


class PanopticScores:
    """PQ / SQ / RQ per category and a confusion matrix for mIoU, accumulated batch by batch."""

    def __init__(self, vocab: Vocabulary, unseen: set[int]):
        self.vocab, self.unseen = vocab, unseen
        things = {c.id for c in vocab.categories if c.isthing}
        stuffs = {c.id for c in vocab.categories if not c.isthing}
        self.pq = PanopticQuality(things, stuffs, allow_unknown_preds_category=True, return_sq_and_rq=True,
                                  return_per_class=True)
        self.order = sorted(things) + sorted(stuffs)    # torchmetrics' order of per-class results
        self.index = {cid: i for i, cid in enumerate(vocab.ids)}
        self.confusion = torch.zeros(len(vocab), len(vocab), dtype=torch.long)
        self.lut = torch.full((max(vocab.ids) + 1,), -1, dtype=torch.long)   # category id -> vocabulary index
        for cid, i in self.index.items():
            self.lut[cid] = i
        self.seen_in_target: set[int] = set()

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.pq.update(preds, targets)
        p, t = preds[..., 0].flatten(), targets[..., 0].flatten()
        self.seen_in_target |= set(t.unique().tolist()) - {UNLABELLED}
        keep = (t != UNLABELLED) & (p != UNLABELLED)
        pi, ti = self.lut[p[keep]], self.lut[t[keep]]
        self.confusion += torch.bincount(ti * len(self.vocab) + pi, minlength=len(self.vocab) ** 2).view(
            len(self.vocab), len(self.vocab))

    def compute(self) -> dict:
        values = self.pq.compute().reshape(len(self.order), 3)    # per class: PQ, SQ, RQ
        per = {}
        for j, cid in enumerate(self.order):
            if cid not in self.seen_in_target:
                continue   # a category absent from every target has no PQ (torchmetrics gives 0)
            i = self.index[cid]
            inter = self.confusion[i, i].item()
            union = self.confusion[i].sum().item() + self.confusion[:, i].sum().item() - inter
            per[self.vocab.categories[i].name] = {
                "id": cid, "thing": self.vocab.categories[i].isthing, "unseen": cid in self.unseen,
                "pq": float(values[j, 0]), "sq": float(values[j, 1]), "rq": float(values[j, 2]),
                "iou": inter / union if union else 0.0}
        summary = {}
        for group, rows in (("all", per.values()), ("seen", [r for r in per.values() if not r["unseen"]]),
                            ("unseen", [r for r in per.values() if r["unseen"]]),
                            ("things", [r for r in per.values() if r["thing"]]),
                            ("stuff", [r for r in per.values() if not r["thing"]])):
            rows = list(rows)
            summary[group] = {k: (float(np.mean([r[k] for r in rows])) if rows else None)
                              for k in ("pq", "sq", "rq", "iou")}
        return {"summary": summary, "per_category": per}


def plot_overlays(items, preds: torch.Tensor, vocab: Vocabulary, path, n: int = 6) -> None:
    """Image, ground truth and prediction side by side, each segment coloured and named."""
    plt = pyplot()
    names = {c.id: c.name for c in vocab.categories}
    n = min(n, len(items))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    truth = target_maps(items[:n])
    for r in range(n):
        image = ((items[r].image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
        for c, (title, seg) in enumerate((("image", None), ("truth", truth[r]), ("prediction", preds[r]))):
            ax = axes[r, c]
            ax.imshow(image)
            if seg is not None:
                _overlay(ax, seg, names)
            ax.set_title(title if r == 0 else "", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)


def _overlay(ax, seg: torch.Tensor, names: dict) -> None:
    key = seg[..., 0] * 1000 + seg[..., 1]
    rng = np.random.default_rng(0)
    colour = np.zeros((*key.shape, 4))
    for k in key.unique().tolist():
        cid = k // 1000
        if cid == UNLABELLED:
            continue
        where = (key == k).numpy()
        colour[where] = [*rng.uniform(0.2, 1.0, 3), 0.55]
        ys, xs = np.nonzero(where)
        ax.text(xs.mean(), ys.mean(), names.get(cid, str(cid)), fontsize=5, ha="center", va="center",
                color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "linewidth": 0})
    ax.imshow(colour)


TABLE_COLUMNS = (("all", "pq"), ("seen", "pq"), ("unseen", "pq"), ("things", "pq"), ("stuff", "pq"), ("all", "iou"))


def format_table(rows: dict, split: str) -> str:
    """One line per run (the main one, then its baselines): PQ all / seen / unseen / things / stuff, mIoU."""
    head = f"{split} scenes: " + f"{'run':<16}" + "".join(f"{g + ' ' + k.upper():>12}" for g, k in TABLE_COLUMNS)
    lines = [head]
    for name, summary in rows.items():
        cells = [summary[g][k] for g, k in TABLE_COLUMNS]
        lines.append(" " * (len(split) + 9) + f"{name:<16}" + "".join(f"{'—' if v is None else f'{100 * v:.1f}':>12}"
                                                                        for v in cells))
    return "\n".join(lines)


def plot_table(rows: dict, path, split: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for i, (name, summary) in enumerate(rows.items()):
        values = [100 * (summary[g]["pq"] or 0) for g in ("all", "seen", "unseen")]
        ax.bar([j + i * width for j in range(3)], values, width, label=name)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(3)], ["PQ all", "PQ seen", "PQ unseen"])
    ax.set_ylabel(f"{split} PQ (%)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, path)
