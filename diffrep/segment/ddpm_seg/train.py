"""DDPM-Seg training: few labelled images, pixel features from an on-disk cache, K per-pixel MLPs.

    labelled images ─► maps at blocks × t (seeded noise) ─► on-disk cache, one file per image
                    ─► pixels sampled per image (class-balanced) ─► K per-pixel MLPs

Memory is bounded by construction: training holds one image's maps plus a pool of sampled pixels
whose size is capped (`pool_mb`); the N×C×H×W stack of the reference implementation never exists.
Baselines are trained in the same run with the same head and protocol: raw-pixel features, the same
network with random weights, and a single MLP instead of the ensemble. `--select` scores each
(block, t) cell by cross-validation over the labelled images and never looks at test data.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ...core import Featurizer, load_backbone, random_init
from ...data import ImageSet, load_seg_data
from ...data.masks import declares_classes
from ...errors import DiffrepError
from ...features import PEAK, DiffusionFeatures, ImageCache, RawPixels, total_channels
from ...features.cell import key_from_json, key_to_json
from ...heads import PixelMLPs, train_heads
from ...runs import atomic_path, header, peak_rss_mb, in_run_folder, write_results
from .config import SegConfig, default_levels
from .pools import PixelPools
from .reference import reference_classes
from .select import select_cells

def _fit(pools: PixelPools, channels: int, n_classes: int, k: int, cfg: SegConfig, desc: str) -> tuple[PixelMLPs, dict]:
    heads = PixelMLPs(channels, n_classes, k, seed=cfg.seed)
    log = train_heads(heads, pools.train, pools.held_out(), cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.patience,
                      cfg.seed, desc)
    return heads, log


def save_heads(heads: PixelMLPs, path: Path, keys: list) -> None:
    """Write the trained pixel MLPs and the cells they read (`keys`) to one safetensors file, atomically."""
    meta = {"k": heads.k, "channels": heads.channels, "n_classes": heads.n_classes, "hidden": list(heads.hidden),
            "keys": [key_to_json(k) for k in keys]}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(tmp), metadata={"meta": json.dumps(meta)})


def load_heads(path: Path) -> tuple[PixelMLPs, list]:
    """The pixel MLPs and their cells from a file `save_heads` wrote; a missing or damaged file is a
    `DiffrepError`."""
    if not path.is_file():
        raise DiffrepError(f"{path} is missing: not a complete `diffrep segment train` run")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
        heads = PixelMLPs(meta["channels"], meta["n_classes"], meta["k"], tuple(meta["hidden"]))
        heads.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DiffrepError(f"heads file {path} is damaged ({type(err).__name__}); run `diffrep segment train` "
                           "again into this folder") from None
    return heads.eval(), [key_from_json(k) for k in meta["keys"]]


def feature_sources(cfg: SegConfig, featurizer: Featurizer, channels: int) -> dict:
    """Each method's feature source (the random-weight network only when baselines are asked)."""
    sources = {"diffusion": DiffusionFeatures(featurizer, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed, cfg.shared_noise,
                                              cfg.precision, noise_per_t=cfg.noise_per_t)}
    if cfg.baselines:
        sources["raw_pixels"] = RawPixels(cfg.neighbourhood, channels)
        rand = Featurizer(random_init(featurizer.backbone, cfg.seed + 1))   # +1: not the init of a seed-0 model
        sources["random_weights"] = DiffusionFeatures(rand, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed,
                                                      cfg.shared_noise, cfg.precision, weights="random",
                                                      noise_per_t=cfg.noise_per_t)
    return sources


def labelled_data(cfg: SegConfig, side: int) -> ImageSet:
    """The labelled images of `cfg.data` (DDPM-Seg's layout resized to the model's `side`); under
    --reference, a folder that declares no classes gets the reference's classes and ignore label."""
    if cfg.reference and not declares_classes(cfg.data):
        classes, ignore = reference_classes(cfg.reference)
        return load_seg_data(cfg.data, "train", cfg.labelled, classes, ignore, side=side)
    return load_seg_data(cfg.data, "train", cfg.labelled, side=side)


def _train_on_source(name: str, source, cache: ImageCache, data: ImageSet, cfg: SegConfig, out: Path) -> dict:
    """Train the source's heads on its cached maps, write heads-<method>.safetensors. The diffusion
    source also trains the single-MLP baseline, on the same cache."""
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


def with_colour_copies(data: ImageSet, copies: int) -> ImageSet:
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
    return ImageSet(images, classes=data.classes, name=data.name, masks=data.masks.repeat(copies + 1, 1, 1),
                    ignore_index=data.ignore_index)


def train_segmenter(cfg: SegConfig, out: str | Path, data: ImageSet | None = None) -> dict | None:
    """Train the ensemble (and the baselines' heads) on `cfg.labelled` images; write the run folder:
    config.json, heads*.safetensors, segment-train.json, cache/. Under torchrun every process
    extracts its share of the maps; the main process trains the heads and returns the result (the
    others None)."""
    return in_run_folder(out, cfg.device, lambda folder, device, state: _train(cfg, folder, data, state, device))


def _train(cfg: SegConfig, out: Path, data: ImageSet | None, state, device) -> dict | None:
    start = time.time()
    backbone = load_backbone(cfg.model, device, cfg.precision, **cfg.model_options())
    data = labelled_data(cfg, backbone.image_size) if data is None else data
    cfg.labelled = cfg.labelled or len(data)
    if len(data) < cfg.labelled:
        raise DiffrepError(f"asked for {cfg.labelled} labelled images but {cfg.data} gives only {len(data)}")
    data = data.subset(slice(0, cfg.labelled))
    featurizer = Featurizer(backbone)
    if cfg.select:   # blocks and ts given are the candidates
        cfg.blocks, cfg.ts, cfg.selection = select_cells(cfg, featurizer, data, out / "cache", state)
    cfg.blocks = featurizer.check_blocks(cfg.blocks or featurizer.default_blocks("segment"))
    cfg.ts = [backbone.noise.check(t) for t in (cfg.ts or default_levels(backbone.noise))]
    data = with_colour_copies(data, cfg.colour_copies)
    sources = feature_sources(cfg, featurizer, data.images.shape[1])
    print(f"DDPM-Seg on {len(data)} labelled images of {data.name}: blocks {cfg.blocks}, t {cfg.ts}, "
          f"{total_channels(sources['diffusion'])} channels per pixel"
          + (f" (the reference's {cfg.reference} settings)" if cfg.reference else ""))
    if data.images.shape[1] != backbone.image_channels:   # the diffusion source converts; raw pixels keep the data's
        print(f"note: the diffusion features see the {data.images.shape[1]}-channel images converted to "
              f"{backbone.image_channels} channel(s) for the model")
    caches, timing = {}, {}
    for name, source in sources.items():   # every map first, so that other processes are not kept waiting
        t0 = time.time()
        caches[name] = ImageCache(out / "cache" / f"train-{name}", source, data.images, cfg.extract_batch,
                                  f"{name} features", state)
        timing[f"{name}_features"] = round(time.time() - t0, 1)
    if state is not None and not state.is_main_process:
        return None   # the main process trains the heads
    heads = {}
    for name, source in sources.items():
        t0 = time.time()
        heads.update(_train_on_source(name, source, caches[name], data, cfg, out))
        timing[name] = round(time.time() - t0, 1)
    timing["total"] = round(time.time() - start, 1)
    result = {**header("ddpm_seg", cfg.model, data.name, timing), "n_labelled": len(data), "heads": heads,
              "reference": cfg.reference,   # the DDPM-Seg data set whose settings were used (None: none)
              "peak_rss_mb": peak_rss_mb(),
              "largest_feature_tensor_mb": {k: round(v / 2**20, 2) for k, v in PEAK.peak.items()},
              "all_in_ram_mb": round(len(data) * total_channels(sources["diffusion"]) * data.masks[0].numel() * 4
                                     / 2**20, 1)}
    write_results(out, "segment-train", result, {**asdict(cfg), "classes": data.classes, "ignore_index": data.ignore_index,
                                                 "image_channels": int(data.images.shape[1]), "data_name": data.name})
    print(f"trained in {timing['total']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
          f"(all pixel features in RAM would take {result['all_in_ram_mb']:.0f} MB); wrote {out}")
    return result
