"""`diffrep pretrain`: its flags from PretrainConfig, all unset by default so that a resumed run
keeps its own settings and refuses changed ones."""

from __future__ import annotations

from ..errors import DiffrepError
from ..options import add_options
from .train import PretrainConfig, pretrain


def cmd_pretrain(args) -> None:
    overrides = {k: v for k, v in vars(args).items() if k in PretrainConfig.__dataclass_fields__}
    if overrides["widths"] is not None:
        overrides["widths"] = tuple(overrides["widths"])
    if overrides["channels"] is None and overrides["data"] not in (None, "mnist") and not args.resume:
        overrides["channels"] = 3
    if args.time_limit is not None and args.time_limit < 0:
        raise DiffrepError(f"--time-limit must be at least 0 minutes, not {args.time_limit}")
    pretrain(args.out, resume=args.resume, overrides=overrides,
             time_limit_s=None if args.time_limit is None else args.time_limit * 60)


def register(commands) -> None:
    p = commands.add("pretrain", cmd_pretrain, help="train a small diffusion model (DDPM or EDM); resumable")
    add_options(p, PretrainConfig, unset=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint, model/, samples.png, pretrain.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of training and save the model; pretrain.json records the "
                        "steps reached, and --steps <that number> repeats the run")
