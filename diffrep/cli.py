"""The `diffrep` command: info, pretrain, features, sweep; segment (segment_cli.py); match, match-eval,
match-sweep (match_cli.py)."""

from __future__ import annotations

import argparse
import sys

from . import match_cli, segment_cli
from .cli_args import csv_of, noise_level
from .errors import DiffrepError
from .jsonio import write_json


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train a small diffusion model (DDPM or EDM); resumable")
    p.add_argument("--data", default=None, help="'mnist' (train split only; default) or an image folder")
    p.add_argument("--out", required=True, help="run folder: checkpoint, model/, samples.png, pretrain.json")
    p.add_argument("--objective", choices=["ddpm", "edm"], default=None)
    p.add_argument("--arch", choices=["unet", "dit"], default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--channels", type=int, default=None, help="1 (grey) or 3 (RGB); default 1 for mnist, 3 for folders")
    p.add_argument("--widths", type=csv_of(int), default=None, help="UNet block widths, e.g. 32,64,128")
    p.add_argument("--layers-per-block", type=int, default=None)
    p.add_argument("--attention", action="store_true", default=None)
    p.add_argument("--no-mid-attention", dest="mid_attention", action="store_const", const=False, default=None,
                   help="leave out the mid block's self-attention layer (fully convolutional; cheaper)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--shift", type=int, default=None, help="augment: random translation by up to N pixels")
    p.add_argument("--crop", type=int, default=None, metavar="N",
                   help="train on random N×N windows of the --resolution images (fully convolutional UNets: "
                        "--no-mid-attention); the model then runs on whole images")
    p.add_argument("--no-hold-out", dest="hold_out", action="store_const", const=False, default=None,
                   help="train on every train-split image, including the sweep's validation eighth")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of training and save the model; pretrain.json records the "
                        "steps reached, and --steps <that number> repeats the run")


def cmd_pretrain(args) -> None:
    from .pretrain import pretrain

    keys = ["data", "objective", "arch", "resolution", "channels", "widths", "layers_per_block", "attention", "mid_attention",
            "steps", "batch_size", "lr", "ema_decay", "shift", "crop", "hold_out", "checkpoint_every", "precision", "seed"]
    overrides = {k: getattr(args, k) for k in keys}
    if overrides["widths"] is not None:
        overrides["widths"] = tuple(overrides["widths"])
    if overrides["channels"] is None and overrides["data"] not in (None, "mnist") and not args.resume:
        overrides["channels"] = 3
    if args.time_limit is not None and args.time_limit < 0:
        raise DiffrepError(f"--time-limit must be at least 0 minutes, not {args.time_limit}")
    pretrain(args.out, resume=args.resume, overrides=overrides,
             time_limit_s=None if args.time_limit is None else args.time_limit * 60)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="list every tappable block of a model: name, channels, stride")
    p.add_argument("--model", default="mnist-ddpm", help="bundled name, local diffusers folder or hub id")
    p.add_argument("--top-level", action="store_true", help="only top-level blocks (down_blocks.i, mid_block, …)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the list to this JSON file")


def cmd_info(args) -> None:
    from .backbone import load_backbone
    from .featurizer import Featurizer

    backbone = load_backbone(args.model)
    info = [b for b in Featurizer(backbone).feature_info() if b.top_level or not args.top_level]
    model = backbone.denoiser
    print(f"{args.model}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{'latent (VAE)' if backbone.is_latent else 'pixel'} model, images {backbone.image_channels}×"
          f"{backbone.image_size}×{backbone.image_size}, noise: {backbone.noise.kind}")
    width = max(len(b.name) for b in info)
    print(f"{'block'.ljust(width)}  channels  stride")
    for b in info:
        print(f"{b.name.ljust(width)}  {b.channels:8d}  {b.stride:6d}")
    if args.json_out:
        write_json(args.json_out, [dict(name=b.name, channels=b.channels, stride=b.stride, top_level=b.top_level)
                                    for b in info])


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="extract features at (t, blocks) and write them as safetensors")
    p.add_argument("--model", default="mnist-ddpm")
    p.add_argument("--data", default="mnist", help="'mnist' or an image folder (class sub-folders give labels)")
    p.add_argument("--blocks", type=csv_of(str), required=True, help="comma-separated block names (see `diffrep info`)")
    p.add_argument("--t", type=csv_of(noise_level), required=True, help="comma-separated noise levels (timesteps; σ for EDM)")
    p.add_argument("--splits", type=csv_of(str), default=["train", "test"])
    p.add_argument("--pool", type=int, default=None, help="average-pool each map to P×P (default: keep full maps)")
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-noise", action="store_true", help="one noise tensor for all images (DDPM-Seg)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True, help="folder for <split>.safetensors")


def cmd_features(args) -> None:
    from pathlib import Path

    from .backbone import load_backbone
    from .collect import collect_features, fit_images
    from .data import load_split
    from .featstore import save_features
    from .featurizer import Featurizer

    backbone = load_backbone(args.model)
    featurizer = Featurizer(backbone)
    blocks = featurizer.check_blocks(args.blocks)
    ts = [backbone.noise.check(t) for t in args.t]
    for split in args.splits:
        data = load_split(args.data, split, backbone.image_channels, backbone.image_size)
        data.images = fit_images(data.images, backbone.image_channels, backbone.image_size, f"{split} images")
        feats = collect_features(featurizer, data, ts, blocks, [args.pool] if args.pool else None, args.batch_size,
                                 args.ensemble, args.seed, args.shared_noise, args.bf16, desc=f"{split} features")
        if args.pool:  # keep maps 4-D so that readers pool or upsample them the same way
            feats = {k.rsplit("/pool=", 1)[0]: v.view(len(v), -1, args.pool, args.pool) for k, v in feats.items()}
        if data.labels is not None:
            feats["labels"] = data.labels
        meta = {"model": args.model, "data": args.data, "split": split, "ts": ts, "blocks": blocks, "pool": args.pool,
                "ensemble": args.ensemble, "seed": args.seed, "shared_noise": args.shared_noise, "bf16": args.bf16,
                "n": len(data), "classes": data.classes}
        path = save_features(Path(args.out) / f"{split}.safetensors", feats, meta)
        print(f"wrote {path} ({len(data)} images, {len(ts)} t × {len(blocks)} blocks)")


def _add_sweep(sub) -> None:
    from .sweep import SweepConfig

    d = SweepConfig()
    p = sub.add_parser("sweep", help="linear probe for every (t, block, pool) cell, with baselines")
    p.add_argument("--model", default=d.model)
    p.add_argument("--data", default=d.data, help="'mnist' or an image folder with class sub-folders")
    p.add_argument("--t", type=csv_of(noise_level), default=d.ts, help=f"noise levels (default {','.join(map(str, d.ts))})")
    p.add_argument("--blocks", type=csv_of(str), default=None, help="default: every top-level block")
    p.add_argument("--pools", type=csv_of(int), default=d.pools)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--ensemble", type=int, default=d.ensemble)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--features", default=None, help="a `diffrep features` folder to reuse instead of extracting")
    p.add_argument("--augment", type=int, default=d.augment,
                   help=f"refit the chosen cell's probe with N distorted copies of the train images (default {d.augment}; 0: off)")
    dist = d.distortion
    for name, what in (("rotate", "copies' rotation, up to ± degrees (0: none)"),
                       ("scale", "copies' scaling, up to ± this fraction (0: none)"),
                       ("shear", "copies' shear, up to ± this slope (0: none)"),
                       ("shift", "copies' translation, up to ± pixels (0: none)"),
                       ("elastic", "copies' elastic displacement, up to this many pixels (0: none)"),
                       ("smooth", "the elastic field's smoothness, a Gaussian σ in pixels")):
        p.add_argument(f"--{name}", type=float, default=getattr(dist, name),
                       help=f"{what}; default {getattr(dist, name):g}")
    p.add_argument("--shortlist", type=int, default=d.shortlist,
                   help=f"rank the N best cells on validation by cross-validation over the whole train split "
                        f"(default {d.shortlist}; 0: choose on validation alone)")
    p.add_argument("--folds", type=int, default=d.folds, help=f"cross-validation folds (default {d.folds})")
    p.add_argument("--out", required=True)


def cmd_sweep(args) -> None:
    from .data import Distortion
    from .sweep import SweepConfig, run_sweep

    cfg = SweepConfig(model=args.model, data=args.data, ts=args.t, blocks=args.blocks, pools=args.pools,
                      batch_size=args.batch_size, ensemble=args.ensemble, seed=args.seed, bf16=args.bf16,
                      epochs=args.epochs, baselines=not args.no_baselines, features=args.features,
                      augment=args.augment, shortlist=args.shortlist, folds=args.folds,
                      distortion=Distortion(args.rotate, args.scale, args.shear, args.shift, args.elastic, args.smooth))
    run_sweep(cfg, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffrep", description="Diffusion models as representation learners")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_pretrain, _add_features, _add_sweep):
        add(sub)
    for module in (segment_cli, match_cli):  # each method's commands live beside the method
        COMMANDS.update(module.add_commands(sub))
    return parser


COMMANDS = {"info": cmd_info, "pretrain": cmd_pretrain, "features": cmd_features, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except DiffrepError as err:
        print(f"diffrep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
