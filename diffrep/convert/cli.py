"""`diffrep convert guided-diffusion CHECKPOINT.pt --preset NAME | --flags="<MODEL_FLAGS>" --out FOLDER`."""

from __future__ import annotations

import time

from ..runs import write_json
from .guided_diffusion import PRESETS, RECORD, convert

FLAGS_HELP = ("the checkpoint's MODEL_FLAGS exactly as the reference scripts pass them. The string starts with '--', "
              "so give it with '=' or quoted after the flag: --flags=\"--attention_resolutions 32,16,8 --class_cond False "
              "…\" (a value with spaces is also taken as one: --flags \"--image_size 256 …\")")


def cmd_guided_diffusion(args) -> None:
    start = time.time()
    out = convert(args.checkpoint, args.out, args.preset, args.flags)
    seconds = round(time.time() - start, 1)
    print(f"wrote {out} (unet/, scheduler/, {RECORD}) in {seconds} s; use it as --model {out}")
    write_json(out / "convert.json", {"command": "convert guided-diffusion", "checkpoint": args.checkpoint,
                                      "preset": args.preset, "flags": args.flags, "timing_s": {"total": seconds}})


def register(commands) -> None:
    group = commands.group("convert", help="turn another code base's checkpoint into a diffusers folder")
    presets = "; ".join(f"{name}: {what}" for name, (_, what) in PRESETS.items())
    p = group.add("guided-diffusion", cmd_guided_diffusion,
                  help="an OpenAI guided-diffusion (ADM) .pt checkpoint → a diffusers folder (unet/ as UNet2DModel, "
                       "scheduler/ with ADM's schedule), checked against the flags")
    p.add_argument("checkpoint", help="the .pt file (a guided-diffusion state dict; read with weights_only=True)")
    p.add_argument("--preset", metavar="NAME", help=f"a published model: {presets}")
    p.add_argument("--flags", help=FLAGS_HELP)
    p.add_argument("--out", required=True, help="the new diffusers folder (must not exist or be empty)")
