"""Discrete-time eps-prediction diffusion helpers (DDPM / Stable Diffusion conventions). Pure torch.

A noise schedule is the tensor ``alphas_cumprod`` (alpha_bar_t for t = 0..T-1). Models see the
variance-preserving input x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps and predict eps:
ComfyUI's EPS models do the same (its sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), input
scaled by 1 / sqrt(sigma^2 + 1)), so a model trained here samples correctly in ComfyUI when the
schedule is ComfyUI's (take it from the model: alpha_bar = 1 / (1 + sigma^2)).

``EpsFn`` is any callable ``eps_fn(x_t, t, cond) -> eps`` with t a (B,) long tensor.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's schedule (betas linear in sqrt space), float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def _coefs(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor):
    a = alphas_cumprod.to(like.device, torch.float64)[t].to(like.dtype)
    shape = (-1,) + (1,) * (like.dim() - 1)
    return a.sqrt().view(shape), (1 - a).sqrt().view(shape)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    s, n = _coefs(alphas_cumprod, t, x0)
    return s * x0 + n * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    s, n = _coefs(alphas_cumprod, t, x_t)
    return (x_t - n * eps) / s


def eps_from_v(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The eps a v-prediction (v = sqrt(a) eps - sqrt(1 - a) x0) implies: sqrt(a) v + sqrt(1 - a) x_t.
    Through :func:`predict_x0` it gives x0 = sqrt(a) x_t - sqrt(1 - a) v, which stays well conditioned
    at t = T-1, where x0 from eps divides by sqrt(a_T) = 0.068 (ComfyUI's V_PREDICTION, sigma_data 1)."""
    s, n = _coefs(alphas_cumprod, t, x_t)
    return s * v + n * x_t


def ddim_sample(eps_fn: EpsFn, x_T: torch.Tensor, cond, uncond, kappa, alphas_cumprod: torch.Tensor,
                steps: int) -> torch.Tensor:
    """Deterministic DDIM from x_T (at t = T-1) in ``steps`` model evaluations with CFG ``kappa``; returns x0."""
    T = alphas_cumprod.shape[0]
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    x = x_T
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        e = cfg(eps_fn(x, tt, uncond), eps_fn(x, tt, cond), kappa)
        x0 = predict_x0(x, e, tt, alphas_cumprod)
        if i + 1 < len(ts):
            x = add_noise(x0, e, torch.full_like(tt, ts[i + 1]), alphas_cumprod)
    return x0


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, kappa) -> torch.Tensor:
    """Classifier-free guidance, the paper's eq. (4)/(5): (1 - kappa) eps(uncond or y-) + kappa eps(y).
    ``kappa`` is a float or a (B,) tensor."""
    if torch.is_tensor(kappa):
        kappa = kappa.to(eps_cond).view((-1,) + (1,) * (eps_cond.dim() - 1))
    return (1 - kappa) * eps_uncond + kappa * eps_cond      # as written: exactly eps_cond at kappa = 1


def denoising_loss(eps_fn: EpsFn, x0: torch.Tensor, cond, alphas_cumprod: torch.Tensor,
                   generator: Optional[torch.Generator] = None, offset_noise: float = 0.0) -> torch.Tensor:
    """The DDPM objective: E_t,eps || eps_fn(x_t, t, cond) - eps ||^2 with t uniform.

    ``offset_noise`` adds a per-image, per-channel constant N(0, offset^2) to eps ("offset noise").
    SD's schedule keeps sqrt(alpha_bar_T) = 0.068 of the image at t = T-1, and on small images the
    mean of the noise is precise enough to read the image's mean color through it; a model trained
    so then takes the random mean of its starting noise for the background color. The offset hides
    it, so the model learns to choose the colors from the prompt.
    """
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    if offset_noise:
        noise = noise + offset_noise * torch.randn(x0.shape[:2] + (1,) * (x0.dim() - 2), generator=generator).to(x0)
    return torch.nn.functional.mse_loss(eps_fn(add_noise(x0, noise, t, alphas_cumprod), t, cond), noise)


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.steps = 0
        self.module = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        """The average and its step count (the decay's warm-up), for a resumable checkpoint."""
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]
