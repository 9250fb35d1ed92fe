"""Benchmark: does the text-to-image model follow its prompts well enough to name a mask? The zero-shot
scorer of `diffrep panoptic eval --zero-shot` (denoising error under each category's prompt, averaged
over the mask), applied to the *true* masks of the bundled panoptic scenes, with no training at all.

    python benchmarks/bench_zero_shot.py --out benchmarks/results/zero-shot-scenes-t2i.json
    python benchmarks/bench_zero_shot.py --model runs/scenes-t2i-cont/model --out …

For every segment of the first `--images` scenes of `--split` (val by default): the category whose
prompt denoises the mask's pixels best, among all 16 categories and among those of the segment's own
kind (ten digits, chance 10%; six textures, chance 16.7%), tallied for categories seen in ODISE's
training and for the held-out ones (eight, nine, gravel). This is the only open-vocabulary signal
here, so it bounds what the ensemble can do for unseen categories.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from diffrep.core import load_backbone
from diffrep.data import load_panoptic
from diffrep.runs import header, write_json
from diffrep.segment.odise.evaluate import images_of
from diffrep.segment.odise.model import PanopticConfig
from diffrep.segment.odise.scorer import PROMPT_STYLES, DenoisingScorer
from diffrep.segment.odise.train import split_vocabulary

HELD_OUT = PanopticConfig().held_out   # the categories `panoptic train` leaves out by default


def segment_logits(scorer, items, side: int) -> list:
    """[(category id, B×K zero-shot logits of its true mask)] for every visible segment of the items."""
    errors = scorer.errors(images_of(items, side))                                   # B×K×h×w
    out = []
    for b, it in enumerate(items):
        segs = [(s, c) for s, c in it.segments.items() if (it.segment_ids == s).any()]
        true = torch.stack([(it.segment_ids == s).float() for s, _ in segs])[None]
        masks = torch.where(F.interpolate(true, size=errors.shape[-2:], mode="area") > 0.25, 20.0, -20.0)
        logits = scorer.mask_logits(errors[b:b + 1], masks)[0]                         # S×K
        out += [(c, row) for (_, c), row in zip(segs, logits)]
    return out


def tally(pairs, vocab, unseen: set) -> dict:
    """Top-1 accuracy over all categories and within the segment's kind, per kind × seen/unseen."""
    thing = torch.tensor([c.isthing for c in vocab.categories])
    counts = defaultdict(lambda: [0, 0, 0])                                            # n, right, right in kind
    for cid, row in pairs:
        k = vocab.index_of(cid)
        same_kind = torch.where(thing == thing[k], row, torch.tensor(-float("inf")))
        key = f"{'things' if thing[k] else 'stuff'}-{'unseen' if cid in unseen else 'seen'}"
        for name in (key, "all"):
            counts[name][0] += 1
            counts[name][1] += int(row.argmax() == k)
            counts[name][2] += int(same_kind.argmax() == k)
    return {name: {"segments": n, "top1_all": right / n, "top1_in_kind": kind / n}
            for name, (n, right, kind) in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="scenes-t2i")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--relative", action="store_true",
                        help="score each prompt's error under the mask relative to its error over the whole image")
    parser.add_argument("--prompts", default="photo", choices=PROMPT_STYLES,
                        help="'a photo of {name}.' or the training captions' phrase ('an eight', 'grass')")
    parser.add_argument("--out", default="runs/bench-zero-shot.json")
    args = parser.parse_args()
    start = time.perf_counter()
    backbone = load_backbone(args.model)
    data = load_panoptic("panoptic-scenes", args.split)
    vocab, train_vocab = split_vocabulary(data.categories, HELD_OUT, str(data.json_path))
    unseen = set(vocab.ids) - set(train_vocab.ids)
    scorer = DenoisingScorer(backbone, vocab, relative=args.relative, prompts=args.prompts)
    pairs = []
    n = min(args.images, len(data))
    for first in range(0, n, args.batch):
        pairs += segment_logits(scorer, [data[i] for i in range(first, min(n, first + args.batch))],
                                backbone.image_size)
        print(f"{min(n, first + args.batch)}/{n} scenes, {len(pairs)} segments", flush=True)
    scores = tally(pairs, vocab, unseen)
    confusion = defaultdict(lambda: defaultdict(int))   # true name → predicted name → segments
    for cid, row in pairs:
        confusion[vocab.categories[vocab.index_of(cid)].name][vocab.categories[int(row.argmax())].name] += 1
    for name, s in scores.items():
        print(f"{name:14s} {s['segments']:5d} segments  top-1 {100 * s['top1_all']:5.1f}%  "
              f"within kind {100 * s['top1_in_kind']:5.1f}%")
    timing = {"total": round(time.perf_counter() - start, 1)}
    write_json(Path(args.out), {**header("bench-zero-shot", args.model, "panoptic-scenes", timing),
                                "split": args.split, "images": n, "relative": args.relative, "prompts": args.prompts,
                                "held_out": HELD_OUT,
                                "chance_in_kind": {"things": 0.1, "stuff": 1 / 6}, "scores": scores,
                                "confusion": {k: dict(v) for k, v in confusion.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
