"""Model-family adapters: everything that touches ComfyUI internals lives here, one module per family.

An adapter module provides:

* ``FAMILY`` (display name) and ``SUPPORTED`` (what a user may load),
* ``matches(model_patcher) -> bool``, ``family_name(model_patcher) -> str``,
* ``context_dim(model_patcher) -> int | None`` (text width the model's cross-attention takes),
* ``install(model_patcher) -> int`` (patch every steered layer of a clone; returns how many),
* ``attach_layers(run, base_model)`` (resolve the layers at sample time for the run).

To add a family, add its module and list it in ``ADAPTERS``.
"""
from __future__ import annotations

from . import chroma, flux, hunyuan_video, ltxv, lumina2, pixart, qwen_image, sd3, unet, wan
from .negatives import (CARRIED_KEY, RUN_KEY, NasaRun, NasaSettings, check_width, conditioning_entries,
                        make_carried_negative, make_sampler_wrapper, set_wrapper)
from ..nasa_core import DEFAULT_ALPHA, check_alpha

ADAPTERS = (unet, flux, sd3, pixart, qwen_image, lumina2, wan, ltxv, chroma, hunyuan_video)

__all__ = ["ADAPTERS", "CARRIED_KEY", "RUN_KEY", "NasaRun", "apply_nasa", "find_adapter", "make_carried_negative"]


class UnsupportedModelError(ValueError):
    pass


def _model_family(model_patcher) -> str:
    base = getattr(model_patcher, "model", None)
    config = getattr(base, "model_config", None)
    if config is not None:
        return type(config).__name__
    return type(getattr(base, "diffusion_model", base)).__name__


def find_adapter(model_patcher, node: str = "Apply NASA Attention"):
    if not hasattr(model_patcher, "clone") or not hasattr(model_patcher, "model"):
        raise ValueError(f"{node}: 'model' is not a diffusion MODEL (got {type(model_patcher).__name__}).")
    for adapter in ADAPTERS:
        if adapter.matches(model_patcher):
            return adapter
    supported = "; ".join(s for a in ADAPTERS for s in a.SUPPORTED)
    raise UnsupportedModelError(
        f"{node}: model family '{_model_family(model_patcher)}' is not supported by this version of the NASA pack. "
        f"Supported: {supported}. Remove the node for this model, or ask for its family on the pack's issue tracker.")


def apply_nasa(model, negative=None, alpha=DEFAULT_ALPHA, use_sampler_negative=True, node: str = "Apply NASA Attention"):
    """Return a clone of ``model`` with NASA on every cross-attention layer. ``model`` itself is untouched."""
    alpha = check_alpha(alpha, node)
    adapter = find_adapter(model, node)
    entries = None
    if negative is not None:
        entries = conditioning_entries(negative, node, "negative", single_batch=True)
        for t, _ in entries:
            check_width(t, adapter.context_dim(model), adapter.family_name(model), node, "'negative'")
    elif not use_sampler_negative:
        raise ValueError(f"{node}: no negative to steer away from: 'negative' is not connected and "
                         f"use_sampler_negative is off. Connect a negative prompt or turn use_sampler_negative on.")
    settings = NasaSettings(alpha=alpha, negative=entries, use_sampler_negative=bool(use_sampler_negative),
                            node=node, family=adapter.family_name(model), context_dim=adapter.context_dim(model))
    m = model.clone()
    adapter.install(m)
    set_wrapper(m, "SAMPLER_SAMPLE", make_sampler_wrapper(settings, adapter.attach_layers))
    return m
