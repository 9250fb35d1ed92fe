"""Denoising objectives, each a short callable that reads like its paper's equation."""

from __future__ import annotations

import torch

from ..core.backbone import EDMNoise, VPNoise, run_denoiser


class DDPMLoss:
    """Ho et al. 2020: t ~ U{0..T-1}, loss = ‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖²."""

    def __init__(self, noise: VPNoise):
        self.alphas_cumprod = noise.alphas_cumprod

    def __call__(self, model, x0, gen: torch.Generator, cond=None):
        t = torch.randint(0, len(self.alphas_cumprod), (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(x0)
        ab = self.alphas_cumprod[t].to(x0).view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        return (run_denoiser(model, x_t, t.to(x0.device), cond).float() - eps).pow(2).mean()


class EDMLoss:
    """Karras et al. 2022: ln σ ~ N(P_mean, P_std²), D_θ(x_0 + σn; σ) = c_skip·x + c_out·F_θ(c_in·x; ¼ ln σ),
    loss = λ(σ)·‖D_θ - x_0‖² with λ(σ) = (σ² + σ_data²) / (σ·σ_data)²."""

    def __init__(self, noise: EDMNoise, p_mean: float = -1.2, p_std: float = 1.2):
        self.scheduler, self.p_mean, self.p_std = noise.scheduler, p_mean, p_std
        self.sigma_data = noise.scheduler.config.sigma_data

    def __call__(self, model, x0, gen: torch.Generator, cond=None):
        sigma = (torch.randn(len(x0), generator=gen) * self.p_std + self.p_mean).exp().to(x0).view(-1, 1, 1, 1)
        x = x0 + sigma * torch.randn(x0.shape, generator=gen).to(x0)
        s = self.scheduler
        f = run_denoiser(model, s.precondition_inputs(x, sigma), s.precondition_noise(sigma.flatten()), cond).float()
        denoised = s.precondition_outputs(x, f, sigma)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return (weight * (denoised - x0).pow(2)).mean()
