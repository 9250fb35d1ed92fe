"""The open-vocabulary scorer that ODISE ensembles with its mask classifier, here the text-to-image
model itself: a mask is scored for a category by how well the UNet denoises the image under that
category's prompt, on the mask's pixels (the reference uses CLIP's per-mask scores; no CLIP weights
are available offline).

    for each name n, level t, draw d:  error_n = ‖ε − ε_θ(x_t, t, prompt(n))‖² per pixel
    category error  = min over its names (synonyms), mean over t and draws
    mask score      = −(mean error under the mask − its mean over categories) / its std over categories

Then `ensemble` combines the classifier's probabilities p with the scorer's z by a geometric mean,
p^(1−a)·z^a, with a = α for categories seen in training and β for the others (ODISE: 0.3 / 0.7); the
classifier's "no object" probability is kept as it is.

The prompt (`prompts`): `photo`, ODISE's "a photo of {name}." for every category; or `caption`, the
phrase a training caption of the bundled scenes uses for it ("an eight", "a three"; a stuff name
alone, "grass"), for a model trained on such captions rather than on web alt-text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.backbone import VPNoise, run_denoiser
from ...core.featurizer import image_noise
from ...data.panoptic_scenes import with_article
from ...errors import DiffrepError
from .vocab import PROMPT, Vocabulary

DEFAULT_TS = (200, 500)
PROMPT_STYLES = ("photo", "caption")


def prompt_for(name: str, isthing: bool, style: str = "photo") -> str:
    """The text a category's name is scored under (see the module's docstring)."""
    if style == "photo":
        return PROMPT.format(name)
    if style != "caption":
        raise DiffrepError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")
    return with_article(name) if isthing else name


class DenoisingScorer:
    def __init__(self, backbone, vocab: Vocabulary, ts=DEFAULT_TS, draws: int = 2, seed: int = 0,
                 temperature: float = 3.0, relative: bool = False, prompts: str = "photo"):
        if not isinstance(backbone.noise, VPNoise):
            raise DiffrepError("the zero-shot scorer reads noise-prediction errors: it needs a DDPM-type (VP) model")
        self.backbone, self.vocab, self.ts, self.draws, self.seed = backbone, vocab, list(ts), draws, seed
        self.temperature, self.relative = temperature, relative
        names = [(i, n, c.isthing) for i, c in enumerate(vocab.categories) for n in c.names]
        self.owner = torch.tensor([i for i, _, _ in names])
        self.prompts = torch.cat([backbone.condition(1, prompt_for(n, thing, prompts)) for _, n, thing in names])

    @torch.no_grad()
    def errors(self, images: torch.Tensor) -> torch.Tensor:
        """B×K×h×w denoising error of each category (its best synonym) at every latent pixel."""
        bb = self.backbone
        latents = bb.encode(images.to(bb.device))
        b, n = len(latents), len(self.prompts)
        total = 0
        for t in self.ts:
            for d in range(self.draws):
                eps = image_noise(self.seed + d, [0], 1, t, latents.shape[1:])[0].to(latents).expand_as(latents)
                model_in, timestep = bb.noise.model_input(bb.noise.add_noise(latents, eps, t), t)
                cond = self.prompts.to(bb.device).repeat_interleave(b, 0)                         # (N·B)×L×D
                pred = run_denoiser(bb.denoiser, model_in.repeat(n, 1, 1, 1), timestep.repeat(n) if timestep.ndim
                                    else timestep, cond)
                err = (pred.float() - eps.repeat(n, 1, 1, 1)).pow(2).mean(1).view(n, b, *latents.shape[-2:])
                total = total + _best_synonym(err, self.owner, len(self.vocab))
        return (total / (len(self.ts) * self.draws)).transpose(0, 1)

    def mask_logits(self, errors: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """B×Q×K logits of each query's mask for each category from B×K×h×w errors."""
        masks = F.interpolate(mask_logits.float(), size=errors.shape[-2:], mode="bilinear", align_corners=False).sigmoid()
        per_mask = torch.einsum("bqhw,bkhw->bqk", masks, errors) / masks.sum((-1, -2)).unsqueeze(-1).clamp(min=1e-6)
        if self.relative:   # a prompt that denoises the whole image better is no evidence for this mask
            per_mask = per_mask - errors.mean((-1, -2)).unsqueeze(1)
        centred = per_mask - per_mask.mean(-1, keepdim=True)
        return -self.temperature * centred / per_mask.std(-1, keepdim=True).clamp(min=1e-8)


def _best_synonym(err: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    """N×… errors per name → K×… per category, the smallest over its names."""
    out = err.new_full((k, *err.shape[1:]), float("inf"))
    return out.scatter_reduce(0, owner.to(err.device).view(-1, *[1] * (err.ndim - 1)).expand_as(err), err, "amin")


def ensemble(logits: torch.Tensor, zero_shot: torch.Tensor, unseen: torch.Tensor, alpha: float = 0.3,
             beta: float = 0.7) -> torch.Tensor:
    """Classifier logits B×Q×(K+1) and zero-shot logits B×Q×K → ensembled logits B×Q×(K+1); `unseen`
    is a K-long boolean mask of the categories not seen in training."""
    p = logits.float().softmax(-1)
    p_class, p_null = p[..., :-1], p[..., -1:]
    z = zero_shot.float().softmax(-1)
    a = torch.where(unseen.to(p.device), torch.tensor(beta), torch.tensor(alpha)).to(p)
    mixed = p_class.clamp(min=1e-12).pow(1 - a) * z.clamp(min=1e-12).pow(a)
    mixed = mixed / mixed.sum(-1, keepdim=True) * (1 - p_null)
    return torch.cat([mixed, p_null], -1).clamp(min=1e-12).log()
