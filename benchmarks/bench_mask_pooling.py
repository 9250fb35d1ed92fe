"""Benchmark: can a mask's pooled diffusion features name the digit under it? ODISE's mask classifier,
trained alone on the bundled panoptic scenes, with plain mask pooling against grid mask pooling, on
the true masks and (with --run) on the masks a trained `diffrep panoptic train` run predicts.

    python benchmarks/bench_mask_pooling.py --out benchmarks/results/mask-pooling.json [--run runs/pan]
    python benchmarks/bench_mask_pooling.py --grids 3 --source pixels|random|diffusion [--model M] [--t T]

For each seen digit segment of the train and val scenes: the frozen pyramid of the bundled
`scenes-t2i` (t = 0, empty prompt, one fixed noise, images at 32×32), the same fusion, grid mask
pooling, projection, embedding MLP and text classifier as the mask generator's head (`grid` 1: one
average under the mask, as ODISE; 3: a 3×3 grid over the mask's box), trained by cross-entropy
against the names of the training categories, one segment set per step; prints and writes the val
accuracy over the eight seen digits (chance 12.5%) after each epoch. `--run`: the masks are, for each
true digit, the trained run's last-layer mask that overlaps it best (binarised), so the figure says
how much the predicted masks lose. `--source`, `--model` and `--t` change the features the head reads
(raw pixel patches, the random-weight UNet, another diffusion model, another noise level), so the
sources the panoptic baselines use can be compared on naming alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffrep.core import load_backbone
from diffrep.data import load_panoptic
from diffrep.runs import write_json
from diffrep.segment.odise.evaluate import images_of
from diffrep.segment.odise.mask_generator import StrideFusion, TextClassifier, mask_pool
from diffrep.segment.odise.model import SOURCES, PanopticConfig, build_source, load_model, name_encoder
from diffrep.segment.odise.train import split_vocabulary

SIDE, WIDTH, HELD_OUT = 32, 64, PanopticConfig().held_out


def digit_segments(pyramid, generator, split: str, n: int, vocab) -> list:
    """[(maps of one scene, its seen digits' masks as ±20 logits at SIDE, their vocabulary indices)]."""
    data, out = load_panoptic("panoptic-scenes", split), []
    for start in range(0, n, 50):
        items = [data[i] for i in range(start, min(n, start + 50))]
        with torch.no_grad():
            maps = pyramid(images_of(items, SIDE))
            predicted = generator(maps)["masks"][-1] if generator is not None else None
        for b, it in enumerate(items):
            segs = [(s, c) for s, c in it.segments.items() if c in vocab.ids and vocab.categories[vocab.index_of(c)].isthing
                    and (it.segment_ids == s).any()]
            if not segs:
                continue
            true = torch.stack([(it.segment_ids == s).float() for s, _ in segs])[None]
            true = F.interpolate(true, size=(SIDE, SIDE), mode="area")[0] > 0.25
            masks = true
            if predicted is not None:   # the predicted mask that overlaps each true one best
                on = predicted[b] > 0
                iou = (true[:, None] & on[None]).sum((-1, -2)) / (true[:, None] | on[None]).sum((-1, -2)).clamp(min=1)
                masks = on[iou.argmax(1)]
            logits = torch.where(masks, 20.0, -20.0)[None]
            out.append(([m[b:b + 1] for m in maps], logits, torch.tensor([vocab.index_of(c) for _, c in segs])))
    return out


def train_head(train, val, channels, strides, names, owner, grid: int, epochs: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    fusion = StrideFusion(channels, strides, WIDTH)
    pooled = grid ** 2 * WIDTH * len(set(strides))
    proj = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, WIDTH))
    embed = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, names.shape[1]))
    classifier = TextClassifier(names.shape[1])
    params = [p for m in (fusion, proj, embed, classifier) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)

    def logits(maps, masks):
        fused = [F.interpolate(f, size=(SIDE, SIDE), mode="bilinear", align_corners=False) for f in fusion(maps)]
        return classifier(F.normalize(embed(proj(mask_pool(torch.cat(fused, 1), masks, grid))), dim=-1),
                          names, owner)[0, :, :-1]

    accuracy = []
    for epoch in range(epochs):
        for i in torch.randperm(len(train)).tolist():
            maps, masks, labels = train[i]
            loss = F.cross_entropy(logits(maps, masks), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            right = sum(int((logits(m, k).argmax(-1) == y).sum()) for m, k, y in val)
        accuracy.append(right / sum(len(y) for _, _, y in val))
        print(f"  grid {grid}, epoch {epoch + 1}: val accuracy {100 * accuracy[-1]:.1f}%", flush=True)
    return accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/mask-pooling.json")
    ap.add_argument("--run", help="a `diffrep panoptic train` run whose predicted masks replace the true ones")
    ap.add_argument("--grids", default="1,3")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--source", default="diffusion", choices=SOURCES)
    ap.add_argument("--model", default="scenes-t2i")
    ap.add_argument("--t", type=int, default=0)
    args = ap.parse_args()
    started = time.time()
    backbone = load_backbone(args.model, "cpu")
    # the panoptic run's own source builder (empty prompt: the naming here is the features' alone)
    pyramid = build_source(PanopticConfig(model=args.model, source=args.source, conditioning="empty", t=args.t,
                                          device="cpu"), backbone)
    generator = None
    if args.run:
        model = load_model(args.run, "cpu")[0]
        pyramid, generator = model.source, model.generator   # its own features (pixels, random, any conditioning)
    _, vocab = split_vocabulary(load_panoptic("panoptic-scenes", "train").categories, HELD_OUT, "panoptic-scenes")
    names, owner = vocab.name_table(name_encoder(backbone, "cpu"))
    train = digit_segments(pyramid, generator, "train", args.train_images, vocab)
    val = digit_segments(pyramid, generator, "val", 200, vocab)
    print(f"{sum(len(y) for *_, y in train)} train and {sum(len(y) for *_, y in val)} val digit segments "
          f"({'predicted masks of ' + args.run if args.run else 'true masks'})", flush=True)
    table = {f"grid{g}": train_head(train, val, pyramid.channels, pyramid.strides, names, owner, g, args.epochs, args.lr)
             for g in (int(x) for x in args.grids.split(","))}
    write_json(Path(args.out), {"masks": f"predicted ({args.run})" if args.run else "true", "side": SIDE,
                                "source": args.source, "model": args.model, "t": args.t,
                                "held_out": HELD_OUT, "epochs": args.epochs, "val_accuracy": table,
                                "seconds": round(time.time() - started, 1)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
