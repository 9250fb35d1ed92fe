"""A trained DDPM-Seg run: prediction (labels, uncertainty), evaluation (mIoU against the
baselines), and label files for user images.

    test images ─► maps per batch ─► features in tiles of pixels ─► majority vote, uncertainty

Prediction holds one batch of maps plus one tile of pixel features. Images whose size is not a
multiple of the model's stride are padded at the bottom and right (edge values) for the features
and the labels cropped back, as `diffrep match` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ...core import PRECISIONS, Featurizer, load_backbone
from ...core.precision import resolve_precision
from ...data import ImageBatches, load_seg_data, match_channels, pad_to_multiple, read_image
from ...errors import DiffrepError
from ...features import features_at
from ...heads import PixelMLPs, ensemble_uncertainty, majority_vote
from ...metrics import SegMetrics
from ...options import check, option
from ...runs import header, locked, peak_rss_mb, read_json, write_results
from .config import SegConfig
from .plots import plot_examples, plot_per_class, save_prediction
from .train import feature_sources, load_heads

class Segmenter:
    """A trained run: per method its feature source and heads. `predict(images)` yields, per image,
    {method: (labels H×W, uncertainty H×W)}."""

    def __init__(self, run: str | Path, baselines: bool = True, device: str | None = None,
                 precision: str | None = None):
        """`device`, `precision`: where and how to run the model (default: the run's own settings)."""
        self.run = Path(run)
        path = self.run / "config.json"
        if not path.is_file():
            raise DiffrepError(f"{self.run} is not a `diffrep segment train` run folder (no config.json)")
        raw = read_json(path, "the run's config")
        try:
            self.classes, self.ignore_index = raw.pop("classes"), raw.pop("ignore_index")
            self.image_channels = raw.pop("image_channels")
            raw.pop("data_name", None)
            if "bf16" in raw:   # runs trained before --precision existed
                raw["precision"] = "bf16" if raw.pop("bf16") else "fp32"
            self.cfg = SegConfig(**raw)
        except (AttributeError, KeyError, TypeError) as err:
            raise DiffrepError(f"the run's config {path} is damaged ({type(err).__name__}: {err}); run `diffrep "
                               "segment train` again into this folder") from None
        self.cfg.baselines = self.cfg.baselines and baselines
        self.cfg.device = device or self.cfg.device
        self.cfg.precision = resolve_precision(precision or self.cfg.precision, self.cfg.device)
        featurizer = Featurizer(load_backbone(self.cfg.model, self.cfg.device, self.cfg.precision, **self.cfg.model_options()))
        self.sources = feature_sources(self.cfg, featurizer, self.image_channels)
        self.stride = max(b.stride for b in featurizer.feature_info())
        self.side = featurizer.backbone.image_size   # DDPM-Seg's layout is read at this size
        self.heads = {}
        for name in self.sources:
            self.heads[name] = load_heads(self.run / f"heads-{name}.safetensors")
        if self.cfg.baselines:
            self.heads["single_mlp"] = load_heads(self.run / "heads-single_mlp.safetensors")

    def methods(self) -> list[str]:
        return list(self.heads)

    def _source_of(self, method: str) -> str:
        return "diffusion" if method == "single_mlp" else method

    @torch.no_grad()
    def predict(self, images, batch: int | None = None, tile: int = 4096, workers: int = 0):
        """Per image {method: (labels, uncertainty)}, computing one batch of maps at a time; `images` is
        a tensor or a lazy `ImageFiles`, read through a DataLoader with `workers` processes."""
        for idx, chunk in ImageBatches(images, batch or self.cfg.extract_batch, workers):
            chunk = match_channels(chunk, self.image_channels)
            size = tuple(chunk.shape[-2:])
            maps = {name: src.maps(chunk, indices=idx) for name, src in self.sources.items()}
            for j in range(len(chunk)):
                yield {m: predict_image(heads, {k: maps[self._source_of(m)][k][j] for k in keys}, size, tile)
                       for m, (heads, keys) in self.heads.items()}


def predict_image(heads: PixelMLPs, maps: dict, size: tuple[int, int],
                  tile: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels H×W, uncertainty H×W) of one image, tile by tile of `tile` pixels."""
    n = size[0] * size[1]
    labels, uncertainty = torch.empty(n, dtype=torch.long), torch.empty(n)
    for s in range(0, n, tile):
        index = torch.arange(s, min(s + tile, n))
        logits = heads(features_at(maps, index, size))
        labels[index], uncertainty[index] = majority_vote(logits), ensemble_uncertainty(logits)
    return labels.view(size), uncertainty.view(size)


@dataclass
class RunSettings:
    """Where a trained run's model runs now (`segment predict`, `segment eval`)."""

    device: str | None = option(None, "where the model runs: auto, cpu, cuda, cuda:N or mps (default: the run's "
                                      "own setting)", parse=str)
    precision: str | None = option(None, "autocast precision: auto, fp32, bf16 or fp16 (default: the run's own)",
                                   choices=("auto", *PRECISIONS), parse=str)

    def __post_init__(self):
        check(self)


@dataclass
class EvalConfig(RunSettings):
    """The settings of `diffrep segment eval`: each field is a flag of the command, with the same
    default and range."""
    data: str = option("scenes", "'scenes' (its test split), a folder with images/ + masks/, or DDPM-Seg's layout (images "
                                 "beside .npy label arrays; a data set root's real/test)")
    n: int | None = option(None, "test images (default: all; scenes: 200)", parse=int, min=1)
    split: str = option("test", "'val' scores on validation images (bundled scenes: train-split scenes never "
                                "labelled) to choose settings", choices=("test", "val"))
    pictures: int = option(6, "test images shown in examples.png", min=0)
    workers: int = option(0, "DataLoader processes reading images (0: in the main process)", min=0)
    baselines: bool = option(True, "skip the baselines")

    def __post_init__(self):
        check(self)


def evaluate(run: str | Path, cfg: EvalConfig | None = None, out: str | Path | None = None) -> dict:
    """Score a run on the test split of `cfg.data` (or its 'val' split, for choosing settings without
    looking at test): segment-eval.json, a printed table, pictures in `out` (default: the run folder)."""
    cfg = cfg or EvalConfig()
    start = time.time()
    seg = Segmenter(run, cfg.baselines, cfg.device, cfg.precision)
    with locked(out or seg.run) as out:
        test = load_seg_data(cfg.data, cfg.split, cfg.n, seg.classes, seg.ignore_index, lazy=True, side=seg.side)
        metrics = {m: SegMetrics(seg.classes, seg.ignore_index) for m in seg.methods()}
        examples = []
        for i, preds in enumerate(tqdm(seg.predict(test.images, workers=cfg.workers), total=len(test), desc="evaluating",
                                       dynamic_ncols=True)):
            mask = test.masks[i]
            if tuple(mask.shape) != tuple(preds["diffusion"][0].shape):
                where = test.masks.paths[i] if hasattr(test.masks, "paths") else f"#{i} of {test.name}"
                raise DiffrepError(f"mask {where} is "
                                   f"{mask.shape[0]}×{mask.shape[1]} but its image is "
                                   f"{preds['diffusion'][0].shape[0]}×{preds['diffusion'][0].shape[1]}; a mask must "
                                   "match its image pixel for pixel")
            for m, (labels, _) in preds.items():
                metrics[m].update(labels, mask)
            if i < cfg.pictures:
                examples.append((test.images[i], mask, *preds["diffusion"]))
        scores = {m: s.compute() for m, s in metrics.items()}
        result = {**header("ddpm_seg", seg.cfg.model, test.name, {"total": round(time.time() - start, 1)}),
                  **scores.pop("diffusion"), "baselines": scores, "run": str(seg.run), "n_test": len(test),
                  "blocks": seg.cfg.blocks, "ts": seg.cfg.ts, "k": seg.cfg.k, "reference": seg.cfg.reference,
                  "peak_rss_mb": peak_rss_mb()}
        train_json = seg.run / "segment-train.json"
        if train_json.is_file():
            result["train_peak_rss_mb"] = read_json(train_json, "the run's training record").get("peak_rss_mb")
        write_results(out, "segment-eval", result)
        plot_examples(examples, seg.classes, out / "examples.png")
        plot_per_class(result, out / "per_class_iou.png")
        print(format_table(result))
        written = [out / n for n in ("segment-eval.json", "examples.png", "per_class_iou.png") if (out / n).is_file()]
        print(f"wrote {', '.join(map(str, written))}")
        return result


def format_table(result: dict) -> str:
    rows = [("diffusion features (ensemble)", result)] + [(m.replace("_", " "), r) for m, r in result["baselines"].items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'method'.ljust(width)}   mIoU  pixel acc.", *(f"{name.ljust(width)}  {100 * r['miou']:5.1f}  "
                                                          f"{100 * r['pixel_accuracy']:9.1f}" for name, r in rows)]
    lines.append("per-class IoU (ensemble): " + ", ".join(f"{c} {'-' if v is None else f'{100 * v:.1f}'}"
                                                       for c, v in result["per_class"].items()))
    return "\n".join(lines)


def predict_files(run: str | Path, paths: list[str], out: str | Path, on: RunSettings | None = None) -> list[Path]:
    """Label PNGs (palette: the pixel value is the class), overlays and uncertainty maps for image files."""
    on = on or RunSettings()
    seg = Segmenter(run, baselines=False, device=on.device, precision=on.precision)
    images = {path: read_image(Path(path), 3, None)[0] for path in paths}   # every file read before any is written
    written = []
    with locked(out) as out:
        for path, image in tqdm(images.items(), desc="predicting", dynamic_ncols=True):
            h, w = image.shape[-2:]
            labels, uncertainty = next(seg.predict(pad_to_multiple(image, seg.stride)[None]))["diffusion"]
            written += save_prediction(image, labels[:h, :w], uncertainty[:h, :w], seg.classes, out / Path(path).stem)
    print(f"wrote {len(written)} files to {out}")
    return written
