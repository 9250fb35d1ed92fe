"""Backbones: a diffusers denoiser plus what it takes to feed it an image at noise level t.

A `Backbone` holds the denoiser (`UNet2DModel`, `UNet2DConditionModel` or `DiTTransformer2DModel`),
its noise form (VP/DDPM from the scheduler's ᾱ_t, or EDM's σ), and for latent models the VAE and,
when the folder has one, the text encoder. `load_backbone` takes a bundled name, a local diffusers
folder or a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiTTransformer2DModel,
    EDMEulerScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from huggingface_hub import snapshot_download

from ..convert import ADMUNet2DModel, cached_folder
from ..errors import DiffrepError
from .precision import resolve_device, weight_dtype
from .text import BY_NAME, TextEncoder, load_text_encoder

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
BUNDLED = {name: WEIGHTS_DIR / name for name in ("mnist-ddpm", "scenes-ddpm", "photos-ddpm", "scenes-t2i")}
"""The bundled models by name (`--model mnist-ddpm`, …): their diffusers folders under `diffrep/weights/`."""
DENOISERS = {cls.__name__: cls for cls in (UNet2DModel, ADMUNet2DModel, UNet2DConditionModel, DiTTransformer2DModel)}
CHECKPOINT_SUFFIXES = (".pt", ".pth")   # guided-diffusion checkpoints, converted on first use
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# ----------------------------------------------------------------------------- noise forms

class VPNoise:
    """x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε, with ᾱ from the scheduler; t is an integer timestep."""

    kind = "vp"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.num_steps = len(self.alphas_cumprod)
        self.lightest = 0   # the least noise there is: t = 0

    def check(self, t) -> int:
        if float(t) != int(float(t)) or not 0 <= int(float(t)) < self.num_steps:
            raise DiffrepError(f"t={t} is outside the schedule: use an integer timestep in [0, {self.num_steps - 1}]")
        return int(float(t))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        ab = self.alphas_cumprod[t].to(x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def model_input(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x_t, torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)


class EDMNoise:
    """x_σ = x_0 + σ·ε, fed as c_in(σ)·x_σ with c_noise(σ) = ¼ ln σ (Karras et al. 2022); t is σ."""

    kind = "edm"

    def __init__(self, scheduler: EDMEulerScheduler):
        self.scheduler = scheduler
        self.sigma_min, self.sigma_max = scheduler.config.sigma_min, scheduler.config.sigma_max
        self.lightest = self.sigma_min

    def check(self, t) -> float:
        sigma = float(t)
        if not self.sigma_min <= sigma <= self.sigma_max:
            raise DiffrepError(f"σ={t} is outside the schedule: use σ in [{self.sigma_min}, {self.sigma_max}]")
        return sigma

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
        return x0 + sigma * eps

    def model_input(self, x_t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.full((len(x_t),), sigma, device=x_t.device, dtype=torch.float32)
        return self.scheduler.precondition_inputs(x_t, s.view(-1, 1, 1, 1)), self.scheduler.precondition_noise(s)


def noise_form(scheduler):
    """The noise form of a diffusers scheduler: `EDMNoise` for `EDMEulerScheduler`, else `VPNoise`."""
    return EDMNoise(scheduler) if isinstance(scheduler, EDMEulerScheduler) else VPNoise(scheduler)


def run_denoiser(model: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, cond=None) -> torch.Tensor:
    """One denoiser call, whatever its class: conditional UNets take `encoder_hidden_states`, DiT and
    class-conditional pixel UNets take `class_labels`; `cond` is that extra input (None for plain UNets)."""
    if isinstance(model, UNet2DConditionModel):
        return model(x, timestep, encoder_hidden_states=cond).sample
    if isinstance(model, DiTTransformer2DModel):
        return model(x, timestep=timestep, class_labels=cond).sample
    if cond is not None:
        return model(x, timestep, class_labels=cond).sample
    return model(x, timestep).sample


def is_class_conditional(model: torch.nn.Module) -> bool:
    """A pixel UNet with a class embedding (guided-diffusion's ImageNet models): it needs a label."""
    return isinstance(model, UNet2DModel) and getattr(model, "class_embedding", None) is not None


def null_class(model: DiTTransformer2DModel) -> int:
    """DiT's unconditional ("null") label is the last row of its label table: index num_classes."""
    return model.config.num_embeds_ada_norm


# ----------------------------------------------------------------------------- backbone

@dataclass
class Backbone:
    """A loaded diffusion model: the denoiser, its noise form (VP or EDM), and for latent models the
    VAE, for conditional ones the text encoder and tokenizer. `load_backbone` makes one."""
    denoiser: torch.nn.Module
    noise: VPNoise | EDMNoise
    vae: AutoencoderKL | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None
    source: str = ""
    class_label: int = 0   # what a class-conditional pixel UNet is fed for every image
    _empty_prompt: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def image_channels(self) -> int:
        """Channels of the images a user passes (RGB for latent models, the denoiser's own otherwise)."""
        return self.vae.config.in_channels if self.is_latent else self.denoiser.config.in_channels

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.is_latent else 1

    @property
    def image_size(self) -> int:
        size = self.denoiser.config.sample_size
        return (size[0] if isinstance(size, (list, tuple)) else size) * self.vae_factor

    def to(self, device, dtype: torch.dtype = torch.float32) -> "Backbone":
        """Every module onto `device` with weights in `dtype`; convolutional ones (UNets, the VAE) in
        channels-last layout, which oneDNN and cuDNN run faster (15–20% on the bundled UNet on the CPU;
        the features agree to 1e-4)."""
        for m in (self.denoiser, self.vae, self.text_encoder):
            if m is not None:
                m.to(device)
                if m.dtype != dtype:   # diffusers warns of modules to keep in fp32; these models list none
                    level = diffusers.utils.logging.get_verbosity()
                    diffusers.utils.logging.set_verbosity_error()
                    m.to(dtype)
                    diffusers.utils.logging.set_verbosity(level)
                if not isinstance(m, DiTTransformer2DModel) and m is not self.text_encoder and \
                        not _too_big_to_relayout(m, device):
                    m.to(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the denoiser's input space: VAE latent mean × scaling factor, or identity."""
        if not self.is_latent:
            return images
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean
        return (latents * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def condition(self, batch: int, prompt: str | None = None):
        """The extra denoiser input for `batch` images: a prompt embedding (conditional UNets; the empty
        prompt by default, zeros when the folder has no text encoder), DiT's null class, `class_label`
        for a class-conditional pixel UNet (ADM's ImageNet models have no null class; the label is a
        setting, `--class-label`, 0 by default), or None."""
        if isinstance(self.denoiser, DiTTransformer2DModel):
            return torch.full((batch,), null_class(self.denoiser), dtype=torch.long, device=self.device)
        if is_class_conditional(self.denoiser):
            return torch.full((batch,), self.class_label, dtype=torch.long, device=self.device)
        if not isinstance(self.denoiser, UNet2DConditionModel):
            return None
        return self._prompt_embedding(prompt or "").expand(batch, -1, -1)

    def _prompt_embedding(self, prompt: str) -> torch.Tensor:
        if self.text_encoder is None:
            if prompt:
                raise DiffrepError(f"{self.source} has no text_encoder/ and tokenizer/; cannot encode a prompt")
            dim = self.denoiser.config.cross_attention_dim
            return torch.zeros(1, 1, dim, device=self.device)
        if not prompt and self._empty_prompt is not None:
            return self._empty_prompt
        emb = TextEncoder(self.text_encoder, self.tokenizer).prompts([prompt])   # as the model was trained on them
        if not prompt:
            self._empty_prompt = emb
        return emb


# ----------------------------------------------------------------------------- loading

def _reads(config_file: Path) -> dict:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DiffrepError(f"cannot read {config_file}: {err}") from None
    if not isinstance(config, dict):
        raise DiffrepError(f"{config_file} is not a diffusers config (not a JSON object)")
    return config


def _class_name(config_file: Path) -> str:
    return _reads(config_file).get("_class_name", "")


def _load_denoiser(folder: Path) -> torch.nn.Module:
    config = folder / "config.json"
    if not config.is_file():
        raise DiffrepError(f"{folder} has no config.json: not a diffusers model folder")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise DiffrepError(f"{folder} has config.json but no weights (expected one of {', '.join(WEIGHT_FILES)})")
    name = _class_name(config)
    if name == "Transformer2DModel" and _reads(config).get("norm_type") == "ada_norm_zero":
        name = "DiTTransformer2DModel"   # DiT folders on the hub predate diffusers' DiT class; diffusers remaps them too
    if name not in DENOISERS:
        raise DiffrepError(f"{folder} holds a {name or 'unknown model'}; supported denoisers: {', '.join(DENOISERS)}")
    try:
        return DENOISERS[name].from_pretrained(folder)
    except Exception as err:  # diffusers raises many types for a damaged folder
        raise DiffrepError(f"cannot load {name} from {folder}: {err}") from err


def _load_scheduler(candidates: list[Path], where: Path):
    """The scheduler in the first of `candidates` that holds a scheduler_config.json (EDM if its class
    says so); without one, DDPM's default linear schedule, with a note saying it was assumed."""
    folder = next((c for c in candidates if (c / "scheduler_config.json").is_file()), None)
    if folder is None:
        print(f"note: no scheduler_config.json in {where} (looked in {', '.join(str(c) for c in candidates)}); "
              "assuming DDPM's default linear schedule of 1000 steps (noise: vp)")
        return DDPMScheduler()
    name = _class_name(folder / "scheduler_config.json")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise DiffrepError(f"unknown scheduler class {name!r} in {folder}")
    scheduler = cls.from_pretrained(folder)
    if not isinstance(scheduler, EDMEulerScheduler) and not hasattr(scheduler, "alphas_cumprod"):
        raise DiffrepError(f"scheduler {name} in {folder} has neither ᾱ_t (VP) nor EDM σ; cannot noise images")
    return scheduler


def _load_text(folder: Path):
    if not (folder / "text_encoder").is_dir():
        return None, None
    if not (folder / "tokenizer").is_dir() and not (folder / "text_encoder" / BY_NAME).is_file():
        raise DiffrepError(f"{folder} has text_encoder/ but no tokenizer/")
    encoder = load_text_encoder(folder)   # CLIP (Stable Diffusion) or a BERT-type encoder (diffrep's scenes-t2i)
    return encoder.model, encoder.tokenizer


def _load_folder(folder: Path) -> Backbone:
    sub = next((folder / s for s in ("unet", "transformer") if (folder / s).is_dir()), None)
    if sub is None and (folder / "model").is_dir():  # a `diffrep pretrain` run folder
        return _load_folder(folder / "model")
    if sub is None:
        # a lone model folder: its scheduler sits in it, in scheduler/ inside it, or beside it
        denoiser = _load_denoiser(folder)
        places = [folder, folder / "scheduler", folder.parent / "scheduler"]
        return Backbone(denoiser, noise_form(_load_scheduler(places, folder)), source=str(folder))
    denoiser = _load_denoiser(sub)
    noise = noise_form(_load_scheduler([folder / "scheduler"], folder))
    vae = None
    if (folder / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(folder / "vae")
    elif denoiser.config.in_channels == 4 and isinstance(denoiser, (UNet2DConditionModel, DiTTransformer2DModel)):
        raise DiffrepError(f"{folder} holds a latent denoiser (4 input channels) but no vae/ folder")
    text_encoder, tokenizer = _load_text(folder)
    return Backbone(denoiser, noise, vae, text_encoder, tokenizer, source=str(folder))


RELAYOUT_LIMIT = 2 ** 30   # bytes of weights


def _too_big_to_relayout(module: torch.nn.Module, device) -> bool:
    """On the CPU, the channels-last copy of weights that are still memory-mapped from their
    safetensors file holds them twice until the last one is converted (an ADM-256-sized UNet, 2 GB
    of weights: 3.6 GB just to load); above 1 GiB the layout is left alone there."""
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    return torch.device(device).type == "cpu" and size > RELAYOUT_LIMIT


def random_init(backbone: Backbone, seed: int) -> Backbone:
    """The same architecture with freshly initialised weights (VAE and text encoder kept): the
    random-weight baseline of every method."""
    torch.manual_seed(seed)
    denoiser = type(backbone.denoiser).from_config(backbone.denoiser.config).eval().requires_grad_(False)
    random = Backbone(denoiser, backbone.noise, backbone.vae, backbone.text_encoder, backbone.tokenizer,
                      source=f"{backbone.source} (random init)", class_label=backbone.class_label)
    return random.to(backbone.device, backbone.denoiser.dtype)


def load_backbone(spec: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
                  preset: str | None = None, flags: str | None = None, class_label: int = 0) -> Backbone:
    """A backbone from a bundled name (`mnist-ddpm`), a local diffusers folder (a lone model folder or a
    pipeline folder with unet/ or transformer/, scheduler/, vae/ …), a HuggingFace hub id, or a
    guided-diffusion checkpoint (`FILE.pt` with its `preset` or MODEL_FLAGS `flags`, converted once into
    a cached diffusers folder), with the denoiser, VAE and text encoder on `device` ('auto', 'cpu',
    'cuda', 'cuda:N', 'mps'), their weights cast to `precision` on GPUs (`weight_dtype`).
    `class_label`: what a class-conditional pixel UNet is fed."""
    device = resolve_device(device)
    dtype = weight_dtype(precision, device)
    if Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES:
        backbone = _load_folder(cached_folder(spec, preset, flags))
    elif preset is not None or flags is not None:
        raise DiffrepError(f"--preset and --flags describe a guided-diffusion checkpoint (a .pt file); {spec} is not one")
    else:
        backbone = _load_folder(_locate(spec))
    backbone.source, backbone.class_label = str(spec), class_label
    for module in (backbone.denoiser, backbone.vae, backbone.text_encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    return backbone.to(device, dtype)


def _locate(spec: str | Path) -> Path:
    """The folder of a bundled name, a local path, or a hub id (downloaded)."""
    if str(spec) in BUNDLED:
        path = BUNDLED[str(spec)]
        if not path.is_dir():
            raise DiffrepError(f"bundled model {spec} is missing from {path}; reinstall diffrep")
    else:
        path = Path(spec)
    return path if path.exists() else _download(str(spec))


def _download(spec: str) -> Path:
    """Fetch a hub repository (needs the network; offline it fails with a message saying so)."""
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise DiffrepError(f"{spec!r} is neither a bundled model ({', '.join(BUNDLED)}), a local folder, nor a hub id 'org/name'")
    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as err:
        raise DiffrepError(
            f"could not fetch {spec!r} from the HuggingFace hub ({type(err).__name__}); this machine may be offline."
            " Download it elsewhere and pass the local folder instead") from err
