"""The `diffrep` command. Each method registers its own sub-commands (`register(commands)` in its
module); this file holds the commands of the shared stages (info, features) and the dispatch.

Every command's flags come from its config dataclass (`diffrep.options`), so each default is
stated once; a `DiffrepError` is printed as one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .classify import ddae, gdc
from .core import PRECISIONS, Featurizer, ModelOptions, RunOn, load_backbone, processes
from .convert import cli as convert_cli
from .correspond.dift import cli as dift_cli
from .data import fit_images, load
from .errors import DiffrepError
from .features import DiffusionFeatures, bytes_per_image, default_shard_size, extract_to_store
from .options import MODEL_HELP, Parser, add_options, from_args, noise_level, option
from .pretrain import cli as pretrain_cli
from .runs import header, locked, output_file, peak_rss_mb, write_json, write_results
from .segment.ddpm_seg import cli as ddpm_seg_cli
from .segment.odise import cli as odise_cli

METHODS = (ddae, gdc, ddpm_seg_cli, dift_cli, odise_cli)   # each adds its commands; a new method adds itself here


class Commands:
    """Sub-commands of a parser: `add(name, run, help)` returns the new command's parser."""

    def __init__(self, sub, prefix: str = ""):
        self.sub, self.prefix = sub, prefix

    def add(self, name: str, run, help: str):
        p = self.sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=run, command=self.prefix + name)
        return p

    def group(self, name: str, help: str) -> "Commands":
        """A command with sub-commands of its own (`diffrep segment train`)."""
        p = self.sub.add_parser(name, help=help, description=help)
        return Commands(p.add_subparsers(dest=f"{name}_command", required=True, parser_class=Parser), f"{name} ")


# ----------------------------------------------------------------------------- info

def cmd_info(args) -> None:
    if args.json_out:
        output_file(args.json_out, "--json", ".json")
    backbone = load_backbone(args.model, args.device, args.precision, args.preset, args.flags)
    featurizer = Featurizer(backbone)
    refs = featurizer.reference_names()
    info = [b for b in featurizer.feature_info() if b.top_level or not args.top_level or b.name in refs]
    model = backbone.denoiser
    print(f"{args.model}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{'latent (VAE)' if backbone.is_latent else 'pixel'} model, images {backbone.image_channels}×"
          f"{backbone.image_size}×{backbone.image_size}, noise: {backbone.noise.kind}")
    width = max(len(b.name) for b in info)
    ref_width = max([len(r[0]) for r in refs.values()] + [len("guided-diffusion")])
    print(f"{'block'.ljust(width)}  channels  stride" + (f"  {'guided-diffusion'.ljust(ref_width)}  diffssl" if refs else ""))
    for b in info:
        ref, number = refs.get(b.name, ("", ""))
        print(f"{b.name.ljust(width)}  {b.channels:8d}  {b.stride:6d}" + (f"  {ref.ljust(ref_width)}  {number:>7}" if refs else ""))
    if args.json_out:
        write_json(args.json_out, [dict(name=b.name, channels=b.channels, stride=b.stride, top_level=b.top_level,
                                        guided_diffusion=refs.get(b.name, (None, None))[0],
                                        diffssl=refs.get(b.name, (None, None))[1]) for b in info])


def _register_info(commands: Commands) -> None:
    p = commands.add("info", cmd_info, help="list every tappable block of a model: name, channels, stride")
    p.add_argument("--model", default="mnist-ddpm", help="bundled name, local diffusers folder, hub id or a "
                                                          "guided-diffusion .pt (with --preset or --flags)")
    add_options(p, ModelOptions, skip=("class_label",))
    p.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                   help="weights' precision on a GPU (the catalogue's dummy forward runs in it)")
    p.add_argument("--top-level", action="store_true", help="only top-level blocks (down_blocks.i, mid_block, …)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the list to this JSON file")


# ----------------------------------------------------------------------------- features

@dataclass
class FeaturesConfig(RunOn):
    model: str = option("mnist-ddpm", MODEL_HELP)
    data: str = option("mnist", "'mnist', 'scenes', 'photos' or an image folder (class sub-folders give labels)")
    blocks: list | None = option(None, "comma-separated block names (see `diffrep info`)", many=True, required=True)
    ts: list | None = option(None, "comma-separated noise levels (timesteps; σ for EDM)", parse=noise_level, many=True,
                             flag="--t", required=True)
    splits: list = option(["train", "test"], "splits to extract", choices=("train", "val", "test"))
    pool: int | None = option(None, "average-pool each map to P×P (default: keep full maps)", parse=int, min=1)
    ensemble: int = option(1, "noise draws averaged per image", min=1)
    seed: int = option(0, "seed of the noise (image i's draw k at level t comes from seed, i, k, t)")
    shared_noise: bool = option(False, "one noise tensor for all images (drawn once per t)")
    batch_size: int = option(250, "images per forward", min=1)
    workers: int = option(0, "DataLoader processes reading images (0: in the main process)", min=0)
    shard_size: int | None = option(None, "images per shard (default: about 64 MB of features, at most 4,096)",
                                    parse=int, min=1)


STORE_KEYS = ("model", "data", "ts", "blocks", "pool", "ensemble", "seed", "shared_noise", "precision")


def extract_features(cfg: FeaturesConfig, out: str | Path) -> dict:
    """A sharded store per split in `out/<split>/` (shards + manifest.json, see `features.shards`),
    config.json and features.json. Resumable: the same command continues a killed run. Under torchrun
    the shards are split over the processes."""
    state, device = processes(cfg.device)
    main = state is None or state.is_main_process
    with (locked(out) if main else contextlib.nullcontext(Path(out))) as out:
        start = time.time()
        backbone = load_backbone(cfg.model, device, cfg.precision, **cfg.model_options())
        featurizer = Featurizer(backbone)
        source = DiffusionFeatures(featurizer, cfg.blocks, cfg.ts, cfg.ensemble, cfg.seed, cfg.shared_noise, cfg.precision)
        strides = {b.name: b.stride for b in featurizer.feature_info()}
        pools = [cfg.pool] if cfg.pool else None
        shard_size = cfg.shard_size or default_shard_size(bytes_per_image(source, backbone.image_size, strides, pools))
        files, n_images = {}, 0
        for split in cfg.splits:
            data = load(cfg.data, split, channels=backbone.image_channels, size=backbone.image_size)
            images = fit_images(data.images, backbone.image_channels, backbone.image_size, f"{split} images")
            identity = {**{k: getattr(cfg, k) for k in STORE_KEYS}, "ts": source.ts, "blocks": source.blocks,
                        "split": split}
            store = extract_to_store(source, images, out / split, identity, pools, shard_size, cfg.batch_size,
                                     cfg.workers, extra={} if data.labels is None else {"labels": data.labels},
                                     meta={"classes": data.classes}, state=state, desc=f"{split} features")
            files[split] = {"folder": split, "n": store.n, "shards": len(store.manifest["shards"])}
            n_images += store.n
            if main:
                print(f"wrote {out / split} ({store.n} images in {files[split]['shards']} shard(s), "
                      f"{len(source.ts)} t × {len(source.blocks)} blocks)")
        total_s = time.time() - start
        result = {**header("features", cfg.model, cfg.data, {"total": round(total_s, 1)}),
                  "ts": source.ts, "blocks": source.blocks, "pool": cfg.pool, "shard_size": shard_size,
                  "processes": 1 if state is None else state.num_processes, "splits": files,
                  "images_per_s": round(n_images / total_s, 2), "peak_rss_mb": peak_rss_mb()}
        if main:
            write_results(out, "features", result, cfg)
        return result


def _register_features(commands: Commands) -> None:
    p = commands.add("features", lambda args: extract_features(from_args(FeaturesConfig, args), args.out),
                     help="extract features at (t, blocks) and write them as safetensors")
    add_options(p, FeaturesConfig)
    p.add_argument("--out", required=True, help="folder for <split>/ (shards, manifest.json), features.json, config.json")


# ----------------------------------------------------------------------------- dispatch

def build_parser() -> Parser:
    parser = Parser(prog="diffrep", description="Diffusion models as representation learners")
    commands = Commands(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    _register_info(commands)
    convert_cli.register(commands)
    pretrain_cli.register(commands)
    _register_features(commands)
    for method in METHODS:
        method.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DiffrepError as err:
        print(f"diffrep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
