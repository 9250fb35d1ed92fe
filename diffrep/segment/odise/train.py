"""`diffrep panoptic train`: the mask generator (and captioner, classifier) trained on the train split
with some categories held out; the epoch kept is the best on the val split's PQ over the categories
seen in training (the held-out ones are never used to choose anything).

Held-out categories stay in the training images, unlabelled: their segments are no target, so the
model learns to call them "no object" or to confuse them with a seen category, which is what the
open-vocabulary test measures.
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ...core import load_backbone, resolve_device
from ...data import load_panoptic
from ...errors import DiffrepError
from ...runs import header, locked, write_json
from .cache import cached_pyramid, rows
from .evaluate import PanopticScores, images_of, panoptic_maps, plot_overlays, target_maps
from .features import DiffusionPyramid
from .mask_generator import PanopticLoss
from .scorer import ensemble
from .model import BASELINES, PanopticConfig, PanopticModel, build_source, name_encoder
from .vocab import Vocabulary


def split_vocabulary(categories: list[dict], held_out: list[str], where: str) -> tuple[Vocabulary, Vocabulary]:
    """(the full vocabulary, the training one without the held-out categories, named by any of their names)."""
    full = Vocabulary.from_categories(categories, where)
    by_name = {n.lower(): c.id for c in full.categories for n in c.names}
    unknown = [h for h in held_out if h.lower() not in by_name]
    if unknown:
        raise DiffrepError(f"--held-out {', '.join(unknown)}: no such category in {where} "
                           f"(it has {', '.join(c.name for c in full.categories)})")
    held = {by_name[h.lower()] for h in held_out}
    train = full.subset([i for i in full.ids if i not in held])
    if not len(train):
        raise DiffrepError("--held-out leaves no category to train on")
    return full, train


def targets(items, vocab: Vocabulary, device) -> tuple[list, list]:
    """Per image: the masks (n×H×W float) of its segments whose category is in `vocab`, and their
    indices in it (what Mask2Former's loss matches queries against)."""
    wanted = set(vocab.ids)
    masks, labels = [], []
    for it in items:
        keep = [(sid, cid) for sid, cid in it.segments.items() if cid in wanted and (it.segment_ids == sid).any()]
        h, w = it.segment_ids.shape
        masks.append(torch.stack([(it.segment_ids == s).float() for s, _ in keep]).to(device) if keep
                     else torch.zeros(0, h, w, device=device))
        labels.append(torch.tensor([vocab.index_of(c) for _, c in keep], dtype=torch.long, device=device))
    return masks, labels


def model_side(cfg, backbone, data_side: int) -> int:
    """The side images are fed at: `--image-side`, else the diffusion model's own (pixels: the data's)."""
    if cfg.image_side:
        return cfg.image_side
    return data_side if backbone is None else backbone.image_size


@torch.no_grad()
def score(model, data, vocab: Vocabulary, unseen: set, names, owner, side: int, device, batch: int,
          limit: int = 0, keep: int = 0, scorer=None, weights=(0.3, 0.7),
          features: list | None = None) -> tuple[dict, list, torch.Tensor | None]:
    """PQ etc. of `model` on `data` (its first `limit` items; 0: all) naming with `vocab`; returns the
    first `keep` items and their predictions too (for pictures). `scorer` (a DenoisingScorer of the
    same vocabulary): its zero-shot scores are ensembled in, with weights (α seen, β unseen).
    `features`: the items' cached pyramid levels (else computed from the images)."""
    unseen_mask = torch.tensor([c.id in unseen for c in vocab.categories])
    model.eval()
    scores = PanopticScores(vocab, unseen)
    n = min(limit, len(data)) if limit else len(data)
    kept, kept_preds = [], []
    for start in range(0, n, batch):
        items = [data[i] for i in range(start, min(n, start + batch))]
        images = images_of(items, side).to(device)
        if features is None:
            out = model(images, [it.caption for it in items], names, owner, vocab)
        else:
            out = model.heads(rows(features, range(start, start + len(items)), device), names, owner, vocab)
        if scorer is not None:
            zero_shot = scorer.mask_logits(scorer.errors(images), out["masks"][-1])
            out["logits"][-1] = ensemble(out["logits"][-1], zero_shot, unseen_mask, *weights)
        preds = panoptic_maps(out, vocab, tuple(items[0].segment_ids.shape))
        scores.update(preds, target_maps(items))
        if len(kept) < keep:
            kept += items[:keep - len(kept)]
            kept_preds.append(preds[:keep])
    model.train()
    return scores.compute(), kept, (torch.cat(kept_preds)[:keep] if kept_preds else None)


def run_panoptic_train(cfg: PanopticConfig, out: str | Path) -> dict:
    """`diffrep panoptic train`: train the mask generator (and, with `baselines`, its comparison runs)
    on the panoptic data's train split, keep the epoch with the best val PQ on seen categories, and write
    the run folder `out`. Returns the results."""
    out = Path(out)
    train, val = load_panoptic(cfg.data, "train"), load_panoptic(cfg.data, "val")
    full, train_vocab = split_vocabulary(train.categories, cfg.held_out, str(train.json_path))
    print(f"checking {len(train)} train and {len(val)} val scenes", flush=True)
    train.check_all()
    val.check_all()
    with locked(out):
        summary = _train(cfg, out, train, val, full, train_vocab)
        if cfg.baselines:
            summary["baselines"] = _train_baselines(cfg, out, train, val, full, train_vocab, summary["image_side"])
            write_json(out / "panoptic-train.json", summary)
        return summary


def _train_baselines(cfg: PanopticConfig, out: Path, train, val, full, train_vocab, side: int) -> dict:
    """Each baseline's run in out/baselines/<name>, and its val scores (the main run's beside it);
    `side`: the side the main run fed its images at."""
    table = {}
    for name, change in BASELINES.items():
        if all(getattr(cfg, k) == v for k, v in change.items()):
            continue   # the main run is already this one
        if change.get("source") == "pixels" and not cfg.image_side:
            change = {**change, "image_side": side}   # the image the diffusion model reads, no more
        print(f"baseline {name}: {change}", flush=True)
        variant = dataclasses.replace(cfg, baselines=False, **change)
        table[name] = _train(variant, out / "baselines" / name, train, val, full, train_vocab,
                             cache_root=out / "cache")["val"]["summary"]
    return table


def _cached_maps(source, cfg, conditioning: str, train: tuple, val: tuple, side: int, root: Path) -> tuple[list, list]:
    """The (train, val) scenes' pyramids computed once into the store under `root`, named by what they
    are, so that runs of one `train --baselines` with the same features share them."""
    name = cfg.source if cfg.source == "pixels" else f"{cfg.source}-{conditioning}-{cfg.taps}"
    identity = {"source": cfg.source, "model": str(cfg.model), "conditioning": conditioning, "t": cfg.t,
                "taps": cfg.taps, "seed": cfg.seed, "side": side, "data": str(cfg.data)}
    return tuple(cached_pyramid(source, data, n, side, root / f"{name}-{split}", {**identity, "split": split},
                                cfg.batch_size) for split, (data, n) in (("train", train), ("val", val)))


def _train(cfg, out: Path, train, val, full: Vocabulary, train_vocab: Vocabulary, cache_root: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    backbone = None if cfg.source == "pixels" else load_backbone(cfg.model, device, **cfg.model_options())
    text = name_encoder(backbone, device)
    names, owner = train_vocab.name_table(text)
    full_names, full_owner = full.name_table(text)
    unseen = set(full.ids) - set(train_vocab.ids)
    torch.manual_seed(cfg.seed)
    model = PanopticModel(build_source(cfg, backbone), text.width, cfg, train_vocab).to(device)
    loss_fn = PanopticLoss(model.generator).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    n = min(cfg.train_images, len(train)) if cfg.train_images else len(train)
    steps_per_epoch = -(-n // cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    side = model_side(cfg, backbone, train[0].image.shape[-1])
    n_val = min(cfg.val_images, len(val)) if cfg.val_images else len(val)
    train_maps = val_maps = None
    live_from = cfg.epochs - cfg.captioner_epochs + 1 if model.live and cfg.captioner_epochs else 1
    cached = None
    if not model.live:   # nothing before the generator trains: compute each scene's maps once
        cached = model.source, cfg.conditioning
    elif live_from > 1:  # the captioner's gates are closed until it trains: these epochs read empty-prompt maps
        cached = DiffusionPyramid(model.source.featurizer, "empty", cfg.t, cfg.seed, cfg.taps), "empty"
    if cached is not None:
        source, conditioning = cached
        train_maps, val_maps = _cached_maps(source, cfg, conditioning, (train, n), (val, n_val), side,
                                            cache_root or out / "cache")
    print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {n} scenes ({cfg.source} features, "
          f"{cfg.conditioning} conditioning, {cfg.classifier} classifier; held out: {', '.join(cfg.held_out)})",
          flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, best, started = [], None, time.time()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen).tolist()
        cached = train_maps is not None and (not model.live or epoch < live_from)
        losses = []
        for start in tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False):
            batch = order[start:start + cfg.batch_size]
            losses.append(_step(model, loss_fn, opt, sched, params, train, batch, train_maps if cached else None,
                                names, owner, train_vocab, side, device))
        val_scores, _, _ = score(model, val, full, unseen, full_names, full_owner, side, device, cfg.batch_size,
                                 cfg.val_images, features=val_maps if cached else None)
        seen_pq = val_scores["summary"]["seen"]["pq"]
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "val": val_scores["summary"],
                        "elapsed_s": round(time.time() - started, 1)})
        print(f"epoch {epoch}: loss {history[-1]['loss']:.3f}, val PQ seen {100 * seen_pq:.1f} "
              f"(unseen {_pct(val_scores['summary']['unseen']['pq'])}, all {_pct(val_scores['summary']['all']['pq'])})",
              flush=True)
        if best is None or seen_pq > best[0]:
            best = (seen_pq, epoch, copy.deepcopy(model.trainable()))
    model.load_trainable(best[2])
    model.save(out, train_vocab)
    val_scores, kept, preds = score(model, val, full, unseen, full_names, full_owner, side, device, cfg.batch_size,
                                    cfg.val_images, keep=6, features=None if model.live else val_maps)
    plot_overlays(kept, preds, full, out / "panoptic-val.png")
    summary = {**header("panoptic-train", cfg.model if backbone else "pixels", cfg.data,
                        {"total": round(time.time() - started, 1)}),
               "config": cfg, "train_vocab": train_vocab.as_json(), "held_out": sorted(unseen),
               "image_side": side, "best_epoch": best[1], "val": val_scores, "history": history,
               "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    write_json(out / "panoptic-train.json", summary)
    print(f"kept epoch {best[1]} (val PQ seen {100 * best[0]:.1f}); wrote {out / 'odise.safetensors'}, "
          f"{out / 'panoptic-train.json'}, {out / 'panoptic-val.png'}")
    return summary


def _step(model, loss_fn, opt, sched, params, train, batch: list, train_maps, names, owner, train_vocab,
          side: int, device) -> float:
    """One optimiser step on the scenes `batch`: their pyramid live (a trainable captioner) or read
    from the cache."""
    items = [train[i] for i in batch]
    if train_maps is None:
        result = model(images_of(items, side).to(device), [it.caption for it in items], names, owner)
    else:
        result = model.heads(rows(train_maps, batch, device), names, owner)
    mask_labels, class_labels = targets(items, train_vocab, device)
    total, _ = loss_fn(result["masks"], result["logits"], mask_labels, class_labels)
    weight = model.cfg.generator.true_mask_weight
    if weight:
        classify = lambda e: model.classifier(e, names, owner)  # noqa: E731
        total = total + weight * loss_fn.true_masks(model.generator, classify, result, mask_labels, class_labels)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return total.item()


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"
