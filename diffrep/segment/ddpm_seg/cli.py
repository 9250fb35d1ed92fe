"""`diffrep segment train | predict | eval` (DDPM-Seg); flags from SegConfig and EvalConfig. `train`'s
flags are unset by default, so that those given override `--reference`'s settings and the rest keep them."""

from __future__ import annotations

from ...options import add_options, from_args
from .config import SegConfig, with_reference
from .predict import EvalConfig, RunSettings, evaluate, predict_files
from .train import train_segmenter


def train_config(args) -> SegConfig:
    """The flags given, over the settings of --reference when it names a DDPM-Seg data set, over the defaults."""
    given = {k: v for k, v in vars(args).items() if k in SegConfig.__dataclass_fields__ and v is not None}
    return with_reference(given.get("reference"), **given)


def register(commands) -> None:
    seg = commands.group("segment", help="DDPM-Seg: few-label semantic segmentation from pixel features")
    p = seg.add("train", lambda args: train_segmenter(train_config(args), args.out),
                help="train the per-pixel MLP ensemble (and the baselines) on a few labelled images")
    add_options(p, SegConfig, unset=True)
    p.add_argument("--out", required=True,
                   help="run folder: config.json, heads-*.safetensors, segment-train.json, cache/")

    p = seg.add("predict", lambda args: predict_files(args.run, args.images, args.out, from_args(RunSettings, args)),
                help="label PNGs, overlays and uncertainty maps for image files")
    add_options(p, RunSettings)
    p.add_argument("--run", required=True, help="a `diffrep segment train` run folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="folder for <stem>-labels.png, -overlay.png, -uncertainty.png")

    p = seg.add("eval", lambda args: evaluate(args.run, from_args(EvalConfig, args), args.out),
                help="mIoU, per-class IoU and pixel accuracy of a run and its baselines")
    p.add_argument("--run", required=True, help="a `diffrep segment train` run folder")
    add_options(p, EvalConfig)
    p.add_argument("--out", default=None, help="folder for segment-eval.json and pictures (default: the run folder)")
