"""OpenAI guided-diffusion (ADM) checkpoints as diffusers folders.

    checkpoint.pt + the reference's MODEL_FLAGS ──► ADMFlags ──► UNet2DModel config + renamed tensors
                                                            └──► DDPMScheduler (ADM's schedule)

guided-diffusion's `UNetModel` is a list of `input_blocks`, a `middle_block` and a list of
`output_blocks`; each maps onto a module of diffusers' `UNet2DModel` (`module_map`):
- `input_blocks.0` is `conv_in`; then per level, `num_res_blocks` ResBlocks (each with an attention
  layer at the attention resolutions) and a downsampler (a ResBlock with `--resblock_updown`, else a
  strided convolution): `down_blocks.l.resnets.j` / `attentions.j` / `downsamplers.0`;
- `middle_block` (ResBlock, attention, ResBlock) is `mid_block`;
- per level from the bottom, `num_res_blocks + 1` output blocks, the last with an upsampler:
  `up_blocks.L.resnets.i` / `attentions.i` / `upsamplers.0`.
Attention weights are one 1×1 convolution `qkv` of 3·C rows. The default `QKVAttentionLegacy` orders
those rows head by head, [q, k, v] of head 0, then of head 1, …; `--use_new_attention_order` orders
them q of all heads, then k, then v. A three-way split is right only for the latter (or one head).

Checkpoints are read with `torch.load(weights_only=True)`: a file from the internet is never
unpickled into arbitrary objects. Half-precision tensors are stored as float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import pickle
import shlex
import time
import warnings
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

from ..errors import DiffrepError
from ..files import atomic_path, cache_root
from .adm_unet import ADMUNet2DModel

NUM_CLASSES = 1000   # OpenAI's class-conditional models are ImageNet's
RECORD = "guided_diffusion.json"   # what a converted folder was made from

_256 = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True "
        "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True")
_LSUN = _256 + " --dropout 0.1"
_IMAGENET = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --learn_sigma True "
             "--noise_schedule linear --num_channels 256 --num_res_blocks 2 --resblock_updown True "
             "--use_scale_shift_norm True")

# name: (MODEL_FLAGS as the reference scripts pass them, the checkpoint they belong to)
PRESETS = {
    "adm-256-uncond": (_256, "OpenAI's 256x256_diffusion_uncond.pt (GDC, DifFormer, DifFeed, DIFT's ADM variant)"),
    "lsun-bedroom": (_LSUN, "OpenAI's lsun_bedroom.pt (DDPM-Seg's Bedroom-28)"),
    "lsun-cat": (_LSUN, "OpenAI's lsun_cat.pt (DDPM-Seg's Cat-15)"),
    "lsun-horse": (_LSUN, "OpenAI's lsun_horse.pt (DDPM-Seg's Horse-21)"),
    "ddpm-seg-ffhq": (_LSUN, "DDPM-Seg's ffhq.pt (FFHQ-34, CelebA-19)"),
    "imagenet-64": ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
                    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
                    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True "
                    "--use_fp16 True --use_scale_shift_norm True", "OpenAI's 64x64_diffusion.pt"),
    "imagenet-128": (_IMAGENET + " --image_size 128 --num_heads 4 --use_fp16 True", "OpenAI's 128x128_diffusion.pt"),
    "imagenet-256": (_IMAGENET + " --image_size 256 --num_head_channels 64 --use_fp16 True",
                     "OpenAI's 256x256_diffusion.pt"),
    "imagenet-512": (_IMAGENET + " --image_size 512 --num_head_channels 64 --use_fp16 False",
                     "OpenAI's 512x512_diffusion.pt"),
}
"""The published guided-diffusion checkpoints by preset name (`--preset`): each its MODEL_FLAGS, as the
reference scripts pass them, and the checkpoint it belongs to."""


# ----------------------------------------------------------------------------- flags

@dataclasses.dataclass(frozen=True)
class ADMFlags:
    """guided-diffusion's model and diffusion flags, with `model_and_diffusion_defaults()`'s defaults
    (what the reference scripts parse their MODEL_FLAGS against)."""
    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    dropout: float = 0.0
    class_cond: bool = False
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    predict_xstart: bool = False

    @property
    def mults(self) -> tuple[float, ...]:
        if self.channel_mult:
            return tuple(float(m) for m in self.channel_mult.split(","))
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if self.image_size not in defaults:
            raise DiffrepError(f"--image_size {self.image_size} has no default channel_mult in guided-diffusion "
                               f"({', '.join(map(str, defaults))}); give --channel_mult")
        return defaults[self.image_size]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(m * self.num_channels) for m in self.mults)

    def attention_at(self, level: int) -> bool:
        """Whether level `level` (downsampled 2**level times) has attention layers."""
        return 2 ** level in {self.image_size // int(r) for r in self.attention_resolutions.split(",")}

    def heads(self, upsample: bool = False) -> int | None:
        """Fixed heads per attention layer, or None when the head width is fixed instead."""
        if self.num_head_channels != -1:
            return None
        return self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads


# Flags of the reference scripts that change nothing in the network or in its noise levels.
SAMPLING_FLAGS = {"timestep_respacing", "use_kl", "rescale_timesteps", "rescale_learned_sigmas", "model_path",
                  "batch_size", "num_samples", "use_ddim", "clip_denoised", "classifier_scale", "classifier_path",
                  "classifier_depth", "classifier_width", "classifier_pool", "classifier_attention_resolutions",
                  "classifier_use_fp16", "classifier_use_scale_shift_norm", "classifier_resblock_updown"}


def _bool(text: str) -> bool:
    """guided-diffusion's str2bool."""
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(text)


def parse_flags(text: str) -> ADMFlags:
    """The MODEL_FLAGS string exactly as the reference scripts pass it ("--image_size 256 --learn_sigma
    True …"); sampling flags (SAMPLING_FLAGS) are ignored, an unknown flag or a bad value is refused."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for f in dataclasses.fields(ADMFlags):
        parser.add_argument(f"--{f.name}", type=_bool if f.type == "bool" else eval(f.type), default=f.default)
    for name in SAMPLING_FLAGS:
        parser.add_argument(f"--{name}")
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise DiffrepError(f"cannot read --flags {text!r}: {err}") from None
    try:
        known, unknown = parser.parse_known_args(words)
    except (argparse.ArgumentError, ValueError) as err:
        raise DiffrepError(f"bad guided-diffusion flag in --flags: {err}") from None
    if unknown:
        raise DiffrepError(f"unknown guided-diffusion flag(s) in --flags: {' '.join(unknown)}")
    flags = ADMFlags(**{f.name: getattr(known, f.name) for f in dataclasses.fields(ADMFlags)})
    if flags.noise_schedule not in ("linear", "cosine"):
        raise DiffrepError(f"--noise_schedule {flags.noise_schedule}: guided-diffusion knows linear and cosine")
    flags.mults   # refuses an image size without default channel multipliers
    return flags


def flags_of(preset: str | None, flags: str | None) -> tuple[ADMFlags, str]:
    """(parsed flags, the flags string) from a preset name or a flags string (exactly one of them)."""
    if (preset is None) == (flags is None):
        raise DiffrepError("a guided-diffusion checkpoint needs --preset NAME or --flags \"<MODEL_FLAGS>\" (one of them); "
                           f"presets: {', '.join(PRESETS)}")
    if preset is not None:
        if preset not in PRESETS:
            raise DiffrepError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        flags = PRESETS[preset][0]
    return parse_flags(flags), flags


# ----------------------------------------------------------------------------- the diffusers model

def unet_config(f: ADMFlags) -> tuple[type, dict]:
    """The diffusers class and config of the network these flags build."""
    levels = range(len(f.widths))
    attn = [f.attention_at(level) for level in levels]
    plain_down = "ResnetDownsampleBlock2D" if f.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if f.resblock_updown else "UpBlock2D"
    config = dict(
        sample_size=f.image_size, in_channels=3, out_channels=6 if f.learn_sigma else 3,
        block_out_channels=f.widths, layers_per_block=f.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        downsample_type="resnet" if f.resblock_updown else "conv",
        upsample_type="resnet" if f.resblock_updown else "conv",
        resnet_time_scale_shift="scale_shift" if f.use_scale_shift_norm else "default",
        attention_head_dim=f.num_head_channels if f.num_head_channels != -1 else None,
        norm_num_groups=32, attn_norm_num_groups=32, norm_eps=1e-5,   # ADM's GroupNorm32 everywhere
        flip_sin_to_cos=True, freq_shift=0,                            # ADM's [cos, sin] embedding
        time_embedding_dim=4 * f.num_channels, dropout=f.dropout,
        num_class_embeds=NUM_CLASSES if f.class_cond else None)
    extra = {}
    if f.heads() is not None:
        extra.update(attention_heads=f.heads(), attention_heads_upsample=f.heads(upsample=True))
    if f.widths[0] != f.num_channels:
        extra["timestep_channels"] = f.num_channels
    return (ADMUNet2DModel, {**config, **extra}) if extra else (UNet2DModel, config)


def scheduler_for(f: ADMFlags) -> DDPMScheduler:
    """ADM's training schedule: linear betas scaled by 1000/steps (so any step count spans the same
    range), or the cosine schedule, which is diffusers' `squaredcos_cap_v2`."""
    scale = 1000 / f.diffusion_steps
    kind = dict(beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02) if f.noise_schedule == "linear" \
        else dict(beta_schedule="squaredcos_cap_v2")
    return DDPMScheduler(num_train_timesteps=f.diffusion_steps, **kind,
                         variance_type="learned_range" if f.learn_sigma else "fixed_small",
                         prediction_type="sample" if f.predict_xstart else "epsilon", clip_sample=True)


# ----------------------------------------------------------------------------- names and tensors

RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
       "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def module_map(f: ADMFlags) -> list[tuple[str, str, str]]:
    """(guided-diffusion module, diffusers module, kind) for every module with weights, in the order
    guided-diffusion runs them; kind: 'res' (a ResBlock), 'attn' (an AttentionBlock) or 'plain'."""
    pairs = [("time_embed.0", "time_embedding.linear_1", "plain"), ("time_embed.2", "time_embedding.linear_2", "plain")]
    if f.class_cond:
        pairs.append(("label_emb", "class_embedding", "plain"))
    pairs.append(("input_blocks.0.0", "conv_in", "plain"))
    k, last = 1, len(f.widths) - 1
    for level in range(last + 1):
        for j in range(f.num_res_blocks):
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "res"))
            if f.attention_at(level):
                pairs.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attn"))
            k += 1
        if level != last:
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", "res") if f.resblock_updown
                         else (f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
            k += 1
    pairs += [("middle_block.0", "mid_block.resnets.0", "res"), ("middle_block.1", "mid_block.attentions.0", "attn"),
              ("middle_block.2", "mid_block.resnets.1", "res")]
    k = 0
    for up, level in enumerate(reversed(range(last + 1))):
        for i in range(f.num_res_blocks + 1):
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", "res"))
            n = 1
            if f.attention_at(level):
                pairs.append((f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", "attn"))
                n = 2
            if level and i == f.num_res_blocks:
                pairs.append((f"output_blocks.{k}.{n}", f"up_blocks.{up}.upsamplers.0", "res") if f.resblock_updown
                             else (f"output_blocks.{k}.{n}.conv", f"up_blocks.{up}.upsamplers.0.conv", "plain"))
            k += 1
    return pairs + [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain")]


def _split_qkv(weight: torch.Tensor, heads: int, legacy: bool) -> tuple[torch.Tensor, ...]:
    """q, k, v rows of a `qkv` weight (3C×C×1) or bias (3C): legacy order is per head [q k v], the new
    order is [q of all heads, k …, v …]. Each comes back as C×C (or C), heads in diffusers' order."""
    rows = weight.shape[0] // 3
    shaped = weight.reshape(heads, 3, rows // heads, -1) if legacy else weight.reshape(3, heads, rows // heads, -1)
    parts = shaped.unbind(1) if legacy else shaped.unbind(0)
    return tuple(p.reshape(rows, *weight.shape[1:]).squeeze(-1).contiguous() for p in parts)


def _attention_tensors(state: dict, src: str, dst: str, heads: int, legacy: bool) -> dict:
    out = {f"{dst}.group_norm.{p}": state[f"{src}.norm.{p}"] for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        for name, part in zip(("to_q", "to_k", "to_v"), _split_qkv(state[f"{src}.qkv.{p}"], heads, legacy)):
            out[f"{dst}.{name}.{p}"] = part
        out[f"{dst}.to_out.0.{p}"] = state[f"{src}.proj_out.{p}"].squeeze(-1)
    return out


def _heads_of(f: ADMFlags, width: int, upsample: bool) -> int:
    fixed = f.heads(upsample)
    return fixed if fixed is not None else width // f.num_head_channels


def _layer_pairs(src: str, dst: str, kind: str) -> list[tuple[str, str]]:
    """(guided-diffusion layer, diffusers layer) inside a 'res' or 'plain' module pair."""
    return [(".".join(filter(None, (src, old))), ".".join(filter(None, (dst, new))))
            for old, new in (RES if kind == "res" else {"": ""}).items()]


def convert_state_dict(state: dict, f: ADMFlags) -> dict[str, torch.Tensor]:
    """guided-diffusion tensors renamed (and q, k, v split) into `UNet2DModel`'s names, as float32."""
    out = {}
    for src, dst, kind in module_map(f):
        if kind == "attn":
            width = state[f"{src}.norm.weight"].shape[0]
            out.update(_attention_tensors(state, src, dst, _heads_of(f, width, dst.startswith("up_")),
                                          legacy=not f.use_new_attention_order))
            continue
        for old, new in _layer_pairs(src, dst, kind):
            for p in ("weight", "bias"):
                if f"{old}.{p}" in state:
                    out[f"{new}.{p}"] = state[f"{old}.{p}"]
    return {k: v.float().contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- reading and checking

def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A guided-diffusion state dict from a .pt file, loaded with weights_only=True; anything else (a
    truncated file, a pickle of objects, a dict of other keys) is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise DiffrepError(f"checkpoint {path} does not exist")
    try:
        state = _load_tensors(path)
    except pickle.UnpicklingError:
        raise DiffrepError(f"{path} holds pickled Python objects, not only tensors: diffrep reads checkpoints with "
                           "weights_only=True and does not unpickle objects from a file") from None
    except Exception as err:   # torch raises RuntimeError, EOFError … for a damaged file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffrepError(f"cannot read {path} as a PyTorch checkpoint; is it damaged or truncated? ({first[:120]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffrepError(f"{path} is not a state dict (a dict of tensors), so not a guided-diffusion checkpoint")
    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        shown = ", ".join(list(state)[:3])
        raise DiffrepError(f"{path} is not a guided-diffusion UNet state dict: no input_blocks.0.0.weight / out.2.weight "
                           f"(its first keys: {shown or 'none'})")
    return state


def _load_tensors(path: Path):
    """torch.load with weights_only=True, memory-mapped (a 2.2 GB file is not read into RAM twice); files
    in torch's pre-1.6 format cannot be mapped and are read whole. torch's warnings about a file it then
    refuses are silenced: the refusal is reported in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def _shape(shape) -> str:
    return "×".join(map(str, shape)) or "scalar"


def check_against(state: dict, f: ADMFlags, flags_text: str) -> None:
    """Refuse flags that do not match the tensors: name the first tensor whose shape disagrees."""
    cls, config = unet_config(f)
    with torch.device("meta"):
        expected = cls.from_config(config).state_dict()
    wanted = {}
    for src, dst, kind in module_map(f):   # the expected shape of every source tensor, by its own name
        if kind == "attn":
            width = expected[f"{dst}.to_q.weight"].shape[0]
            wanted.update({f"{src}.norm.weight": (width,), f"{src}.qkv.weight": (3 * width, width, 1),
                           f"{src}.proj_out.weight": (width, width, 1)})
            continue
        for old, new in _layer_pairs(src, dst, kind):
            if f"{new}.weight" in expected:
                wanted[f"{old}.weight"] = tuple(expected[f"{new}.weight"].shape)
    for key, shape in wanted.items():
        if key not in state:
            raise DiffrepError(f"the checkpoint does not match the flags: it has no {key} (expected {_shape(shape)} "
                               f"for --flags \"{flags_text}\")")
        if tuple(state[key].shape) != shape:
            raise DiffrepError(f"the checkpoint does not match the flags: {key} is {_shape(state[key].shape)} in the "
                               f"file, {_shape(shape)} for these flags")
    extra = sorted({k.rsplit(".", 1)[0] for k in state} - {k.rsplit(".", 1)[0] for k in wanted})
    if extra:
        raise DiffrepError(f"the checkpoint does not match the flags: it has {extra[0]}, which these flags do not build")


# ----------------------------------------------------------------------------- writing

def convert(checkpoint: str | Path, out: str | Path, preset: str | None = None, flags: str | None = None) -> Path:
    """Write a diffusers folder at `out`: unet/ (safetensors), scheduler/ and guided_diffusion.json (the
    source file, preset and flags). Written under a temporary name and renamed once whole."""
    parsed, text = flags_of(preset, flags)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiffrepError(f"--out {out} already exists and is not empty; choose a new folder")
    state = read_checkpoint(checkpoint)
    check_against(state, parsed, text)
    converted = convert_state_dict(state, parsed)
    cls, config = unet_config(parsed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        (tmp / "unet").mkdir(parents=True)
        with torch.device("meta"):
            cls.from_config(config).save_config(tmp / "unet")
        save_file(converted, tmp / "unet" / "diffusion_pytorch_model.safetensors")
        scheduler_for(parsed).save_pretrained(tmp / "scheduler")
        if cls is UNet2DModel:   # a plain diffusers pipeline folder: DDPMPipeline.from_pretrained reads it
            (tmp / "model_index.json").write_text(json.dumps(
                {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                 "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))
        (tmp / RECORD).write_text(json.dumps(
            {"source": str(Path(checkpoint).resolve()), "preset": preset, "flags": text,
             "parsed": dataclasses.asdict(parsed), "class": cls.__name__,
             "converted": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return out


def cached_folder(checkpoint: str | Path, preset: str | None = None, flags: str | None = None) -> Path:
    """The diffusers folder of a checkpoint, converted on first use and reused after: keyed by the
    file's path, size and modification time and by the flags, so a changed file is converted again."""
    path = Path(checkpoint).resolve()
    parsed, _ = flags_of(preset, flags)
    if not path.is_file():
        raise DiffrepError(f"checkpoint {checkpoint} does not exist")
    stat = path.stat()
    key = json.dumps([str(path), stat.st_size, stat.st_mtime_ns, dataclasses.asdict(parsed)])
    folder = cache_root() / "guided-diffusion" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (folder / RECORD).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two commands started together convert once
        if not (folder / RECORD).is_file():
            print(f"converting {checkpoint} to a diffusers folder (once) in {folder}")
            convert(path, folder, preset, flags)
    return folder
