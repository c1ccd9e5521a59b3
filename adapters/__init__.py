"""Model-family adapters: everything that touches ComfyUI internals lives here, one module per family.

An adapter module provides:

* ``FAMILY`` (display name) and ``SUPPORTED`` (what a user may load),
* ``matches(model_patcher) -> bool``, ``family_name(model_patcher) -> str``,
* ``context_dim(model_patcher) -> int | None`` (text width the model's cross-attention takes),
* ``install(model_patcher) -> int`` (patch every steered layer of a clone; returns how many),
* ``attach_layers(run, base_model)`` (resolve the layers at sample time for the run),
* ``block_groups(model_patcher) -> {group: [index, ...]}`` (what a block selection may name; every
  steering call site passes its ``(group, index)`` to the run),
* optionally ``VIDEO = True`` (a mask's batch is frames), ``JOINT_STREAM = True`` (joint attention: the negative
  flows as a stream through the text-stream weights, :mod:`.joint`; ``stream`` applies).

To add a family, add its module and list it in ``ADAPTERS``.
"""
from __future__ import annotations

from typing import Optional

from . import chroma, flux, hunyuan_video, ltxv, lumina2, pixart, qwen_image, sd3, unet, wan
from .negatives import (CARRIED_KEY, RUN_KEY, NasaRun, NasaSettings, NegativeSpec, check_width, conditioning_entries,
                        make_carried_negative, make_negative_spec, make_sampler_wrapper, nasa_replaces, set_wrapper)
from . import joint
from ..nasa_core import DEFAULT_ALPHA, Guard, check_alpha
from ..nasa_core.controls import Schedule, parse_blocks
from ..nasa_core.flops import nasa_extra_flops

ADAPTERS = (unet, flux, sd3, pixart, qwen_image, lumina2, wan, ltxv, chroma, hunyuan_video)

__all__ = ["ADAPTERS", "CARRIED_KEY", "RUN_KEY", "NasaRun", "NegativeSpec", "apply_nasa", "find_adapter",
           "make_carried_negative", "make_negative_spec"]


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


def apply_nasa(model, negative=None, alpha=DEFAULT_ALPHA, use_sampler_negative=True, node: str = "Apply NASA Attention",
               negatives=None, start_percent: float = 0.0, end_percent: float = 1.0, alpha_end_scale: float = 1.0,
               blocks: str = "", guard: Optional[Guard] = None, stream: str = "propagated"):
    """Return a clone of ``model`` with NASA on the selected text-attention layers. ``model`` itself is untouched.

    ``negative``: one CONDITIONING steered with ``alpha``; ``negatives``: a NASA_NEGATIVES list
    (:class:`NegativeSpec`, each with its own alpha and optional mask) - at most one of the two.
    ``start_percent``/``end_percent``: the window of the sampling schedule NASA acts in; alpha ramps
    linearly to ``alpha_end_scale`` times itself at its end. ``blocks``: a block selection (see
    :func:`nasa_core.controls.parse_blocks`); empty = every block. ``guard``: the stability guard
    (:class:`nasa_core.Guard`; None or mode "off" = plain NASA). ``stream`` (joint-attention families only):
    "propagated" (the negative flows through every block's text-stream weights) or "embedded" (each block
    projects the embedded negative; cheaper, an approximation)."""
    alpha = check_alpha(alpha, node)
    adapter = find_adapter(model, node)
    family = adapter.family_name(model)
    if negative is not None and negatives is not None:
        raise ValueError(f"{node}: both 'negative' and 'negatives' are connected; connect one. To steer away from "
                         f"several prompts, chain NASA Negative nodes into 'negatives'.")
    specs = None
    if negative is not None:
        specs = [NegativeSpec(conditioning_entries(negative, node, "negative", single_batch=True), None)]
    elif negatives is not None:
        specs = _check_specs(negatives, node)
    elif not use_sampler_negative:
        raise ValueError(f"{node}: no negative to steer away from: 'negative' is not connected and "
                         f"use_sampler_negative is off. Connect a negative prompt or turn use_sampler_negative on.")
    for i, spec in enumerate(specs or []):
        what = "'negative'" if negative is not None else f"'negatives' item {i + 1}"
        for t, _ in spec.entries:
            check_width(t, adapter.context_dim(model), family, node, what)
        if spec.mask is not None and spec.mask.shape[0] > 1 and not getattr(adapter, "VIDEO", False):
            raise ValueError(f"{node}: {what} has a mask of {spec.mask.shape[0]} images; for this {family} image "
                             f"model the mask must be one image (its batch is frames for video models only). "
                             f"Pick one mask (e.g. with ImageToMask/SolidMask) or split the batch.")
    if stream not in joint.STREAMS:
        raise ValueError(f"{node}: 'stream' must be one of {', '.join(joint.STREAMS)}; got {stream!r}.")
    if stream != "propagated" and not getattr(adapter, "JOINT_STREAM", False):
        raise ValueError(f"{node}: 'stream' {stream!r} applies to joint-attention models (FLUX, SD3, Chroma, ...); "
                         f"{family} has cross-attention, whose negative is always the embedded prompt. Set it to "
                         f"'propagated'.")
    if guard is not None and not isinstance(guard, Guard):
        raise ValueError(f"{node}: 'guard' must be a nasa_core.Guard, not {type(guard).__name__}.")
    schedule = Schedule(float(start_percent), float(end_percent), float(alpha_end_scale)).check(node)
    groups = adapter.block_groups(model)
    selection = parse_blocks(blocks, groups, f"{node}: 'blocks'", f"this {family} model")
    settings = NasaSettings(alpha=alpha, negatives=specs, use_sampler_negative=bool(use_sampler_negative),
                            node=node, family=family, context_dim=adapter.context_dim(model),
                            schedule=schedule, blocks=selection, guard=guard, stream=stream)
    if selection is not None and getattr(adapter, "JOINT_STREAM", False):
        settings.stream_last, settings.stream_skip = joint.stream_end(groups, selection)
    m = model.clone()
    adapter.install(m)
    settings.replaces = nasa_replaces(m.model_options)
    set_wrapper(m, "SAMPLER_SAMPLE", make_sampler_wrapper(settings, adapter.attach_layers))
    return m


def _check_specs(negatives, node: str) -> list:
    if not isinstance(negatives, (list, tuple)) or not negatives or \
            not all(isinstance(n, NegativeSpec) for n in negatives):
        raise ValueError(f"{node}: 'negatives' must come from a NASA Negative node (got {type(negatives).__name__}).")
    return list(negatives)


def nasa_flops(model_patcher, latent, negative_tokens: int, rows: int = 1, reused: bool = False) -> Optional[int]:
    """NASA's extra FLOPs for one forward of ``model_patcher`` on a latent of shape (C, [T,] H, W) steering
    ``rows`` rows with a negative of ``negative_tokens``, counted from the model's shapes
    (nasa_core.flops); None for a family whose adapter does not describe its layers yet. ``reused``: a later
    step of a multi-step run (the negative's projections kept from the first step where the family can)."""
    adapter = find_adapter(model_patcher)
    if not hasattr(adapter, "flop_layers"):
        return None
    described = adapter.flop_layers(model_patcher, tuple(latent))
    if described is None:
        return None
    embedding, layers = described
    return nasa_extra_flops(layers, negative_tokens, rows=rows, embedding=embedding, reused=reused)
