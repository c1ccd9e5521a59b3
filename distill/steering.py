"""ComfyUI models as the networks of nasa_core's distillation trainer (touches ComfyUI internals).

:func:`comfy_eps` is the trainer's ``eps_fn(module, x_t, t, cond, negative=None)`` for any ComfyUI
``BaseModel`` whose family NASA supports (the toy world's UNet, SD1.5, SD2.1, PixArt-α, ...). It runs
the model through ``BaseModel.apply_model``, the call the samplers make, so the prediction type
(eps or v), dtype casting and input scaling are ComfyUI's own: the VP input x_t at integer timestep
t is ComfyUI's x = x_t * sqrt(1 + sigma_t^2) at sigma_t, and eps = (x - denoised) / sigma_t.

With ``negative=(negative_cond, alpha)`` the forward steers every cross-attention layer with the
family adapter's own NASA patches (the ones Apply NASA Attention installs), differentiably, with
one negative per batch row (NASA-T: each training prompt has its own negative).

Flow models (FLUX-class, ComfyUI's ``ModelType.FLOW``: x = (1 - s) x0 + s eps) map onto the same VP
convention: alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2), x_t = sqrt(a) x0 + sqrt(1 - a) eps is the flow
input times (sqrt(a) + sqrt(1 - a)); ``cond`` may be a dict of conds (``{"c_crossattn", "y"}``: the
pooled text FLUX reads), passed to ``apply_model`` as keywords. The patches live
on a clone of a ModelPatcher around the model; object patches (PixArt) are set on the module for
the duration of that forward only. alpha = 0 or no negative is the unpatched forward.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Optional

import torch

from ..adapters import find_adapter
from ..adapters.run import RUN_KEY, NasaRun, NegativePrompt, PromptEntry

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
        run = NasaRun(NegativePrompt([PromptEntry(negative, 1.0)], float(alpha)), {}, NODE,
                      layers=self.adapter.layers(self.base))
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


FLOW_ALPHA_MIN = 1e-6
"""alpha_bar floor of a flow schedule: its last sigma is 1 (pure noise, alpha_bar 0)."""


def is_flow(base_model) -> bool:
    import comfy.model_sampling
    return isinstance(base_model.model_sampling, comfy.model_sampling.CONST)


def sigma_of(base_model, t: torch.Tensor) -> torch.Tensor:
    return base_model.model_sampling.sigmas.to(t.device)[t.long()].float()


def alphas_cumprod(base_model) -> torch.Tensor:
    """The model's own noise schedule as the trainer wants it: alpha_bar_t = 1 / (1 + sigma_t^2), or for a
    flow model (1 - s)^2 / ((1 - s)^2 + s^2) (at least :data:`FLOW_ALPHA_MIN`)."""
    sigmas = base_model.model_sampling.sigmas.float().cpu()
    if is_flow(base_model):
        return ((1 - sigmas) ** 2 / ((1 - sigmas) ** 2 + sigmas ** 2)).clamp_min(FLOW_ALPHA_MIN)
    return 1.0 / (1.0 + sigmas ** 2)


def _conds(cond) -> dict:
    return dict(cond) if isinstance(cond, dict) else {"c_crossattn": cond}


def _flow_eps(base_model, x_t, t, cond, options) -> torch.Tensor:
    a = alphas_cumprod(base_model).to(x_t.device)[t.long()].view(-1, *([1] * (x_t.dim() - 1)))
    sa, sn = a.sqrt(), (1 - a).sqrt()
    x = x_t / (sa + sn)
    sigma = sn / (sa + sn)
    denoised = base_model.apply_model(x, sigma.flatten(), **_conds(cond), **options)
    return (x_t - sa * denoised.to(x_t.dtype)) / sn


def comfy_eps(base_model, x_t: torch.Tensor, t: torch.Tensor, cond, negative: Optional[tuple] = None) -> torch.Tensor:
    """eps of a ComfyUI BaseModel at VP input ``x_t``, timesteps ``t``; NASA on ``negative=(cond, alpha)``."""
    options = {}
    if negative is not None and negative[1] is not None and float(negative[1]) != 0.0:
        neg_cond, alpha = negative
        if isinstance(neg_cond, dict):
            neg_cond = neg_cond["c_crossattn"]
        if neg_cond.shape[0] not in (1, x_t.shape[0]):
            raise ValueError(f"{NODE}: {neg_cond.shape[0]} negatives for a batch of {x_t.shape[0]} (give 1 or one per row)")
        s_model = steered(base_model)
        options = {"transformer_options": s_model.options(neg_cond, alpha)}
        patches = s_model.object_patches()
    else:
        patches = contextlib.nullcontext()
    with patches:
        if is_flow(base_model):
            return _flow_eps(base_model, x_t, t, cond, options)
        sigma = sigma_of(base_model, t)
        s = sigma.view(-1, *([1] * (x_t.dim() - 1)))
        x = x_t * (1.0 + s * s).sqrt()
        denoised = base_model.apply_model(x, sigma, **_conds(cond), **options)
    return (x - denoised.to(x.dtype)) / s
