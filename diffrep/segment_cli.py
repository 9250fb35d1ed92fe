"""Command-line commands: segment train|predict|eval (DDPM-Seg)."""

from __future__ import annotations

from .cli_args import csv_of, noise_level


def _add_train(seg) -> None:
    from .segment import SegConfig

    d = SegConfig()
    p = seg.add_parser("train", help="train the per-pixel MLP ensemble (and the baselines) on a few labelled images")
    p.add_argument("--model", default=d.model, help="bundled name, local diffusers folder or hub id")
    p.add_argument("--data", default=d.data, help="'scenes' (bundled) or a folder with images/ + masks/")
    p.add_argument("--labelled", type=int, default=d.labelled, help="labelled images to train on (the first N)")
    p.add_argument("--out", required=True, help="run folder: config.json, heads-*.safetensors, train.json, cache/")
    p.add_argument("--blocks", type=csv_of(str), default=None, help="default: mid_block + up blocks but the last")
    p.add_argument("--t", type=csv_of(noise_level), default=None, help="noise levels (default 50,150,250; σ for EDM)")
    p.add_argument("--select", action="store_true",
                   help="choose blocks and t by cross-validation on the labelled images (--blocks/--t: the candidates)")
    p.add_argument("--k", type=int, default=d.k, help="MLPs in the ensemble")
    p.add_argument("--ensemble", type=int, default=d.ensemble, help="noise draws averaged per feature")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fresh-noise", action="store_true", help="one noise per image instead of one shared fixed noise")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--pixels-per-image", type=int, default=d.pixels_per_image)
    p.add_argument("--uniform", action="store_true", help="sample pixels uniformly (default: class-balanced)")
    p.add_argument("--pool-mb", type=float, default=d.pool_mb, help="cap on the in-RAM pool of sampled pixel features")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--extract-batch", type=int, default=d.extract_batch, help="images per denoiser forward")
    p.add_argument("--no-baselines", action="store_true", help="skip raw pixels, random weights, single MLP")
    p.add_argument("--colour-copies", type=int, default=d.colour_copies,
                   help="add N (≤5) copies of each labelled image with permuted RGB channels, so no colour marks a class")
    p.add_argument("--held-out-images", type=int, default=d.held_out_images,
                   help="stop early on the last N labelled images (not trained on) instead of a tenth of every image's pixels")


def cmd_train(args) -> None:
    from .segment import SegConfig, train_segmenter

    if args.labelled < 1:
        from .errors import DiffrepError

        raise DiffrepError(f"--labelled must be at least 1, got {args.labelled}")
    cfg = SegConfig(model=args.model, data=args.data, labelled=args.labelled, blocks=args.blocks, ts=args.t,
                    k=args.k, ensemble=args.ensemble, seed=args.seed, shared_noise=not args.fresh_noise, bf16=args.bf16,
                    pixels_per_image=args.pixels_per_image, balanced=not args.uniform, pool_mb=args.pool_mb,
                    batch_size=args.batch_size, lr=args.lr, max_epochs=args.max_epochs, patience=args.patience,
                    extract_batch=args.extract_batch, select=args.select, baselines=not args.no_baselines,
                    colour_copies=args.colour_copies, held_out_images=args.held_out_images)
    train_segmenter(cfg, args.out)


def _add_predict(seg) -> None:
    p = seg.add_parser("predict", help="label PNGs, overlays and uncertainty maps for image files")
    p.add_argument("--run", required=True, help="a `diffrep segment train` run folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="folder for <stem>-labels.png, -overlay.png, -uncertainty.png")


def cmd_predict(args) -> None:
    from .segment import predict_files

    predict_files(args.run, args.images, args.out)


def _add_eval(seg) -> None:
    p = seg.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy of a run and its baselines")
    p.add_argument("--run", required=True)
    p.add_argument("--data", default="scenes", help="'scenes' (its test split) or a folder with images/ + masks/")
    p.add_argument("--n", type=int, default=None, help="test images (default: all; scenes: 200)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="scenes only: 'val' scores on validation scenes (train split, never labelled) to choose settings")
    p.add_argument("--out", default=None, help="folder for eval.json and pictures (default: the run folder)")
    p.add_argument("--pictures", type=int, default=6, help="test images shown in examples.png")
    p.add_argument("--no-baselines", action="store_true")


def cmd_eval(args) -> None:
    from .segment import evaluate

    evaluate(args.run, args.data, args.n, args.out, args.pictures, baselines=not args.no_baselines, split=args.split)


SUBCOMMANDS = {"train": (_add_train, cmd_train), "predict": (_add_predict, cmd_predict), "eval": (_add_eval, cmd_eval)}


def cmd_segment(args) -> None:
    SUBCOMMANDS[args.segment_command][1](args)


def add_commands(sub) -> dict:
    """Add this method's sub-commands to the `diffrep` parser; return {command name: function(args)}."""
    p = sub.add_parser("segment", help="DDPM-Seg: few-label semantic segmentation from pixel features")
    seg = p.add_subparsers(dest="segment_command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(seg)
    return {"segment": cmd_segment}
