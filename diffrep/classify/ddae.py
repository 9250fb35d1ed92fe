"""DDAE: the timestep × block probe sweep. For every (t, block, pool) cell a linear probe on frozen
features, all probes trained in one pass; baselines (raw pixels, the same network with random
weights) in the same run and table. Writes config.json, sweep.json and heatmap.png, prints the table.

    images ─► DiffusionFeatures at ts × blocks ─► pooled to p×p, cached ─► probe grid
           ─► best cell (shortlist by validation, then k-fold CV on train) ─► refit with distorted copies
           ─► test accuracy, scored once
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import Featurizer, RunOn, load_backbone, random_init
from ..core.precision import native_bf16
from ..data import DistortedCopy, Distortion, fit_images, load
from ..errors import DiffrepError
from ..features import (Cell, DiffusionFeatures, FeatureStore, RawPixels, as_tensor, bytes_per_image, collect_features,
                        default_shard_size, extract_to_store, in_memory)
from ..heads.probe import CHUNK
from ..heads import augmented_epochs, cross_validated_accuracy, train_probe_grid
from ..options import MODEL_HELP, add_options, from_args, noise_level, option
from ..plotting import grid_rows, plot_grid
from ..runs import header, in_run_folder, write_results
from ..stages import StageMeter, format_stages, image_flops, probe_flops

DEFAULT_TS = [5, 25, 50, 100, 200]
PIXELS, RANDOM = "pixels", "random"   # the baselines' feature keys: raw pixels, and (RANDOM, cell)
SOURCES = {None: "model", RANDOM: "random-weight network"}   # the cells' sources, as printed


@dataclass
class SweepConfig(RunOn):
    """Settings of `diffrep sweep` (`run_sweep`): the model and labelled data, the (t, block, pool)
    grid, the probes' training, the baselines, the cross-validated choice of the cell and the refit
    on distorted copies; device and precision from `RunOn`. Each field is a command-line flag."""
    model: str = option("mnist-ddpm", MODEL_HELP)
    data: str = option("mnist", "'mnist' or an image folder with class sub-folders")
    ts: list | None = option(None, f"noise levels, timesteps or σ for EDM (default {','.join(map(str, DEFAULT_TS))}; "
                                   "with --features: the file's)", parse=noise_level, many=True, flag="--t")
    blocks: list | None = option(None, "blocks (default: every top-level block; with --features: the file's)", many=True)
    pools: list = option([1, 2, 4], "adaptive average pooling sizes p×p", min=1)
    batch_size: int = option(250, "images per forward", min=1)
    workers: int = option(0, "DataLoader processes reading images (0: in the main process)", min=0)
    ensemble: int = option(1, "noise draws averaged per image", min=1)
    seed: int = option(0, "seed of the noise and the probes")
    epochs: int = option(60, "linear-probe epochs", min=1)
    baselines: bool = option(True, "skip the raw-pixel and random-weight baselines")
    features: str | None = option(None, "a `diffrep features` folder to use instead of extracting")
    augment: int = option(16, "refit the chosen cell's probe with N distorted copies of the train images (0: off)", min=0)
    distortion: Distortion = option(Distortion(), cli=False)   # how each copy is distorted (its own flags)
    shortlist: int = option(10, "rank the N best cells on validation by cross-validation over the whole train "
                                "split (0: choose on validation alone)", min=0)
    folds: int = option(5, "cross-validation folds", min=2)

    def __post_init__(self):
        if isinstance(self.distortion, dict):
            self.distortion = Distortion(**self.distortion)
        super().__post_init__()

    @property
    def probe_precision(self) -> str:
        """The linear probes' precision (they train on the CPU, on cached features): bf16 when the model
        runs in reduced precision and this CPU has native bf16, else fp32."""
        return "bf16" if self.precision != "fp32" and native_bf16("cpu") else "fp32"


def _pool_saved(features_dir: Path, split: str, cfg: SweepConfig) -> tuple[dict, dict, torch.Tensor]:
    """Features written by `diffrep features` (its store `features_dir/<split>/`), the cells asked for
    (default: all in the store), pooled to each p in chunks of images; returns (features, settings, labels)."""
    folder = features_dir / split
    if (features_dir / f"{split}.safetensors").is_file() and not folder.is_dir():
        raise DiffrepError(f"{features_dir} was written by an older diffrep (one {split}.safetensors file); "
                           "extract the features again with `diffrep features`")
    store = FeatureStore(folder)
    meta = store.identity
    if "labels" not in store.keys:
        raise DiffrepError(f"{folder} has no labels; the sweep needs a labelled data set")
    for what, asked, have in (("t", cfg.ts, meta["ts"]), ("blocks", cfg.blocks, meta["blocks"])):
        absent = [v for v in asked or [] if v not in have]
        if absent:
            raise DiffrepError(f"{folder} holds {what} {have}, not {absent}: extract them with `diffrep features` "
                               f"or leave out --{'t' if what == 't' else 'blocks'}")
    ts, blocks = cfg.ts or meta["ts"], cfg.blocks or meta["blocks"]
    out = {}
    for t in ts:
        for b in blocks:
            maps, parts = store.array(Cell(t, b)), {p: [] for p in cfg.pools}
            for start in range(0, len(maps), CHUNK):   # never a whole split of full maps in memory
                chunk = maps[start:start + CHUNK].float()
                for p in cfg.pools:
                    parts[p].append(F.adaptive_avg_pool2d(chunk, p).flatten(1))
            out.update({Cell(t, b, p): torch.cat(v) for p, v in parts.items()})
    return out, {**meta, "ts": ts, "blocks": blocks}, as_tensor(store.array("labels"))


def labelled_splits(data: str, backbone, what: str = "the sweep", names=("train", "test")) -> dict:
    """The splits `names`, their images fitted to the model (folders: as each image is read)."""
    splits = {s: load(data, s, channels=backbone.image_channels, size=backbone.image_size) for s in names}
    for s, d in splits.items():
        if d.labels is None:
            raise DiffrepError(f"{data} has no labels (use class sub-folders); {what} needs them")
        d.images = fit_images(d.images, backbone.image_channels, backbone.image_size, f"{s} images")
    return splits


def _extract(cfg: SweepConfig, source, images, folder: Path, split: str, pools: list[int] | None, desc: str,
             state=None) -> dict:
    """A split's features through the sharded store in the run's cache (resumed, or reused when it is
    complete with these settings), in memory when they fit (`in_memory`), else memory-mapped."""
    identity = {**_cache_meta(cfg, split), "source": source.identity(), "pools": pools}
    store = extract_to_store(source, images, folder, identity, pools, _shard_size(cfg, source, images, pools),
                             cfg.batch_size, cfg.workers, state=state, desc=desc)
    return in_memory({k: store.array(k) for k in store.keys})


def _shard_size(cfg: SweepConfig, source, images, pools) -> int:
    side = images.shape[-1]
    strides = {b.name: b.stride for b in source.featurizer.feature_info()} if hasattr(source, "featurizer") else {}
    return default_shard_size(bytes_per_image(source, side, strides, pools))


def run_sweep(cfg: SweepConfig, out: str | Path) -> dict | None:
    """The sweep into run folder `out`. Under torchrun every process extracts its shards of the
    features; the main process then trains the probes and returns the result (the others None)."""
    return in_run_folder(out, cfg.device, lambda folder, device, state: _sweep(cfg, folder, device, state))


def _sweep(cfg: SweepConfig, out: Path, device, state) -> dict | None:
    start = time.time()
    meter = StageMeter(device)
    with meter.stage("set-up", cfg.precision, count=False):
        backbone = load_backbone(cfg.model, device, cfg.precision, **cfg.model_options())
        featurizer = Featurizer(backbone)
        splits = labelled_splits(cfg.data, backbone)
    check_cross_validation(cfg, len(splits["train"].labels))
    feats, labels = {}, {s: d.labels for s, d in splits.items()}
    n_images = sum(len(d.images) for d in splits.values())
    with meter.stage("features", cfg.precision, count=False):
        if cfg.features:
            for s in splits:
                feats[s], meta, labels[s] = _pool_saved(Path(cfg.features), s, cfg)
            cfg.ts, cfg.blocks = meta["ts"], meta["blocks"]
            print(f"using features from {cfg.features}: t={cfg.ts}, blocks={cfg.blocks}")
        else:
            cfg.blocks = featurizer.check_blocks(cfg.blocks or featurizer.default_blocks("probe"))
            cfg.ts = [backbone.noise.check(t) for t in (cfg.ts or DEFAULT_TS)]
            source = DiffusionFeatures(featurizer, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed, precision=cfg.precision)
            for s, d in splits.items():
                feats[s] = _extract(cfg, source, d.images, out / "cache" / s, s, cfg.pools, f"{s} features", state)
            meter.add("features", cfg.precision, lambda: image_flops(source, splits["train"].images) * n_images)
    if cfg.baselines:
        with meter.stage("baseline features", cfg.precision, count=False):
            rand = DiffusionFeatures(Featurizer(random_init(backbone, cfg.seed)), cfg.blocks, cfg.ts, cfg.ensemble,
                                     cfg.seed, precision=cfg.precision, weights="random")
            pixels = RawPixels(radius=0, image_channels=backbone.image_channels, position=False, name=PIXELS)
            for s, d in splits.items():
                feats[s].update(_extract(cfg, pixels, d.images, out / "cache" / f"{s}-pixels", s, None, f"{s} pixels",
                                         state))
                rfeats = _extract(cfg, rand, d.images, out / "cache" / f"{s}-random", s, cfg.pools,
                                  f"{s} random-init", state)
                feats[s].update({(RANDOM, k): v for k, v in rfeats.items()})
        # the raw pixels cost no FLOPs
        meter.add("baseline features", cfg.precision, lambda: image_flops(rand, splits["train"].images) * n_images)
    if state is not None and not state.is_main_process:
        return None   # the main process trains the probes
    print(f"training {len(feats['train'])} linear probes × 3 weight decays in one pass ({cfg.epochs} epochs)")
    probe = cfg.probe_precision

    def grid(epochs: int, cells=None, progress=None):
        cells = cells or list(feats["train"])
        return train_probe_grid({k: feats["train"][k] for k in cells}, labels["train"],
                                {k: feats["test"][k] for k in cells}, labels["test"], epochs=epochs,
                                seed=cfg.seed, progress=progress, precision=probe)
    with meter.stage("probe grid", probe, count=False):
        scores = grid(cfg.epochs, progress=lambda e, n: print(f"  probe epoch {e}/{n}", end="\r"))
    meter.add("probe grid", probe, lambda: probe_flops(grid, feats["train"], cfg.epochs))
    result = summarise(cfg, scores, len(labels["train"]), len(labels["test"]))
    if cfg.shortlist > 0:
        shortlists = {None: result["cells"], **({RANDOM: result["baselines"]["random_cells"]} if cfg.baselines else {})}
        with meter.stage("cross-validation", probe, count=False):
            chosen = cross_validated_choice(cfg, shortlists, feats["train"], labels["train"])
            result["best"], result["shortlist"] = chosen[None]
            if cfg.baselines:
                bl = result["baselines"]
                bl["random_init_best"], bl["random_init"] = chosen[RANDOM][0], chosen[RANDOM][0]["accuracy"]
        decays = shortlisted(cfg, shortlists)
        meter.add("cross-validation", probe, lambda: probe_flops(
            lambda e, cells: cross_validate(cfg, feats["train"], labels["train"], {k: decays[k] for k in cells}, e),
            feats["train"], cfg.epochs, decays))
    if cfg.augment > 0:
        aug = augmented_probe(cfg, featurizer, splits["train"].images, feats, labels, result["best"], meter)
        result["best"] = {**result["best"], "augmented": aug}
    stages = meter.table()
    timing = {**{name: row["seconds"] for name, row in stages.items()}, "total": round(time.time() - start, 1)}
    result = {**header("ddae", cfg.model, cfg.data, timing), "precision": cfg.precision, "stages": stages, **result}
    write_results(out, "sweep", result, cfg)
    plot_heatmap(result, out / "heatmap.png")
    print(format_table(result))
    print(format_stages(stages))
    print(f"wrote {out / 'sweep.json'} and {out / 'heatmap.png'} ({timing['total']:.0f} s)")
    return result


def augmented_probe(cfg: SweepConfig, featurizer: Featurizer, train, feats: dict, labels: dict,
                    best: dict, meter: StageMeter) -> dict:
    """The chosen cell's final probe: refit on the whole train split (fit and validation images, as is
    usual once the choices are made) plus `cfg.augment` randomly distorted copies of it (DDAE trains
    its reported probes with augmentation), at the cell's chosen weight decay, for about the grid's
    number of optimiser steps (`probe.augmented_epochs`), then scored on test. Nothing here is chosen
    on the test split: the cell and its weight decay come from cross-validation, the distortions and
    the copy count from cross-validation on the train split (benchmarks/bench_probe_augment.py); the
    test split is scored once, after this refit. `meter` times the copies and the probe as stages."""
    key = Cell(best["t"], best["block"], best["pool"])
    n = len(labels["train"])
    print(f"refitting the chosen cell's probe on all {n} train images plus {cfg.augment} distorted copies "
          f"({cfg.distortion})")
    parts = [as_tensor(feats["train"][key])]
    with meter.stage("distorted copies", cfg.precision, count=False):
        for c in range(cfg.augment):   # each copy's images distorted as they are read, its noise seeded apart
            source = DiffusionFeatures(featurizer, [best["block"]], [best["t"]], cfg.ensemble, cfg.seed + 1 + c,
                                       precision=cfg.precision)
            parts.append(collect_features(source, train, [best["pool"]], cfg.batch_size, f"distorted copy {c + 1}",
                                          cfg.workers, DistortedCopy(cfg.distortion, cfg.seed, c))[key])
        if cfg.augment:
            meter.add("distorted copies", cfg.precision, lambda: image_flops(source, train) * cfg.augment * len(train))
    x = torch.cat(parts)
    y = labels["train"].repeat(cfg.augment + 1)

    def final(epochs: int):
        return train_probe_grid({key: x}, y, {key: feats["test"][key]}, labels["test"],
                                split=(torch.arange(len(x)), torch.arange(0)), epochs=epochs, seed=cfg.seed,
                                weight_decays=(best["weight_decay"],), precision=cfg.probe_precision)[key]
    epochs = augmented_epochs(cfg.epochs, cfg.augment)
    with meter.stage("final probe", cfg.probe_precision, count=False):
        score = final(epochs)
    meter.add("final probe", cfg.probe_precision, lambda: probe_flops(lambda e, cells: final(e), {key: x}, epochs))
    return {"copies": cfg.augment, "distortion": asdict(cfg.distortion), "fit_images": n,
            "accuracy": score["accuracy"], "weight_decay": score["weight_decay"]}


def check_cross_validation(cfg: SweepConfig, n_train: int) -> None:
    """`folds` against the train split's size; run_sweep calls this before any features are computed,
    so a bad value fails at once (each setting's own range is checked by the config)."""
    if cfg.shortlist and not 2 <= cfg.folds <= n_train:
        raise DiffrepError(f"cross-validation needs 2 to {n_train} folds for {n_train} train images, "
                           f"not {cfg.folds}; pass --folds N or --shortlist 0")


def shortlisted(cfg: SweepConfig, cells: dict[str | None, list[dict]]) -> dict:
    """{feature key: its weight decay} of each source's `cfg.shortlist` cells best on the held-out
    eighth ({None: the model's cells, RANDOM: the random-weight network's})."""
    return {_key(source, c): c["weight_decay"] for source, chosen in cells.items() for c in _short(cfg, chosen)}


def _short(cfg: SweepConfig, cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda c: -c["val_accuracy"])[:cfg.shortlist]


def _key(source: str | None, cell: dict):
    key = Cell(cell["t"], cell["block"], cell["pool"])
    return (source, key) if source else key


def cross_validate(cfg: SweepConfig, train_feats: dict, train_y: torch.Tensor, decays: dict,
                   epochs: int | None = None) -> dict:
    """{key: k-fold cross-validated accuracy} of the cells `decays` ({key: weight decay}), with the
    sweep's folds, seed and probe precision."""
    return cross_validated_accuracy({k: train_feats[k] for k in decays}, train_y, decays, folds=cfg.folds,
                                    epochs=cfg.epochs if epochs is None else epochs, seed=cfg.seed,
                                    precision=cfg.probe_precision)


def cross_validated_choice(cfg: SweepConfig, cells: dict[str | None, list[dict]], train_feats: dict,
                           train_y: torch.Tensor) -> dict[str | None, tuple[dict, list[dict]]]:
    """For each source's cells ({None: the model's, RANDOM: the random-weight network's}) the chosen
    cell: of the `cfg.shortlist` cells best on the held-out eighth, the one with the best k-fold
    cross-validated accuracy over the whole train split. The eighth (500 MNIST digits) leaves the top
    cells one or two images apart, and on the bundled split it happened to score about 1.5 points above
    cross-validation for the same cells; 4,000 scored digits rank them far more surely. The folds
    include digits the generative model was pre-trained on (without labels, as in any linear
    evaluation); the test split plays no part. Every source's shortlist trains in the same pass per
    fold (a cell's probe does not depend on the cells beside it). Returns {source: (chosen cell,
    shortlist with cv_accuracy)}."""
    check_cross_validation(cfg, len(train_y))
    lists = " and ".join(f"{len(_short(cfg, c))} of the {SOURCES[source]}" for source, c in cells.items())
    print(f"cross-validating the best cells on validation, {lists} ({cfg.folds} folds over all {len(train_y)} "
          "train images, in one pass per fold)")
    cv = cross_validate(cfg, train_feats, train_y, shortlisted(cfg, cells))
    result = {}
    for source, chosen in cells.items():
        ranked = [{**c, "cv_accuracy": cv[_key(source, c)]} for c in _short(cfg, chosen)]
        result[source] = max(ranked, key=lambda c: c["cv_accuracy"]), ranked
    return result


def _cache_meta(cfg: SweepConfig, split: str) -> dict:
    keep = ("model", "data", "ts", "blocks", "pools", "ensemble", "seed", "precision")
    return {**{k: v for k, v in asdict(cfg).items() if k in keep}, "split": split}


def _best(cells: list[dict]) -> dict:
    """The cell with the best validation accuracy (held-out part of the train split), ties to the first."""
    return max(cells, key=lambda c: c["val_accuracy"])


def _in_config_order(cfg: SweepConfig, cells: list[dict]) -> list[dict]:
    """Cells in the order of cfg's t, block and pool lists, whatever order the features came in (a
    cache reads them back sorted by key): ties between cells are then broken the same way every run."""
    def position(values, v):
        return values.index(v) if values and v in values else len(values or [])
    return sorted(cells, key=lambda c: (position(cfg.ts, c["t"]), position(cfg.blocks, c["block"]),
                                        position(cfg.pools, c["pool"])))


def summarise(cfg: SweepConfig, scores: dict, n_train: int, n_test: int) -> dict:
    cells = _in_config_order(cfg, [{**k.as_json(), **v} for k, v in scores.items() if isinstance(k, Cell)])
    result = {"n_train": n_train, "n_test": n_test,
              "ts": cfg.ts, "blocks": cfg.blocks, "pools": cfg.pools,
              "selection": ("each probe's weight decay chosen on a held-out eighth of the train split; the best cell "
                            f"by {cfg.folds}-fold cross-validation over the whole train split among the "
                            f"{cfg.shortlist} best on that eighth" if cfg.shortlist > 0 else
                            "best cell and each probe's weight decay chosen on a held-out eighth of the train split"),
              "cells": cells, "best": _best(cells),
              "best_test_cell": max(cells, key=lambda c: c["accuracy"])}
    if cfg.baselines:
        rand = _in_config_order(cfg, [{**k[1].as_json(), **v} for k, v in scores.items() if isinstance(k, tuple)])
        result["baselines"] = {"pixels": scores[PIXELS]["accuracy"], "random_init": _best(rand)["accuracy"],
                               "random_init_best": _best(rand), "random_cells": rand}
    return result


def best_pool_grid(result: dict) -> torch.Tensor:
    """t × block test accuracy, at each (t, block)'s pool size with the best validation accuracy; the
    chosen cell's (t, block) shows the chosen cell itself."""
    grid = torch.zeros(len(result["ts"]), len(result["blocks"]))
    best = result["best"]
    for i, t in enumerate(result["ts"]):
        for j, b in enumerate(result["blocks"]):
            chosen = (t, b) == (best["t"], best["block"])
            grid[i, j] = best["accuracy"] if chosen else \
                _best([c for c in result["cells"] if c["t"] == t and c["block"] == b])["accuracy"]
    return grid


def format_table(result: dict) -> str:
    lines = ["test accuracy (%) per t × block, at the pool size chosen on validation (the chosen cell's own there)",
             *grid_rows(100 * best_pool_grid(result).double(), result["ts"], result["blocks"], min_width=10)]
    best = result["best"]
    how = f"{100 * best['cv_accuracy']:.2f}% cross-validated" if "cv_accuracy" in best else \
        f"{100 * best['val_accuracy']:.2f}% validation"
    lines.append(f"best (chosen on the train split: {how}): t={best['t']} {best['block']} pool={best['pool']}: "
                 f"{100 * best['accuracy']:.2f}% test")
    if "augmented" in best:
        aug = best["augmented"]
        lines.append(f"  its final probe, refit on all {aug['fit_images']} train images + {aug['copies']} distorted copies "
                     f"({Distortion(**aug['distortion'])}): {100 * aug['accuracy']:.2f}% test")
    if "baselines" in result:
        bl = result["baselines"]
        lines.append(f"baselines: raw pixels {100 * bl['pixels']:.2f}%, random-weight network "
                     f"{100 * bl['random_init']:.2f}% (t={bl['random_init_best']['t']} {bl['random_init_best']['block']} "
                     f"pool={bl['random_init_best']['pool']})")
    return "\n".join(lines)


def plot_heatmap(result: dict, path: Path) -> None:
    best = result["best"]
    title = f"linear probe test accuracy (%), {result['model']} on {result['data']}"
    if "baselines" in result:
        bl = result["baselines"]
        title += f"\npixels {100 * bl['pixels']:.1f}%, random weights {100 * bl['random_init']:.1f}%; * = chosen cell"
    if "augmented" in best:
        title += f" ({100 * best['augmented']['accuracy']:.1f}% after the augmented refit)"
    star = (result["ts"].index(best["t"]), result["blocks"].index(best["block"]))
    plot_grid(100 * best_pool_grid(result), result["ts"], result["blocks"], star, title, "accuracy (%)", path)


# ----------------------------------------------------------------------------- command line

def register(commands) -> None:
    """`diffrep sweep`."""
    p = commands.add("sweep", run_sweep_command, help="DDAE: linear probe for every (t, block, pool) cell, with baselines")
    add_options(p, SweepConfig)
    add_options(p, Distortion)
    p.add_argument("--out", required=True, help="run folder: config.json, sweep.json, heatmap.png, cache/")


def run_sweep_command(args) -> None:
    run_sweep(from_args(SweepConfig, args, distortion=from_args(Distortion, args)), args.out)
