"""Generative pre-training (DDAE): train a small diffusers denoiser with the DDPM or EDM objective.

Single process by default; `torchrun --nproc_per_node N -m diffrep.cli pretrain …` runs N ranks through
accelerate (gloo on CPU). Every step draws its batch and noise from generators seeded by (seed, step,
rank), so a resumed run continues exactly where its last checkpoint stood. Checkpoints are one file
written to a temporary name and renamed (atomic), so a SIGKILL loses at most one interval.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
import diffusers
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTTransformer2DModel, EDMEulerScheduler,
                       UNet2DConditionModel, UNet2DModel)
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from ..core.backbone import load_backbone, noise_form, null_class, run_denoiser
from ..core.precision import autocast_dtype, native_bf16, resolve_device, resolve_precision
from ..core.text import PromptCache, load_text_encoder
from ..data import holdout_split, load, load_captioned, pretrain_split, random_crop, random_shift
from ..errors import DiffrepError
from ..features.shards import memory_budget
from ..options import check, option
from ..plotting import pyplot
from ..runs import atomic_path, header, locked, read_json, save_torch, write_json
from .losses import DDPMLoss, EDMLoss

PROMPT_CACHE_BYTES = 2 ** 30   # the captions' token states are kept in memory up to this size
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "device")   # what --resume may change


@dataclass
class PretrainConfig:
    """The settings of `diffrep pretrain`: each field is a flag of the command, with the same default
    and range."""
    data: str = option("mnist", "'mnist' (its train split only), 'scenes', 'photos' or an image folder")
    objective: str = option("ddpm", "'ddpm' (ε-prediction, linear β) or 'edm' (Karras σ, preconditioned)",
                            choices=("ddpm", "edm"))
    arch: str = option("unet", "'unet' (UNet2DModel) or 'dit' (DiTTransformer2DModel on pixels)", choices=("unet", "dit"))
    resolution: int = option(32, "training images are resized to this square size", min=1)
    channels: int = option(1, "image channels: 1 (grey) or 3 (RGB); default 1 for mnist, 3 otherwise", choices=(1, 3))
    widths: tuple = option((32, 64, 64), "UNet block widths, one 2× downsampling between blocks", min=1)
    layers_per_block: int = option(2, "ResNet layers per UNet block", min=1)
    attention: bool = option(False, "attention blocks at the lowest level too (≈2× slower on CPU)")
    mid_attention: bool = option(True, "leave out the mid block's self-attention layer (fully convolutional; cheaper)",
                                 flag="--no-mid-attention")
    steps: int = option(2500, "optimiser steps", min=1)
    batch_size: int = option(128, "global batch, split across ranks", min=1)
    lr: float = option(5e-4, "AdamW learning rate, linear warm-up then constant", above=0)
    warmup: int = option(200, "warm-up steps", min=1, cli=False)
    ema_decay: float = option(0.999, "EMA decay of the weights; the saved model is the EMA", min=0, below=1)
    shift: int = option(0, "augment: random translation by up to N pixels (0: none)", min=0)
    crop: int = option(0, "train on random N×N windows of the --resolution images (fully convolutional UNets: "
                          "--no-mid-attention); the model then runs on whole images", min=0, metavar="N")
    hold_out: bool = option(True, "train on every train-split image, including the sweep's validation eighth",
                            flag="--no-hold-out")
    checkpoint_every: int = option(250, "steps between checkpoints", min=1)
    precision: str = option("auto", "'bf16' or 'fp16' mixed precision (fp16 on GPUs only), 'fp32', or 'auto': "
                                    "bf16 where it has native kernels (CUDA, AVX-512 bf16 or AMX CPUs), else fp32",
                            choices=("auto", "bf16", "fp16", "fp32"))
    device: str = option("auto", "auto (CUDA when present, else the CPU), cpu or cuda; under torchrun each rank "
                                 "takes its own GPU (accelerate)")
    seed: int = option(0, "seed of the initialisation, batches and noise")
    captions: bool = option(False, "text-to-image: a UNet2DConditionModel on the data's captions ('panoptic-scenes' or "
                                   "a COCO-panoptic folder with captions), conditioned on a frozen text encoder")
    text_encoder: str = option("minilm", "with --captions: the frozen text encoder ('minilm': the bundled "
                                         "all-MiniLM-L6-v2, or a folder with text_encoder/ and tokenizer/)")
    init_from: str = option("", "start from the weights of a saved model (a bundled name or a folder this command "
                                "wrote, same architecture): both the weights and their EMA begin there, the optimiser "
                                "and the step count afresh; how a run continues after its checkpoint is gone",
                            metavar="MODEL")
    caption_dropout: float = option(0.1, "with --captions: the fraction of captions replaced by the empty prompt "
                                         "(classifier-free guidance)", min=0, below=1)

    def __post_init__(self):
        self.widths = tuple(self.widths)
        check(self)

    @property
    def sample_size(self) -> int:
        """The side of the images the network is trained on."""
        return self.crop or self.resolution

    def check(self) -> None:
        """What one field's range cannot say: how the fields fit together."""
        if self.crop and not 0 < self.crop <= self.resolution:
            raise DiffrepError(f"crop {self.crop} must lie between 1 and the resolution {self.resolution}")
        if self.crop and (self.arch != "unet" or self.attention or self.mid_attention):
            raise DiffrepError("crop trains on windows for a model that then runs on whole images, which needs a fully "
                               "convolutional UNet: use --arch unet with --no-mid-attention and without --attention")
        if self.captions and (self.arch != "unet" or self.crop):
            raise DiffrepError("--captions trains a text-conditional UNet on whole captioned images: use --arch unet "
                               "and no --crop")
        if self.sample_size % 2 ** (len(self.widths) - 1):
            raise DiffrepError(f"{'crop' if self.crop else 'resolution'} {self.sample_size} is not divisible by "
                               f"{2 ** (len(self.widths) - 1)} ({len(self.widths)} UNet levels)")


CROSS_ATTENTION_MAX_SIDE = 16   # text-to-image UNets cross-attend at the levels this small or smaller (CPU cost)


def build_denoiser(cfg: PretrainConfig, text_width: int | None = None) -> torch.nn.Module:
    """A freshly initialised denoiser for `cfg`: a `UNet2DModel`, a `DiTTransformer2DModel` (`arch="dit"`)
    or, with captions, a `UNet2DConditionModel` cross-attending to text states of width `text_width`."""
    if cfg.captions:
        return _text_to_image_unet(cfg, text_width)
    if cfg.arch == "dit":
        return DiTTransformer2DModel(
            in_channels=cfg.channels, out_channels=cfg.channels, sample_size=cfg.sample_size, patch_size=2,
            num_layers=6, num_attention_heads=4, attention_head_dim=32, num_embeds_ada_norm=1)
    levels = len(cfg.widths)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.sample_size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.widths), down_block_types=tuple(down), up_block_types=tuple(up),
        layers_per_block=cfg.layers_per_block, norm_num_groups=8,
        add_attention=cfg.mid_attention)


def _text_to_image_unet(cfg: PretrainConfig, text_width: int) -> UNet2DConditionModel:
    """Stable Diffusion's layout at small scale: ResNet levels, cross-attention to the prompt's token
    states at the low-resolution levels and in the middle."""
    attend = [cfg.sample_size // 2 ** i <= CROSS_ATTENTION_MAX_SIDE for i in range(len(cfg.widths))]
    attend[-1] = True   # at least the lowest level reads the prompt
    return UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.widths), layers_per_block=cfg.layers_per_block, norm_num_groups=8,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        cross_attention_dim=text_width, attention_head_dim=8)   # diffusers reads this as 8 heads


def build_scheduler(cfg: PretrainConfig):
    """The noise schedule of `cfg.objective`: `EDMEulerScheduler` for EDM, else DDPM's linear β schedule
    (1,000 steps)."""
    return EDMEulerScheduler() if cfg.objective == "edm" else DDPMScheduler(num_train_timesteps=1000)


def _run_config(out: Path, cfg: PretrainConfig, resume: bool, overrides: dict) -> tuple[PretrainConfig, dict | None]:
    """The run's config and last checkpoint: a fresh run refuses to overwrite one; a resumed run keeps
    its saved config (only `steps` and `checkpoint_every` may change)."""
    ckpt, saved = out / "checkpoint.pt", out / "config.json"
    if not resume:
        if ckpt.exists() or (out / "model").exists():
            raise DiffrepError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return cfg, None
    if not ckpt.exists():
        print(f"no checkpoint in {out}; starting a new run")
        return cfg, None
    old = read_json(saved, "the run's config")
    if not isinstance(old, dict) or not isinstance(old.get("widths"), list):
        raise DiffrepError(f"the run's config {saved} is damaged (not a pretrain config); delete the run folder and "
                           "start again")
    old["widths"] = tuple(old["widths"])
    for key, value in overrides.items():
        if key not in RESUMABLE_CHANGES and value is not None and old.get(key, value) != value:
            raise DiffrepError(f"{out} was started with {key}={old.get(key)!r}; cannot change it to {value!r} on resume")
    old.update({k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES and v is not None})
    try:
        state = torch.load(ckpt, weights_only=True)
    except Exception as err:   # torch raises several types for a truncated or foreign file
        raise DiffrepError(f"checkpoint {ckpt} is damaged ({type(err).__name__}); delete it to start the run "
                           "again, or restore it") from None
    try:
        return PretrainConfig(**old), state
    except TypeError as err:
        raise DiffrepError(f"the run's config {saved} is damaged ({err}); delete the run folder and start again") from None


def pretrain(out: str | Path, cfg: PretrainConfig | None = None, resume: bool = False, overrides: dict | None = None,
             time_limit_s: float | None = None) -> dict:
    """Train, checkpoint, and write `out/model` (a diffusers pipeline folder with the EMA weights),
    `out/samples.png` and `out/pretrain.json`. Returns the summary written to pretrain.json.

    `time_limit_s` ends training early, after the first step that passes that many seconds of this
    call's training, and saves the model as if `steps` had been that step: the learning rate is constant
    after warm-up and every batch is seeded by its step, so `--steps <steps reached>` repeats the run.
    The checkpoint keeps the target, so `--resume` carries on towards it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiffrepError(f"--out {out} is a file, not a folder; choose a folder")
    cfg = cfg or PretrainConfig(**{k: v for k, v in (overrides or {}).items() if v is not None})
    cfg, state = _run_config(out, cfg, resume, overrides or {})
    cfg.check()
    captions = None
    if cfg.captions:   # a captioned set has its own val split: nothing to hold out of train
        data, captions = load_captioned(cfg.data, "train", cfg.channels, cfg.resolution)
    else:
        data = load(cfg.data, pretrain_split(cfg.data), channels=cfg.channels, size=cfg.resolution).images
    if cfg.hold_out and not cfg.captions:  # the sweep picks its best cell on these images, so the model must not have seen them
        data = data[holdout_split(len(data))[0]]
    if torch.is_tensor(data) and data.shape[-1] != cfg.resolution:
        data = torch.nn.functional.interpolate(data, size=cfg.resolution, mode="bilinear", antialias=True)
    device = resolve_device(cfg.device)
    cfg.precision = resolve_precision(cfg.precision, device)   # here, so that pretrain.json records what ran
    if cfg.precision == "bf16" and not native_bf16(device):
        print(f"note: bf16 has no native kernels on this {device.type}; it runs emulated, many times slower than fp32")
    autocast_dtype(cfg.precision, device)   # refuses fp16 on the CPU
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no" if cfg.precision == "fp32" else cfg.precision)
    try:
        if not acc.is_main_process:
            return _train(acc, out, cfg, state, data, captions, time_limit_s)
        with locked(out):
            return _train(acc, out, cfg, state, data, captions, time_limit_s)
    finally:  # accelerate keeps its settings process-wide; forget them so that pretrain() can run again here
        AcceleratorState._reset_state()


def _out_of_time(acc, started: float, limit_s: float | None) -> bool:
    """Whether any rank has passed the time limit (all ranks must stop at the same step)."""
    if limit_s is None:
        return False
    late = torch.tensor(float(time.time() - started > limit_s), device=acc.device)
    return acc.reduce(late, "sum").item() > 0


def _train(acc, out: Path, cfg: PretrainConfig, state: dict | None, data, captions: list[str] | None,
           time_limit_s: float | None) -> dict:
    main = acc.is_main_process
    text = load_text_encoder(cfg.text_encoder, acc.device) if cfg.captions else None
    if text is not None:
        prompt_states = PromptCache(text, captions, min(PROMPT_CACHE_BYTES, memory_budget() // 4))
    torch.manual_seed(cfg.seed)
    model, scheduler = build_denoiser(cfg, text and text.width), build_scheduler(cfg)
    noise = noise_form(scheduler)
    loss_fn = EDMLoss(noise) if cfg.objective == "edm" else DDPMLoss(noise)
    cond = null_class(model) if isinstance(model, DiTTransformer2DModel) else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
    start, elapsed, loss_avg = 0, 0.0, None
    if state is None and cfg.init_from:
        _load_initial_weights(model, cfg.init_from)
        ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
    if main:   # written once the model is built, so that a refused --init-from leaves no run behind
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", dataclasses.asdict(cfg))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, elapsed, loss_avg = state["step"], state["elapsed"], state["loss"]
    model, opt = acc.prepare(model, opt)
    ema.to(acc.device)  # the EMA's shadow copy lives where the model does
    local_batch = cfg.batch_size // acc.num_processes
    if main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"pre-training {type(acc.unwrap_model(model)).__name__} ({n_params / 1e6:.2f}M params, {cfg.objective}) "
              f"on {len(data)} images, {acc.num_processes} process(es), steps {start}->{cfg.steps}")
    bar = tqdm(total=cfg.steps, initial=start, disable=not main, desc="pretrain", dynamic_ncols=True)
    t0 = time.time() - elapsed
    started, reached, stopped_early = time.time(), start, False
    model.train()
    for step in range(start, cfg.steps):
        batch_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(data), (local_batch * acc.num_processes,), generator=batch_gen)
        x0 = data[idx[acc.process_index::acc.num_processes]]
        if not torch.is_tensor(x0):   # an image folder: this step's images read from their files
            x0 = x0.stack()
        if cfg.shift:  # on the CPU copy: a per-image crop is many tiny kernels on a GPU
            x0 = random_shift(x0, cfg.shift, batch_gen)
        if cfg.crop:
            x0 = random_crop(x0, cfg.crop, batch_gen)
        x0 = x0.to(acc.device)
        noise_gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 64 + acc.process_index)
        c = None if cond is None else torch.full((len(x0),), cond, device=acc.device)
        if text is not None:   # the step's captions, a few replaced by the empty prompt
            rows = idx[acc.process_index::acc.num_processes]
            dropped = torch.rand(len(rows), generator=batch_gen) < cfg.caption_dropout
            c = prompt_states(["" if d else captions[int(i)] for i, d in zip(rows, dropped)])
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = loss_fn(model, x0, noise_gen, c)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(acc.unwrap_model(model).parameters())
        step_loss = acc.reduce(loss.detach(), "mean").item()
        loss_avg = step_loss if loss_avg is None else 0.98 * loss_avg + 0.02 * step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        reached, stopped_early = step + 1, _out_of_time(acc, started, time_limit_s)
        if reached % cfg.checkpoint_every == 0 or reached == cfg.steps or stopped_early:
            if main:
                save_torch({"model": acc.unwrap_model(model).state_dict(), "optimizer": opt.state_dict(),
                              "ema": ema.state_dict(), "step": reached, "elapsed": time.time() - t0,
                              "loss": loss_avg}, out / "checkpoint.pt")
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps({"step": reached, "loss": loss_avg, "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            acc.wait_for_everyone()
        if stopped_early:
            if main:
                print(f"time limit of {time_limit_s:.0f} s reached at step {reached} of {cfg.steps}")
            break
    bar.close()
    summary = {}
    if main:
        final = acc.unwrap_model(model)
        ema.copy_to(final.parameters())
        final.eval()
        _save_model(final, scheduler, out / "model", text)
        if text is None:
            save_sample_grid(final, scheduler, out / "samples.png", seed=cfg.seed)
        else:
            save_prompt_grid(final, scheduler, text, sample_prompts(cfg.data), out / "samples.png", seed=cfg.seed)
        summary = {**header("pretrain", out / "model", cfg.data, {"total": round(time.time() - t0, 1)}),
                   "steps": reached, "stopped_by_time_limit": stopped_early, "train_images": len(data),
                   "final_loss": loss_avg, "processes": acc.num_processes, "config": dataclasses.asdict(cfg),
                   **({"text_encoder": str(cfg.text_encoder), "captions": len(set(captions))} if text else {})}
        write_json(out / "pretrain.json", summary)
        print(f"saved {out / 'model'} (final loss {loss_avg:.4f}, {summary['timing_s']['total']:.0f} s); "
              f"samples in {out / 'samples.png'}")
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _load_initial_weights(model: torch.nn.Module, spec: str) -> None:
    """`model`'s weights from the denoiser of a saved model (anything `load_backbone` reads: a bundled
    name, a diffusers or run folder, a hub id), refused in one line when it is missing or its
    architecture differs."""
    try:
        weights = load_backbone(spec).denoiser.state_dict()
    except DiffrepError as err:
        raise DiffrepError(f"--init-from {spec}: no diffusers denoiser weights there ({err})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise DiffrepError(f"--init-from {spec}: its architecture differs from this run's ({first}); pass the "
                           "widths, layers and options it was trained with") from None


def _save_model(model, scheduler, folder: Path, text=None) -> None:
    """A diffusers pipeline folder (unet/, scheduler/, model_index.json; text-to-image models also
    text_encoder/ and tokenizer/), written beside and renamed."""
    with atomic_path(folder) as tmp:
        if text is None:
            DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(tmp)
            return
        model.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        text.save(tmp)
        parts = {"unet": ["diffusers", type(model).__name__], "scheduler": ["diffusers", type(scheduler).__name__],
                 "text_encoder": ["transformers", type(text.model).__name__],
                 "tokenizer": ["transformers", type(text.tokenizer).__name__]}
        (tmp / "model_index.json").write_text(json.dumps({"_class_name": "DiffrepTextToImage",
                                                          "_diffusers_version": diffusers.__version__, **parts}, indent=2))


@torch.no_grad()
def sample(model, scheduler, n: int = 64, steps: int = 50, seed: int = 0, prompt_states=None, empty_states=None,
           guidance: float = 3.0) -> torch.Tensor:
    """n samples in [-1, 1] by DDIM (VP models) or EDM Euler (EDM models) in `steps` steps. A
    text-to-image model takes `prompt_states` (n×L×D) and `empty_states` (1×L×D) and is guided
    towards the prompt by classifier-free guidance (ε = ε_∅ + w·(ε_prompt − ε_∅))."""
    sched = (EDMEulerScheduler if isinstance(scheduler, EDMEulerScheduler) else DDIMScheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    device = next(model.parameters()).device
    x = torch.randn(n, cfg.in_channels, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    x = x * sched.init_noise_sigma
    cond = torch.full((n,), null_class(model), device=device) if isinstance(model, DiTTransformer2DModel) else None
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        if prompt_states is None:
            out = run_denoiser(model, x_in, t.expand(n).to(device), cond)
        else:
            states = torch.cat([empty_states.expand(n, -1, -1), prompt_states]).to(device)
            empty, prompted = run_denoiser(model, x_in.repeat(2, 1, 1, 1), t.expand(2 * n).to(device), states).chunk(2)
            out = empty + guidance * (prompted - empty)
        x = sched.step(out, t, x).prev_sample
    return x.clamp(-1, 1)


def save_sample_grid(model, scheduler, path: Path, n: int = 64, seed: int = 0) -> None:
    """Write a square grid of `n` seeded samples of `model` to the PNG `path` (atomically)."""
    x = (sample(model, scheduler, n, seed=seed).float().cpu() + 1) / 2
    rows = int(n ** 0.5)
    c, h, w = x.shape[1:]
    grid = x[: rows * rows].view(rows, rows, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, rows * w, c)
    with atomic_path(path) as tmp:
        pyplot().imsave(tmp, grid.squeeze(-1).numpy(), cmap="gray" if c == 1 else None, format="png")


def sample_prompts(data: str, n: int = 6) -> list[str]:
    """Prompts for the samples picture: the first captions of the data's val split (unseen in
    training), else of its train split."""
    try:
        return load_captioned(data, "val")[1][:n]
    except DiffrepError:
        return load_captioned(data, "train")[1][:n]


def save_prompt_grid(model, scheduler, text, prompts: list[str], path: Path, per_prompt: int = 3, seed: int = 0,
                     guidance: float = 3.0) -> None:
    """One row per prompt: the prompt, then `per_prompt` samples from it."""
    states = text.prompts(prompts).repeat_interleave(per_prompt, 0)
    x = (sample(model, scheduler, len(states), steps=25, seed=seed, prompt_states=states, empty_states=text.prompts([""]),
                guidance=guidance).float().cpu() + 1) / 2
    plt = pyplot()
    fig, axes = plt.subplots(len(prompts), per_prompt, figsize=(1.6 * per_prompt + 3, 1.6 * len(prompts)), squeeze=False)
    for i, prompt in enumerate(prompts):
        for j in range(per_prompt):
            ax = axes[i, j]
            ax.imshow(x[i * per_prompt + j].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[i, 0].set_ylabel(prompt, rotation=0, ha="right", va="center", fontsize=7, wrap=True)
    fig.suptitle(f"samples by prompt (guidance {guidance:g})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
