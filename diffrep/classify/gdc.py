"""GDC: light classification heads on a frozen diffusion model's maps, and DifFormer's fusion of
several blocks and noise levels, as one table: `diffrep classify`.

    images ─► DiffusionFeatures at ts × blocks ─► maps pooled to ≤ 16×16, in the feature store
           ─► each head: its recipe chosen from a small lr × weight-decay grid on validation
              (the train split minus a held-out eighth), its epoch there too (early stopping)
           ─► the chosen recipe trained again under every --seeds; test scored once per head and seed
           ─► mean ± spread, and each comparison called a tie when inside the spreads
    the same heads on raw pixels and on the same network with random weights, in the same run and by
    the same search; on pixels `cnn` is a CNN trained from scratch on the whole image

Single-map heads (linear and MLP at each pool size, CNN, attention) and DifFeed read one cell,
`--head-block` at `--head-t` (default: the first block at the first noise level); `fusion` (DifFormer)
reads every block at every level. The maps are extracted once and shared by every head (only the head
cell's when no fusion head is asked for). `--reference diffssl` sets the cells and DifFeed's pairs of
the published runs on ADM-256 (`reference`).

Decisions:
- Validation is the data set's own val split where it has one (`photo-crops`, folders with val/),
  else a fixed held-out eighth of train. Each head's learning rate, weight decay and epoch are chosen
  there (`heads.recipe`: AdamW, warm-up and cosine decay, label smoothing 0.1, early stopping).
- The pixel baseline reads the image cut into patches on the grid of the head cell's map (mnist-ddpm's
  `mid_block`: 8×8 patches of 4×4 pixels, 16 channels each), so every pooled and attention head reads
  as many positions from pixels as from the network; the CNN on pixels puts the image back together
  and is five convolutions trained from scratch (`heads.classifier.ImageCNN`).
- Seeds vary the heads' initialisation and batch order; the features, the validation split and the
  few-label subsets stay those of `--seed`, so the spread is the training's, not the data's.
- `--labels-per-class k`: every cached head is trained again on k images per class (a seeded subset of
  the fit images, the same for every head and source; with `--augment`, their copies too), with the
  recipe chosen for it on all labels. With so few labels nothing is chosen on validation: every epoch
  runs and the last is scored. An epoch repeats the subset to at least 1,000 rows so that 1 label per
  class still gets enough steps.
- DifFeed (`feedback`) trains live, three forwards per image, so it takes the recipe chosen for the
  attention head on the same cell rather than searching a grid of its own (unless no attention head runs).
- Defaults (linear 4×4, CNN and attention heads, 12 epochs at most, 128-wide tokens, one seed) fit the
  10-minute budget on 2 CPU cores; the reference trains 28 epochs at 1,024 with SGD (`--epochs 28
  --width 1024 --optimizer sgd --patience 0` on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core import Featurizer, RunOn, autocast_dtype, load_backbone, random_init
from ..data import DistortedCopy, Distortion, has_split
from ..errors import DiffrepError
from ..features import Cell, DiffusionFeatures, PixelPatches, as_tensor, maps_in_store
from ..heads.classifier import HEADS, MAX_TOKEN_SIDE, accuracy, make_head, parameter_count, pool_to_token_grid
from ..heads.recipe import GRIDS, OPTIMIZERS, Recipe, grid, search_and_repeat, train
from ..options import MODEL_HELP, add_options, from_args, named, noise_level, option
from ..runs import header, in_run_folder, write_json, write_results
from .ddae import labelled_splits
from .diffeed import check_model, train_feedback_row
from .difformer import fusion_layout, fusion_spec
from .reference import REFERENCES, apply_reference, check_numbering, resolved
from .rows import Rows, fit_and_validation, fit_rows, labels_subset
from .report import (comparisons, format_comparisons, format_label_efficiency, format_row, format_table,
                     label_efficiency, plot_label_efficiency, plot_table)

DEFAULT_TS = [25, 50, 100]
PIXELS, RANDOM, DIFFUSION = "pixels", "random_weights", "diffusion"


@named("label count (a positive integer or 'all')")
def label_count(text: str):
    return text if text == "all" else int(text)


@named("block pair (decoder:encoder)")
def block_pair(text: str) -> tuple[str, str]:
    decoder, sep, encoder = text.partition(":")
    if not (sep and decoder and encoder):
        raise ValueError(text)
    return decoder, encoder


@dataclass
class ClassifyConfig(RunOn):
    """The settings of `diffrep classify` (GDC, DifFormer, DifFeed): each field is a flag of the
    command, with the same default and range."""
    model: str = option("mnist-ddpm", MODEL_HELP)
    data: str = option("mnist", "'mnist' or an image folder with class sub-folders")
    heads: list = option(["linear", "cnn", "attention"], f"heads to train: {', '.join(HEADS)}",
                         choices=HEADS)
    reference: str | None = option(None, "read what a published reference reads (diffssl: GDC at block 24, t 150; "
                                         "DifFormer 19,24,30 × 90,150,300; DifFeed 38 − b); flags given win",
                                   choices=tuple(REFERENCES))
    blocks: list | None = option(None, "blocks fusion reads (default: the bottleneck and the first two decoder "
                                       "blocks)", many=True)
    ts: list | None = option(None, "noise levels fusion reads (default: " + ",".join(map(str, DEFAULT_TS)) + ")",
                             parse=noise_level, flag="--t", many=True)
    head_block: str | None = option(None, "block the single-map heads and DifFeed read (default: the first of "
                                          "--blocks)")
    head_t: int | float | None = option(None, "noise level they read (default: the first of --t)",
                                        parse=noise_level)
    feedback_pairs: list | None = option(None, "DifFeed: decoder:encoder blocks, each decoder map added to its "
                                               "encoder block (default: every up block to its mirror)",
                                         parse=block_pair, many=True, metavar="DEC:ENC,...")
    pools: list = option([4], "pool sizes p×p of the linear and MLP heads (a map's side: every position)", min=1)
    epochs: int = option(12, "most epochs per head (early stopping on validation may end sooner; the reference: 28)",
                         min=1)
    optimizer: str = option("adamw", "adamw (warm-up, cosine decay) or sgd (the reference: momentum 0.9, ×0.1 each "
                                     "quarter)", choices=OPTIMIZERS)
    lr: list | None = option(None, "learning rates of each head's grid (default by head: " +
                             "; ".join(f"{k} {','.join(map(str, v[0]))}" for k, v in GRIDS.items()) + ")",
                             parse=float, many=True, above=0, metavar="LR,...")
    weight_decay: list | None = option(None, "weight decays of each head's grid (default by head: " +
                                       "; ".join(f"{k} {','.join(map(str, v[1]))}" for k, v in GRIDS.items()) + ")",
                                       parse=float, many=True, min=0, metavar="WD,...")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", min=0, below=1)
    patience: int = option(3, "stop a head after this many epochs without a better val accuracy (0: never)", min=0)
    seeds: list | None = option(None, "train every head once per seed (initialisation and batch order; the features "
                                      "stay fixed) and report mean ± spread (default: --seed)", parse=int, many=True,
                                metavar="S,...")
    width: int = option(128, "token width of the attention and fusion heads (the reference: 1024)", min=8)
    depth: int = option(2, "transformer blocks of the attention and fusion heads", min=1)
    dropout: float = option(0.0, "dropout inside the attention and fusion heads' transformer blocks", min=0, below=1)
    positions: bool = option(True, "attention and fusion heads without learned position embeddings on their tokens "
                                   "(as the reference; chosen on MNIST val: pixels 86.0% without, 90.0% with; random "
                                   "weights 92.0 / 93.6; diffusion 99.6 / 99.6)")
    max_side: int = option(MAX_TOKEN_SIDE, "maps are average-pooled to at most this side before any head "
                                           "(the attention heads' token grid; the reference: 16)", min=1,
                           max=MAX_TOKEN_SIDE)
    batch_size: int = option(250, "images per forward", min=1)
    train_batch: int = option(64, "images per training step", min=1)
    workers: int = option(0, "DataLoader processes reading images (0: in the main process)", min=0)
    seed: int = option(0, "seed of the noise, the validation split, the few-label subsets and the heads")
    baselines: bool = option(True, "skip the raw-pixel and random-weight baselines")
    augment: int = option(0, "also train the cached heads on N randomly distorted copies of the fit images "
                             "(their maps extracted once each, noise seeded apart)", min=0)
    labels_per_class: list | None = option(None, "also train every cached head on k labelled images per class "
                                                 "(e.g. 1,5,10,50,all): the label-efficiency table and plot",
                                           parse=label_count, many=True, metavar="K,...")
    distortion: Distortion = option(Distortion(), cli=False)   # how each copy is distorted (its own flags)

    def recipe(self) -> Recipe:
        """The training settings every head shares; each head's lr and weight decay come from its grid."""
        return Recipe(self.optimizer, epochs=self.epochs, label_smoothing=self.label_smoothing, patience=self.patience)

    def head_seeds(self) -> list[int]:
        return self.seeds or [self.seed]

    def __post_init__(self):
        if isinstance(self.distortion, dict):
            self.distortion = Distortion(**self.distortion)
        super().__post_init__()
        if not self.heads:
            raise DiffrepError("--heads needs at least one of " + ", ".join(HEADS))
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise DiffrepError(f"--seeds lists a seed twice: {','.join(map(str, self.seeds))}")
        for k in self.labels_per_class or []:
            if k != "all" and k < 1:
                raise DiffrepError(f"--labels-per-class takes positive counts or 'all', not {k}")


class MapsAtMostSide:
    """A feature source whose maps are average-pooled to at most `side`×`side`: what every head reads
    (the pooled heads pool further), at a fraction of the bytes of full maps."""

    def __init__(self, source, side: int = MAX_TOKEN_SIDE):
        self.source, self.side = source, side
        self.channels = source.channels
        self.featurizer = getattr(source, "featurizer", None)

    def identity(self) -> dict:
        return {**self.source.identity(), "max_side": self.side}

    def maps(self, images, indices=None) -> dict:
        return {k: pool_to_token_grid(v, self.side) for k, v in self.source.maps(images, indices=indices).items()}


def _store(cfg: ClassifyConfig, source, images, folder: Path, split: str, desc: str, state, copy=None) -> dict:
    """A split's maps through the run's sharded store (resumed or reused), in memory when they fit;
    `copy` (a DistortedCopy) distorts each image as it is read."""
    identity = {"model": cfg.model, "data": cfg.data, "split": split, "source": source.identity(),
                "copy": None if copy is None else {"index": copy.copy, "distortion": asdict(cfg.distortion)}}
    return maps_in_store(source, images, folder, identity, cfg.batch_size, cfg.workers, state, desc, copy)


def _reseeded(source, seed: int):
    """A diffusion source whose noise comes from another seed (each distorted copy its own draws);
    other sources as they are."""
    if not isinstance(source, DiffusionFeatures):
        return source
    return DiffusionFeatures(source.featurizer, source.blocks, source.ts, source.ensemble, seed, source.shared_noise,
                             source.precision, source.weights)


def _head_specs(cfg: ClassifyConfig, cells: list, head) -> list[dict]:
    """The table's rows for one feature source: (name, kind, pool, cells read): fusion `cells`, the
    single-map heads the one cell `head`."""
    first = [head]
    specs = []
    for kind in cfg.heads:
        if kind in ("linear", "mlp"):
            specs += [{"name": f"{kind} {p}×{p}", "kind": kind, "pool": p, "cells": first} for p in cfg.pools]
        elif kind == "feedback":
            continue   # trained live, not from the store: diffeed
        elif kind == "fusion":
            specs.append(fusion_spec(cells))
        else:
            specs.append({"name": kind, "kind": kind, "pool": None, "cells": first})
    return specs


def train_table(cfg: ClassifyConfig, source_name: str, feats: dict, labels: dict, cells: list, classes: int,
                device, dtype, copies: list | None = None, labels_per_class=None, head=None,
                chosen: dict | None = None, pixel_factor: int | None = None, on_row=None) -> list[dict]:
    """Every head of `cfg.heads` on one source's maps (plus the rows of `copies`, the distorted
    copies' maps of the train split): its recipe chosen from its grid on validation, trained once per
    seed, each scored once on test. Fusion reads `cells`, the single-map heads `head` (default: the
    first cell). `labels_per_class` k: fit on k images per class with the recipe `chosen` for the head
    on all labels ({(source, head name): Recipe}) and keep the last epoch (nothing is chosen on
    validation with so few labels). `pixel_factor`: the maps are pixel patches (`cnn` is then the CNN
    from scratch). With all labels, the chosen recipes are written into `chosen`. `on_row(row)` is called
    as each row is finished (a long run saves it at once)."""
    fit, val = fit_and_validation(cfg, feats, labels)
    if labels_per_class is not None:
        fit, val = labels_subset(labels["train"], fit, labels_per_class, cfg.seed), None
    train_rows = fit_rows(feats, labels, copies or [], fit, few=labels_per_class is not None)
    test = Rows(feats["test"], labels["test"], torch.arange(len(labels["test"])))
    steps = -(-len(train_rows.index) // cfg.train_batch)
    rows = []
    for spec in _head_specs(cfg, cells, cells[0] if head is None else head):
        if spec["kind"] == "fusion" and source_name == PIXELS:
            continue   # one map: nothing to fuse
        order, n_blocks, n_levels = fusion_layout(spec["cells"])
        shapes = [tuple(feats["train"][c].shape[1:]) for c in order[:n_blocks]]

        def build(spec=spec, shapes=shapes, n_levels=n_levels):
            return make_head(spec["kind"], shapes, n_levels, classes, spec["pool"] or 1, cfg.width, cfg.depth,
                             pixel_factor, cfg.positions, cfg.dropout)

        def fit_head(model, recipe, seed, label, order=order):
            gen = torch.Generator().manual_seed(seed)
            return train(model, lambda: train_rows.batches(order, cfg.train_batch, gen),
                         None if val is None else (lambda: val.batches(order, 256)), recipe, steps, device,
                         label, dtype)

        desc = f"{source_name} {spec['name']}" + ("" if labels_per_class is None else f" ({labels_per_class}/class)")
        if labels_per_class is None:
            recipes = grid(spec["kind"], cfg.recipe(), cfg.lr, cfg.weight_decay)
        else:
            recipes = [chosen[(source_name, spec["name"])]]
        numbers, recipe = search_and_repeat(
            build, recipes, fit_head, cfg.head_seeds(),
            lambda model, order=order: accuracy(model, test.batches(order, 256), device, dtype), desc)
        if labels_per_class is None and chosen is not None:
            chosen[(source_name, spec["name"])] = recipe
        rows.append({"source": source_name, "head": spec["name"], "kind": spec["kind"], "pool": spec["pool"],
                     "cells": [c.as_json() for c in spec["cells"] if isinstance(c, Cell)],
                     "from_scratch": spec["kind"] == "cnn" and pixel_factor is not None,
                     "labels_per_class": labels_per_class or "all", "n_fit": len(fit), **numbers,
                     "parameters": parameter_count(build())})
        print(format_row(desc, rows[-1]))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def run_classify(cfg: ClassifyConfig, out: str | Path) -> dict | None:
    """The table of heads into run folder `out` (classify.json, classify.png, config.json, cache/).
    Under torchrun every process extracts its shards; the main process trains the heads."""
    return in_run_folder(out, cfg.device, lambda folder, device, state: _classify(cfg, folder, device, state))


def _classify(cfg: ClassifyConfig, out: Path, device, state) -> dict | None:
    start = time.time()
    backbone = load_backbone(cfg.model, device, cfg.precision, **cfg.model_options())
    featurizer = Featurizer(backbone)
    if "feedback" in cfg.heads:
        check_model(backbone)
    reference = apply_reference(cfg)
    check_numbering(reference, featurizer)
    _resolve_reading(cfg, featurizer)
    reference = resolved(reference, cfg)
    names = ("train", "val", "test") if has_split(cfg.data, "val") else ("train", "test")
    splits = labelled_splits(cfg.data, backbone, "classification", names)
    head = Cell(cfg.head_t, cfg.head_block)
    blocks, ts = [head.block], [head.t]
    if "fusion" in cfg.heads:   # one grid holds the fused cells and the single-map heads' cell
        blocks, ts = featurizer.check_blocks(cfg.blocks + blocks), list(dict.fromkeys(cfg.ts + ts))
    labels = {s: d.labels for s, d in splits.items()}
    classes = len(splits["train"].classes)
    sources = {DIFFUSION: DiffusionFeatures(featurizer, blocks, ts, seed=cfg.seed, precision=cfg.precision)}
    if cfg.baselines:
        sources[PIXELS] = None   # PixelPatches on the diffusion maps' grid, known once they are extracted
        sources[RANDOM] = DiffusionFeatures(Featurizer(random_init(backbone, cfg.seed)), blocks, ts,
                                            seed=cfg.seed, precision=cfg.precision, weights="random")
    feats, copies, timing = {}, {}, {}
    for name in sources:
        t0 = time.time()
        if name == PIXELS:
            sources[name] = _pixels_like(feats[DIFFUSION]["train"], head, splits["train"].images,
                                         backbone.image_channels)
        feats[name], copies[name] = _extract_source(cfg, sources[name], splits, out, name, state)
        timing[f"{name}_features"] = round(time.time() - t0, 1)
    if state is not None and not state.is_main_process:
        return None
    dtype = autocast_dtype(cfg.precision, torch.device(device))
    rows, few, chosen = [], [], {}

    def assemble() -> dict:
        result = {**header("gdc", cfg.model, cfg.data, timing), "n_train": len(labels["train"]),
                  "n_val": len(labels["val"]) if "val" in labels else None, "n_test": len(labels["test"]),
                  "classes": splits["train"].classes, "blocks": cfg.blocks, "ts": cfg.ts,
                  "head_cell": head.as_json(), "reference": reference,
                  "pixel_patches": sources[PIXELS].factor if PIXELS in sources else None,
                  "selection": ("each head's recipe (grid) and epoch chosen on the val split" if "val" in labels else
                                "each head's recipe (grid) and epoch chosen on a held-out eighth of the train "
                                "split") + "; test scored once per head and seed; few-label rows reuse the head's recipe",
                  "recipe": cfg.recipe().as_json(), "seeds": cfg.head_seeds(),
                  "augment": {"copies": cfg.augment, "distortion": asdict(cfg.distortion)} if cfg.augment else None,
                  "heads": rows, "comparisons": comparisons(rows)}
        if cfg.labels_per_class:
            result["label_efficiency"] = label_efficiency(few, rows)
        return result

    done = []

    def save_partial() -> None:
        # beside (not over) any finished classify.json: a long run stopped half-way keeps what it trained
        write_json(out / "classify.partial.json", {**assemble(), "sources_done": done})

    def keep(row: dict, into: list) -> None:
        into.append(row)
        save_partial()   # every finished row at once

    for name in sources:
        t0 = time.time()
        cells = [Cell(t, b) for t in cfg.ts for b in cfg.blocks] if name != PIXELS else [PIXELS]
        first = head if name != PIXELS else PIXELS
        factor = sources[PIXELS].factor if name == PIXELS else None
        train_table(cfg, name, feats[name], labels, cells, classes, device, dtype, copies[name], head=first,
                    chosen=chosen, pixel_factor=factor, on_row=lambda row: keep(row, rows))
        if "feedback" in cfg.heads and name == DIFFUSION:
            keep(train_feedback_row(cfg, name, backbone, splits, classes, device, dtype,
                                    chosen.get((name, "attention"))), rows)
        for k in [k for k in cfg.labels_per_class or [] if k != "all"]:
            train_table(cfg, name, feats[name], labels, cells, classes, device, dtype, copies[name], k, first,
                        chosen, factor, on_row=lambda row: keep(row, few))
        timing[f"{name}_heads"] = round(time.time() - t0, 1)
        done.append(name)
        save_partial()
    timing["total"] = round(time.time() - start, 1)
    result = assemble()
    write_results(out, "classify", result, cfg)
    (out / "classify.partial.json").unlink(missing_ok=True)
    plot_table(result, out / "classify.png")
    print(format_table(result))
    print(format_comparisons(result))
    written = [out / "classify.json", out / "classify.png"]
    if cfg.labels_per_class:
        plot_label_efficiency(result, out / "classify-labels.png")
        print(format_label_efficiency(result))
        written.append(out / "classify-labels.png")
    print(f"wrote {', '.join(str(p) for p in written)} ({timing['total']:.0f} s)")
    return result


def _resolve_reading(cfg: ClassifyConfig, featurizer: Featurizer) -> None:
    """What the run reads, in place, as module paths and checked levels (`check_blocks` also takes
    guided-diffusion's names and diffssl's numbers): fusion's blocks and levels, the single-map heads'
    cell (default: fusion's first block and first level) and DifFeed's pairs (None: the mirror rule)."""
    noise = featurizer.backbone.noise
    cfg.blocks = featurizer.check_blocks(cfg.blocks or featurizer.default_blocks("fusion"))
    cfg.ts = [noise.check(t) for t in cfg.ts or DEFAULT_TS]
    cfg.head_block = featurizer.check_blocks([cfg.head_block])[0] if cfg.head_block else cfg.blocks[0]
    cfg.head_t = noise.check(cfg.ts[0] if cfg.head_t is None else cfg.head_t)
    if cfg.feedback_pairs:
        cfg.feedback_pairs = [[featurizer.check_blocks([b])[0] for b in pair] for pair in cfg.feedback_pairs]


def _pixels_like(diffusion_train: dict, cell: Cell, images, image_channels: int) -> PixelPatches:
    """Raw pixels cut into patches on the grid of the diffusion map `cell` (at most 16×16), so the
    pixel heads read as many tokens as the diffusion heads and the CNN head sees the image at full
    resolution, its patches as channels."""
    side = as_tensor(diffusion_train[cell][:1]).shape[-1]
    return PixelPatches(max(1, images.shape[-1] // side), image_channels, name=PIXELS)


def _extract_source(cfg: ClassifyConfig, source, splits: dict, out: Path, name: str, state) -> tuple[dict, list]:
    """One source's maps of every split, and of the `--augment` distorted copies of train."""
    wrapped = MapsAtMostSide(source, cfg.max_side)
    feats = {s: _store(cfg, wrapped, d.images, out / "cache" / f"{s}-{name}", s, f"{s} {name}", state)
             for s, d in splits.items()}
    copies = [_store(cfg, MapsAtMostSide(_reseeded(source, cfg.seed + 1 + c), cfg.max_side), splits["train"].images,
                     out / "cache" / f"train-{name}-copy{c}", "train", f"distorted copy {c + 1} {name}",
                     state, DistortedCopy(cfg.distortion, cfg.seed, c)) for c in range(cfg.augment)]
    return feats, copies


# ----------------------------------------------------------------------------- command line

def register(commands) -> None:
    """`diffrep classify`."""
    p = commands.add("classify", lambda args: run_classify(
        from_args(ClassifyConfig, args, distortion=from_args(Distortion, args)), args.out),
        help="GDC / DifFormer / DifFeed: classification heads on diffusion features, with baselines")
    add_options(p, ClassifyConfig)
    add_options(p, Distortion)
    p.add_argument("--out", required=True, help="run folder: config.json, classify.json, classify.png, cache/")
