"""ComfyUI models as the networks of nasa_core's distillation trainer (touches ComfyUI internals).

:func:`comfy_eps` is the trainer's ``eps_fn(module, x_t, t, cond, negative=None)`` for any ComfyUI
``BaseModel`` whose family NASA supports (the toy world's UNet, SD1.5, SD2.1, PixArt-α, ...). It runs
the model through ``BaseModel.apply_model``, the call the samplers make, so the prediction type
(eps or v), dtype casting and input scaling are ComfyUI's own: the VP input x_t at integer timestep
t is ComfyUI's x = x_t * sqrt(1 + sigma_t^2) at sigma_t, and eps = (x - denoised) / sigma_t.

With ``negative=(negative_cond, alpha)`` the forward steers every cross-attention layer with the
family adapter's own NASA patches (the ones Apply NASA Attention installs), differentiably, with
one negative per batch row (NASA-T: each training prompt has its own negative). The patches live
on a clone of a ModelPatcher around the model; object patches (PixArt) are set on the module for
the duration of that forward only. alpha = 0 or no negative is the unpatched forward.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Optional

import torch

from . import find_adapter
from .negatives import RUN_KEY, NasaRun, NegativeEntry, NegativePrompt

NODE = "NASA-T trainer"
_steered: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Steered:
    """A model with the family's NASA patches installed on a ModelPatcher clone."""

    def __init__(self, base_model):
        import comfy.model_management as mm
        import comfy.model_patcher
        patcher = comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        self.adapter = find_adapter(patcher, NODE)
        self.patcher = patcher.clone()
        self.layers = self.adapter.install(self.patcher)
        self.base = base_model

    def options(self, negative: torch.Tensor, alpha: float) -> dict:
        import comfy.patcher_extension as pe
        run = NasaRun(NegativePrompt([NegativeEntry(negative, 1.0)], float(alpha)), {}, NODE)
        self.adapter.attach_layers(run, self.base)
        options = pe.copy_nested_dicts(self.patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = pe.copy_nested_dicts(self.patcher.wrappers)
        options[RUN_KEY] = run
        return options

    @contextlib.contextmanager
    def object_patches(self):
        import comfy.utils
        saved = {}
        try:
            for key, value in self.patcher.object_patches.items():
                saved[key] = comfy.utils.set_attr(self.base, key, value)
            yield
        finally:
            for key, value in saved.items():
                comfy.utils.set_attr(self.base, key, value)


def steered(base_model) -> _Steered:
    hit = _steered.get(base_model)
    if hit is None:
        hit = _steered[base_model] = _Steered(base_model)
    return hit


def sigma_of(base_model, t: torch.Tensor) -> torch.Tensor:
    return base_model.model_sampling.sigmas.to(t.device)[t.long()].float()


def alphas_cumprod(base_model) -> torch.Tensor:
    """The model's own noise schedule as the trainer wants it: alpha_bar_t = 1 / (1 + sigma_t^2)."""
    sigmas = base_model.model_sampling.sigmas.float().cpu()
    return 1.0 / (1.0 + sigmas ** 2)


def comfy_eps(base_model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
              negative: Optional[tuple] = None) -> torch.Tensor:
    """eps of a ComfyUI BaseModel at VP input ``x_t``, timesteps ``t``; NASA on ``negative=(cond, alpha)``."""
    sigma = sigma_of(base_model, t)
    s = sigma.view(-1, *([1] * (x_t.dim() - 1)))
    x = x_t * (1.0 + s * s).sqrt()
    if negative is None or negative[1] is None or float(negative[1]) == 0.0:
        denoised = base_model.apply_model(x, sigma, c_crossattn=cond)
    else:
        neg_cond, alpha = negative
        if neg_cond.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{NODE}: {neg_cond.shape[0]} negatives for a batch of {x.shape[0]} (give 1 or one per row)")
        s_model = steered(base_model)
        with s_model.object_patches():
            denoised = base_model.apply_model(x, sigma, c_crossattn=cond,
                                              transformer_options=s_model.options(neg_cond, alpha))
    return (x - denoised.to(x.dtype)) / s
