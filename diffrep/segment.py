"""DDPM-Seg: few-label semantic segmentation from a diffusion model's pixel features.

    labelled images ─► maps at blocks × t (one fixed noise) ─► on-disk cache, one file per image
                    ─► pixels sampled per image (class-balanced by default) ─► K per-pixel MLPs
    test images     ─► maps per batch ─► features in tiles of pixels ─► majority vote, uncertainty

Memory is bounded by construction: training holds one image's maps plus a pool of sampled pixels
whose size is capped (`pool_mb`), prediction one batch of maps plus one tile of pixel features; the
N×C×H×W stack of the reference implementation never exists. Baselines are trained in the same run
with the same head and protocol: raw-pixel features, the same network with random weights, and a
single MLP instead of the ensemble.

Decisions: early stopping uses a fixed tenth of each labelled image's pixels that training never
samples; a class with fewer than `min_class_pixels` pixels in an image is ignored in that image for
training (never in evaluation); `--select` scores each (block, t) cell by cross-validation over the
labelled images (folds of whole images) with a single MLP, and never looks at test data.
"""

from __future__ import annotations

import itertools
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .backbone import load_backbone
from .data import match_channels
from .errors import DiffrepError
from .featurizer import Featurizer
from .jsonio import write_json
from .segment_data import SegData, load_seg_data
from .segment_features import (PEAK, DiffusionMaps, FeatureCache, RawPixelMaps, default_blocks, default_levels,
                               features_at, total_channels)
from .segment_heads import PixelMLPs, ensemble_uncertainty, majority_vote, train_heads


@dataclass
class SegConfig:
    model: str = "scenes-ddpm"
    data: str = "scenes"
    labelled: int = 20               # labelled images used (the first N of the train split)
    blocks: list | None = None       # default: mid block + up blocks but the last (see default_blocks)
    ts: list | None = None           # default: t ∈ {50, 150, 250} (σ equivalents for EDM)
    k: int = 10                      # MLPs in the ensemble
    ensemble: int = 1                # noise draws averaged per feature (DDPM-Seg: 1)
    seed: int = 0                    # the fixed noise and the heads' initialisation
    shared_noise: bool = True        # one noise for every image and t (DDPM-Seg)
    bf16: bool = False               # bfloat16 autocast for the denoiser
    pixels_per_image: int = 1000     # pixels drawn afresh from each labelled image every epoch
    balanced: bool = True            # draw classes equally often within an image
    pool_mb: float = 512             # cap on the training pool (pixels × channels × 4 bytes)
    batch_size: int = 64             # pixels per step (DDPM-Seg: 64)
    lr: float = 1e-3
    max_epochs: int = 10             # each epoch is a fresh draw: 10 epochs see up to 10,000 pixels per image
    patience: int = 3
    min_class_pixels: int = 20
    extract_batch: int = 8           # images per denoiser forward
    select: bool = False             # choose blocks and t by cross-validation on the labelled images
    select_blocks: int = 3           # blocks kept by --select
    select_ts: int = 2               # noise levels kept by --select
    baselines: bool = True
    neighbourhood: int = 2           # raw-pixel baseline: RGB of a (2r+1)² window
    colour_copies: int = 0           # add up to 5 copies of each labelled image with its RGB channels permuted
    held_out_images: int = 0         # >0: stop early on the last N labelled images, never trained on;
                                     # 0: on a fixed tenth of every labelled image's pixels
    selection: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- pixel sampling

def usable_pixels(mask: torch.Tensor, n_classes: int, ignore: int | None, min_pixels: int) -> torch.Tensor:
    """H×W bool: pixels with a real label whose class covers at least `min_pixels` pixels here."""
    ok = (mask >= 0) & (mask < n_classes)
    if ignore is not None:
        ok &= mask != ignore
    counts = torch.bincount(mask[ok].flatten(), minlength=n_classes)
    return ok & (counts[mask.clamp(0, n_classes - 1)] >= min_pixels)


def held_out_pixels(shape: tuple[int, int], seed: int, fraction: float = 0.1) -> torch.Tensor:
    """A fixed H×W bool set of pixels kept for early stopping (per image, seeded)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < fraction


def held_out_sets(data: SegData, images: list[int], cfg: SegConfig) -> dict[int, torch.Tensor]:
    """Per image, the H×W pixels kept for early stopping: all of the last `held_out_images` labelled
    images (whole images test generalisation to new scenes, not to new pixels of seen ones), or a
    fixed seeded tenth of every image. A colour copy holds out what its original does."""
    originals = len(data) // (cfg.colour_copies + 1)
    if cfg.held_out_images and not 0 < cfg.held_out_images < originals:
        raise DiffrepError(f"--held-out-images {cfg.held_out_images} leaves no labelled image to train on "
                           f"({originals} labelled)")
    held = {}
    for i in images:
        shape = tuple(data.masks[i].shape)
        if cfg.held_out_images:
            held[i] = torch.full(shape, i % originals >= originals - cfg.held_out_images)
        else:
            held[i] = held_out_pixels(shape, cfg.seed * 100003 + i % originals)
    return held


def sample_pixels(labels: torch.Tensor, ok: torch.Tensor, n: int, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """Up to `n` flat indices of pixels where `ok`, drawn without replacement; `balanced` gives each
    class present an equal share (a class with fewer pixels gives all it has)."""
    candidates = ok.flatten().nonzero().squeeze(1)
    if not balanced or len(candidates) <= n:
        return candidates[torch.randperm(len(candidates), generator=gen)[:n]]
    flat = labels.flatten()[candidates]
    classes = flat.unique()
    share = max(1, n // len(classes))
    picks = []
    for c in classes:
        members = candidates[flat == c]
        picks.append(members[torch.randperm(len(members), generator=gen)[:share]])
    return torch.cat(picks)


class PixelPools:
    """Draws pools of (features, labels) from a feature cache, one image at a time."""

    def __init__(self, cache: FeatureCache, keys: list[str], data: SegData, images: list[int], cfg: SegConfig,
                 channels: int):
        self.cache, self.keys, self.data, self.images, self.cfg, self.channels = cache, keys, data, images, cfg, channels
        n_classes = len(data.classes)
        self.usable = {i: usable_pixels(data.masks[i], n_classes, data.ignore_index, cfg.min_class_pixels) for i in images}
        self.held = held_out_sets(data, images, cfg)
        budget = cfg.pool_mb * 2**20 / (4 * channels * max(len(images), 1))
        self.per_image = int(max(1, min(cfg.pixels_per_image, budget)))
        if self.per_image < cfg.pixels_per_image:
            print(f"note: {self.per_image} pixels per image (not {cfg.pixels_per_image}) keep the pool within "
                  f"{cfg.pool_mb} MB at {channels} channels")

    def _draw(self, where: dict, n: int, balanced: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        picks = {i: sample_pixels(self.data.masks[i], where[i], n, balanced, gen) for i in self.images}
        x = torch.empty(sum(len(p) for p in picks.values()), self.channels)   # filled in place: no second copy
        y = torch.cat([self.data.masks[i].flatten()[p] for i, p in picks.items()])
        start = 0
        for i, index in picks.items():
            x[start:start + len(index)] = features_at(self.cache.maps(i, self.keys), index, self.cache.size)
            start += len(index)
        PEAK.note("training pool", x)
        return x, y

    def train(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = {i: self.usable[i] & ~self.held[i] for i in self.images}
        return self._draw(where, self.per_image, self.cfg.balanced, self.cfg.seed * 1000 + epoch)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        where = {i: self.usable[i] & self.held[i] for i in self.images}
        return self._draw(where, max(1, self.per_image // 4), False, self.cfg.seed - 1)

    def everything(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniformly drawn labelled pixels of these images (scoring a fold in --select)."""
        where = {i: (self.data.masks[i] >= 0) & (self.data.masks[i] < len(self.data.classes)) for i in self.images}
        return self._draw(where, n, False, self.cfg.seed - 2)


# ----------------------------------------------------------------------------- training

def _fit(pools: PixelPools, channels: int, n_classes: int, k: int, cfg: SegConfig, desc: str) -> tuple[PixelMLPs, dict]:
    heads = PixelMLPs(channels, n_classes, k, seed=cfg.seed)
    log = train_heads(heads, pools.train, pools.held_out(), cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.patience,
                      cfg.seed, desc)
    return heads, log


def save_heads(heads: PixelMLPs, path: Path, keys: list[str]) -> None:
    meta = {"k": heads.k, "channels": heads.channels, "n_classes": heads.n_classes, "hidden": list(heads.hidden),
            "keys": keys}
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(path), metadata={"meta": json.dumps(meta)})


def load_heads(path: Path) -> tuple[PixelMLPs, list[str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise DiffrepError(f"{path} is missing: not a complete `diffrep segment train` run")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    heads = PixelMLPs(meta["channels"], meta["n_classes"], meta["k"], tuple(meta["hidden"]))
    heads.load_state_dict(load_file(str(path)))
    return heads.eval(), meta["keys"]


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _sources(cfg: SegConfig, featurizer: Featurizer, channels: int) -> dict:
    """Each method's feature source (the random-weight network only when baselines are asked)."""
    from .sweep import random_init

    sources = {"diffusion": DiffusionMaps(featurizer, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed, cfg.shared_noise,
                                          cfg.bf16)}
    if cfg.baselines:
        sources["raw_pixels"] = RawPixelMaps(cfg.neighbourhood, channels)
        rand = Featurizer(random_init(featurizer.backbone, cfg.seed + 1))   # +1: not the init of a seed-0 model
        sources["random_weights"] = DiffusionMaps(rand, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed, cfg.shared_noise,
                                                  cfg.bf16, weights="random")
    return sources


def _train_on_source(name: str, source, data: SegData, cfg: SegConfig, out: Path) -> dict:
    """Cache the source's maps of the labelled images, train its heads, write heads-<method>.safetensors.
    The diffusion source also trains the single-MLP baseline, on the same cache."""
    cache = FeatureCache(out / "cache" / f"train-{name}", source, data.images, cfg.extract_batch, f"{name} features")
    keys, channels = list(source.channels), total_channels(source)
    pools = PixelPools(cache, keys, data, list(range(len(data))), cfg, channels)
    fits = [(name, cfg.k)] + ([("single_mlp", 1)] if name == "diffusion" and cfg.baselines else [])
    logs = {}
    for method, k in fits:
        heads, log = _fit(pools, channels, len(data.classes), k, cfg, f"{method} heads (K={k})")
        save_heads(heads, out / f"heads-{method}.safetensors", keys)
        logs[method] = {"k": k, "channels": channels, "epochs": log["epochs"],
                        "best_held_out_loss": log["best_held_out_loss"], "log": log["log"]}
    return logs


def with_colour_copies(data: SegData, copies: int) -> SegData:
    """The labelled images followed by `copies` versions of all of them with permuted RGB channels
    (masks unchanged). With few labelled images a colour can mark a class by chance (the bundled scenes
    draw each digit's ink at random), and per-pixel heads learn that shortcut instead of shape; after
    the permutations no colour predicts a class."""
    if copies == 0:
        return data
    if data.images.shape[1] != 3 or not 1 <= copies <= 5:
        raise DiffrepError(f"colour copies need RGB images and 1 to 5 copies; got {data.images.shape[1]} channel(s), "
                           f"{copies} copies")
    perms = [list(p) for p in itertools.permutations(range(3)) if p != (0, 1, 2)][:copies]
    images = torch.cat([data.images] + [data.images[:, p] for p in perms])
    return SegData(images, data.masks.repeat(copies + 1, 1, 1), data.classes, data.ignore_index, data.name)


def train_segmenter(cfg: SegConfig, out: str | Path, data: SegData | None = None) -> dict:
    """Train the ensemble (and the baselines' heads) on `cfg.labelled` images; write the run folder:
    config.json, heads*.safetensors, train.json, cache/."""
    out, start = Path(out), time.time()
    data = load_seg_data(cfg.data, "train", cfg.labelled) if data is None else data
    if len(data) < cfg.labelled:
        raise DiffrepError(f"asked for {cfg.labelled} labelled images but {cfg.data} gives only {len(data)}")
    data = SegData(data.images[:cfg.labelled], data.masks[:cfg.labelled], data.classes, data.ignore_index, data.name)
    backbone = load_backbone(cfg.model)
    featurizer = Featurizer(backbone)
    if cfg.select:   # blocks and ts given are the candidates
        from .segment_select import select_cells

        cfg.blocks, cfg.ts, cfg.selection = select_cells(cfg, featurizer, data, out / "cache")
    cfg.blocks = featurizer.check_blocks(cfg.blocks or default_blocks(featurizer))
    cfg.ts = [backbone.noise.check(t) for t in (cfg.ts or default_levels(backbone.noise))]
    data = with_colour_copies(data, cfg.colour_copies)
    sources = _sources(cfg, featurizer, data.images.shape[1])
    print(f"DDPM-Seg on {len(data)} labelled images of {data.name}: blocks {cfg.blocks}, t {cfg.ts}, "
          f"{total_channels(sources['diffusion'])} channels per pixel")
    if data.images.shape[1] != backbone.image_channels:   # DiffusionMaps converts; the raw-pixel baseline keeps the data's
        print(f"note: the diffusion features see the {data.images.shape[1]}-channel images converted to "
              f"{backbone.image_channels} channel(s) for the model")
    result = {"n_labelled": len(data), "heads": {}, "timing_s": {}}
    for name, source in sources.items():
        t0 = time.time()
        result["heads"].update(_train_on_source(name, source, data, cfg, out))
        result["timing_s"][name] = round(time.time() - t0, 1)
    result["timing_s"]["total"] = round(time.time() - start, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    result["largest_feature_tensor_mb"] = {k: round(v / 2**20, 2) for k, v in PEAK.peak.items()}
    result["all_in_ram_mb"] = round(len(data) * total_channels(sources["diffusion"]) * data.masks[0].numel() * 4 / 2**20, 1)
    write_json(out / "config.json", {**asdict(cfg), "classes": data.classes, "ignore_index": data.ignore_index,
                                       "image_channels": int(data.images.shape[1]), "data_name": data.name})
    write_json(out / "train.json", result)
    print(f"trained in {result['timing_s']['total']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
          f"(all pixel features in RAM would take {result['all_in_ram_mb']:.0f} MB); wrote {out}")
    return result


# ----------------------------------------------------------------------------- a trained run

class Segmenter:
    """A trained run: per method its feature source and heads. `predict(images)` yields, per image,
    {method: (labels H×W, uncertainty H×W)}."""

    def __init__(self, run: str | Path, baselines: bool = True):
        self.run = Path(run)
        path = self.run / "config.json"
        if not path.is_file():
            raise DiffrepError(f"{self.run} is not a `diffrep segment train` run folder (no config.json)")
        raw = json.loads(path.read_text())
        self.classes, self.ignore_index = raw.pop("classes"), raw.pop("ignore_index")
        self.image_channels = raw.pop("image_channels")
        raw.pop("data_name", None)
        self.cfg = SegConfig(**raw)
        self.cfg.baselines = self.cfg.baselines and baselines
        featurizer = Featurizer(load_backbone(self.cfg.model))
        self.sources = _sources(self.cfg, featurizer, self.image_channels)
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
    def predict(self, images: torch.Tensor, batch: int | None = None, tile: int = 4096):
        """Per image {method: (labels, uncertainty)}, computing one batch of maps at a time."""
        images = match_channels(images, self.image_channels)
        batch = batch or self.cfg.extract_batch
        size = tuple(images.shape[-2:])
        for start in range(0, len(images), batch):
            maps = {name: src.maps(images[start:start + batch]) for name, src in self.sources.items()}
            for j in range(len(images[start:start + batch])):
                yield {m: predict_image(heads, {k: maps[self._source_of(m)][k][j] for k in keys}, size, tile)
                       for m, (heads, keys) in self.heads.items()}


def predict_image(heads: PixelMLPs, maps: dict[str, torch.Tensor], size: tuple[int, int],
                  tile: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels H×W, uncertainty H×W) of one image, tile by tile of `tile` pixels."""
    n = size[0] * size[1]
    labels, uncertainty = torch.empty(n, dtype=torch.long), torch.empty(n)
    for s in range(0, n, tile):
        index = torch.arange(s, min(s + tile, n))
        logits = heads(features_at(maps, index, size))
        labels[index], uncertainty[index] = majority_vote(logits), ensemble_uncertainty(logits)
    return labels.view(size), uncertainty.view(size)


# ----------------------------------------------------------------------------- evaluation

class SegMetrics:
    """mIoU, per-class IoU and pixel accuracy (torchmetrics), accumulated image by image. Classes
    absent from both prediction and ground truth have no IoU (null) and do not enter the mean."""

    def __init__(self, classes: list[str], ignore_index: int | None):
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.classes = classes
        self.iou = MulticlassJaccardIndex(len(classes), average="none", ignore_index=ignore_index,
                                          zero_division=float("nan"))
        self.accuracy = MulticlassAccuracy(len(classes), average="micro", ignore_index=ignore_index)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.iou.update(pred.flatten(), target.flatten())
        self.accuracy.update(pred.flatten(), target.flatten())

    def compute(self) -> dict:
        iou = self.iou.compute()
        return {"miou": round(float(iou.nanmean()), 4),
                "per_class": {c: (None if v != v else round(float(v), 4)) for c, v in zip(self.classes, iou.tolist())},
                "pixel_accuracy": round(float(self.accuracy.compute()), 4)}


def evaluate(run: str | Path, data: str, n: int | None = None, out: str | Path | None = None,
             pictures: int = 6, baselines: bool = True, split: str = "test") -> dict:
    """Score a run on the test split of `data` (or the bundled scenes' 'val' split, for choosing
    settings without looking at test): eval.json, a printed table, pictures in `out` (default: the
    run folder)."""
    from .segment_plots import plot_examples, plot_per_class

    start = time.time()
    seg = Segmenter(run, baselines)
    test = load_seg_data(data, split, n, seg.classes, seg.ignore_index)
    out = Path(out or seg.run)
    metrics = {m: SegMetrics(seg.classes, seg.ignore_index) for m in seg.methods()}
    examples = []
    for i, preds in enumerate(tqdm(seg.predict(test.images), total=len(test), desc="evaluating", dynamic_ncols=True)):
        for m, (labels, _) in preds.items():
            metrics[m].update(labels, test.masks[i])
        if i < pictures:
            examples.append((test.images[i], test.masks[i], *preds["diffusion"]))
    scores = {m: s.compute() for m, s in metrics.items()}
    result = {**scores.pop("diffusion"), "baselines": scores, "model": seg.cfg.model, "data": test.name,
              "n_test": len(test), "blocks": seg.cfg.blocks, "ts": seg.cfg.ts, "k": seg.cfg.k,
              "time_s": round(time.time() - start, 1), "peak_rss_mb": peak_rss_mb()}
    train_json = seg.run / "train.json"
    if train_json.is_file():
        result["train_peak_rss_mb"] = json.loads(train_json.read_text()).get("peak_rss_mb")
    write_json(out / "eval.json", result)
    plot_examples(examples, seg.classes, out / "examples.png")
    plot_per_class(result, out / "per_class_iou.png")
    print(format_table(result))
    written = [out / n for n in ("eval.json", "examples.png", "per_class_iou.png") if (out / n).is_file()]
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


def predict_files(run: str | Path, paths: list[str], out: str | Path) -> list[Path]:
    """Label PNGs (palette: the pixel value is the class), overlays and uncertainty maps for image files."""
    from .data import read_image
    from .segment_plots import save_prediction

    seg = Segmenter(run, baselines=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="predicting", dynamic_ncols=True):
        image = read_image(Path(path), 3, None)[0]
        labels, uncertainty = next(seg.predict(image[None]))["diffusion"]
        written += save_prediction(image, labels, uncertainty, seg.classes, out / Path(path).stem)
    print(f"wrote {len(written)} files to {out}")
    return written

