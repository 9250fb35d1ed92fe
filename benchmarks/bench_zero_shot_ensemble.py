"""Benchmark: choosing the zero-shot ensemble of `diffrep panoptic eval --zero-shot` on validation.
A trained run's mask predictions and the diffusion model's denoising errors are computed once for the
val scenes; then each setting (the scorer's temperature, errors relative to the whole image or not,
α seen / β unseen) is ensembled and scored (PQ all / seen / unseen) from them.

    python benchmarks/bench_zero_shot_ensemble.py --run runs/pan --out benchmarks/results/odise-val-ensemble-sweep.json

Val only: the test split is not read.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from diffrep.data import load_panoptic
from diffrep.runs import header, write_json
from diffrep.segment.odise.evaluate import PanopticScores, images_of, panoptic_maps, target_maps
from diffrep.segment.odise.model import load_model, name_encoder
from diffrep.segment.odise.scorer import PROMPT_STYLES, DenoisingScorer, ensemble
from diffrep.segment.odise.train import model_side, split_vocabulary

TEMPERATURES, RELATIVE = (3.0, 10.0, 20.0, 30.0), (False, True)
WEIGHTS = ((0.3, 0.7), (0.1, 0.7), (0.3, 0.9), (0.1, 0.9), (0.5, 0.9))   # (α seen, β unseen); ODISE: 0.3, 0.7


def outputs(run: str, images: int, batch: int, prompts: str = "photo"):
    """(vocab, unseen ids, scorer, [(items, last-layer logits, last-layer masks, denoising errors)])."""
    model, cfg, train_vocab, backbone = load_model(run, "cpu")
    data = load_panoptic(cfg.data, "val")
    vocab, _ = split_vocabulary(data.categories, cfg.held_out, str(data.json_path))
    unseen = set(vocab.ids) - set(train_vocab.ids)
    names, owner = vocab.name_table(name_encoder(backbone, "cpu"))
    side = model_side(cfg, backbone, data[0].image.shape[-1])
    scorer = DenoisingScorer(backbone, vocab, prompts=prompts)
    model.eval()
    batches, n = [], min(images, len(data))
    for start in range(0, n, batch):
        items = [data[i] for i in range(start, min(n, start + batch))]
        x = images_of(items, side)
        out = model(x, [it.caption for it in items], names, owner, vocab)
        batches.append((items, out["logits"][-1], out["masks"][-1], scorer.errors(x)))
        print(f"{start + len(items)}/{n} val scenes: masks and denoising errors", flush=True)
    return vocab, unseen, scorer, batches


def pq(vocab, unseen: set, batches, mix) -> dict:
    """PQ all / seen / unseen of the batches with each batch's class logits replaced by `mix(batch)`."""
    scores = PanopticScores(vocab, unseen)
    for batch in batches:
        items, _, masks, _ = batch
        scores.update(panoptic_maps({"logits": [mix(batch)], "masks": [masks]}, vocab, tuple(items[0].segment_ids.shape)),
                      target_maps(items))
    return {k: v["pq"] for k, v in scores.compute()["summary"].items() if k in ("all", "seen", "unseen")}


def _line(s: dict) -> str:
    return f"PQ all {100 * s['all']:.1f} seen {100 * s['seen']:.1f} unseen {100 * s['unseen']:.1f}"


def sweep(vocab, unseen: set, scorer, batches) -> list[dict]:
    unseen_mask = torch.tensor([c.id in unseen for c in vocab.categories])
    rows = []
    for temperature, relative, (alpha, beta) in itertools.product(TEMPERATURES, RELATIVE, WEIGHTS):
        scorer.temperature, scorer.relative = temperature, relative
        s = pq(vocab, unseen, batches, lambda b: ensemble(b[1], scorer.mask_logits(b[3], b[2]), unseen_mask, alpha, beta))
        rows.append({"temperature": temperature, "relative": relative, "alpha": alpha, "beta": beta, **s})
        print(f"T {temperature:4.0f} relative {relative!s:5} α {alpha} β {beta}: {_line(s)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/pan")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--prompts", default="photo", choices=PROMPT_STYLES)
    parser.add_argument("--out", default="runs/bench-zero-shot-ensemble.json")
    args = parser.parse_args()
    start = time.perf_counter()
    vocab, unseen, scorer, batches = outputs(args.run, args.images, args.batch, args.prompts)
    alone = pq(vocab, unseen, batches, lambda b: b[1])   # the classifier alone, for reference
    print(f"classifier alone: {_line(alone)}", flush=True)
    rows = sweep(vocab, unseen, scorer, batches)
    timing = {"total": round(time.perf_counter() - start, 1)}
    write_json(Path(args.out), {**header("bench-zero-shot-ensemble", args.run, "panoptic-scenes", timing),
                                "split": "val", "images": sum(len(b[0]) for b in batches), "prompts": args.prompts,
                                "classifier_alone": alone, "settings": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
