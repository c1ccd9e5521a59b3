"""Model-family adapters: everything that touches ComfyUI internals lives here.

* :mod:`.family` - the written family interface (:class:`.family.Family`); one module per family declares one
  (``unet``, ``flux``, ``flux2``, ``longcat_image``, ``chroma``, ``sd3``, ``pixart``, ``qwen_image``, ``lumina2``,
  ``z_image``, ``wan``, ``ltxv``, ``ltx2``, ``hunyuan_video``, ``hunyuan_video15``, ``hunyuan_image21``,
  ``kandinsky5``, ``cosmos``, ``hidream``) and :mod:`.registry` lists them;
* shared hooks: :mod:`.attn2` (attn2 replaces), :mod:`.joint` (the negative text stream of joint attention),
  :mod:`.double_single` (FLUX-style blocks), :mod:`.cross_blocks` (Wan-style blocks), :mod:`.binding` (binding
  ComfyUI's calls by name);
* the run: :mod:`.inputs` (what the nodes take, validated), :mod:`.run` (a sampling run's NasaRun), :mod:`.reuse`
  (keeping projections across steps), :mod:`.sampler` (the sampler wrapper that builds the run), :mod:`.model_call`
  (each model call's plan, kept exact under torch.compile);
* :mod:`.other_packs`: packs whose models NASA cannot reach, named in its errors (Nunchaku, TeaCache, MagCache).

This module: :func:`apply_nasa` (what the Apply NASA Attention nodes do), :func:`find_adapter`, :func:`nasa_flops`.
"""
from __future__ import annotations

from typing import Optional

from . import joint, model_call, other_packs
from .family import Family
from .inputs import (CARRIED_KEY, NegativeInput, check_inputs, check_width, conditioning_entries,
                     make_carried_negative, make_negatives)
from .registry import FAMILIES
from .run import RUN_KEY, NasaRun
from .binding import set_wrapper
from .sampler import NasaSettings, make_sampler_wrapper, nasa_replaces
from ..nasa_core import DEFAULT_ALPHA, Guard, check_alpha, check_method
from ..nasa_core.controls import Schedule, parse_blocks
from ..nasa_core.flops import nasa_extra_flops

__all__ = ["CARRIED_KEY", "FAMILIES", "Family", "NasaRun", "NegativeInput", "RUN_KEY", "UnsupportedModelError",
           "apply_nasa", "find_adapter", "make_carried_negative", "make_negatives", "nasa_flops"]


class UnsupportedModelError(ValueError):
    pass


def _model_family(model_patcher) -> str:
    base = getattr(model_patcher, "model", None)
    config = getattr(base, "model_config", None)
    if config is not None:
        return type(config).__name__
    return type(getattr(base, "diffusion_model", base)).__name__


def find_adapter(model_patcher, node: str = "Apply NASA Attention") -> Family:
    """The :class:`Family` whose ``matches`` accepts ``model_patcher``; a clear error for anything else."""
    if not hasattr(model_patcher, "clone") or not hasattr(model_patcher, "model"):
        raise ValueError(f"{node}: 'model' is not a diffusion MODEL (got {type(model_patcher).__name__}).")
    for family in FAMILIES:
        if family.matches(model_patcher):
            return family
    wrapped = other_packs.nunchaku(model_patcher)
    if wrapped is not None:
        raise UnsupportedModelError(f"{node}: {wrapped}.")
    supported = "; ".join(s for f in FAMILIES for s in f.supported)
    raise UnsupportedModelError(
        f"{node}: model family '{_model_family(model_patcher)}' is not supported by this version of the NASA pack. "
        f"Supported: {supported}. Remove the node for this model, or ask for its family on the pack's issue tracker.")


def apply_nasa(model, negative=None, alpha=DEFAULT_ALPHA, use_sampler_negative=True, node: str = "Apply NASA Attention",
               negatives=None, start_percent: float = 0.0, end_percent: float = 1.0, alpha_end_scale: float = 1.0,
               blocks: str = "", guard: Optional[Guard] = None, stream: str = "propagated", method=None):
    """Return a clone of ``model`` with NASA on the selected text-attention layers. ``model`` itself is untouched.

    ``negative``: one CONDITIONING steered with ``alpha``; ``negatives``: a NASA_NEGATIVES list
    (:class:`NegativeInput`, each with its own alpha and optional mask) - at most one of the two.
    ``start_percent``/``end_percent``: the window of the sampling schedule NASA acts in; alpha ramps
    linearly to ``alpha_end_scale`` times itself at its end. ``blocks``: a block selection (see
    :func:`nasa_core.controls.parse_blocks`); empty = every block. ``guard``: the stability guard
    (:class:`nasa_core.Guard`; None or mode "off" = plain NASA). ``stream`` (joint-attention families only):
    "propagated" (the negative flows through every block's text-stream weights) or "embedded" (each block
    projects the embedded negative; cheaper, an approximation). ``method``: None for NASA, or a
    :class:`nasa_core.Nag` / :class:`nasa_core.Vsf` run on the same negatives, windows, blocks and regions; then
    ``alpha`` is that method's strength (``method.strength``: NAG's scale - 1, VSF's scale)."""
    adapter = find_adapter(model, node)
    family = adapter.model_name(model)
    alpha = _method_alpha(method, alpha, negatives, adapter, family, node)
    if negative is not None and negatives is not None:
        raise ValueError(f"{node}: both 'negative' and 'negatives' are connected; connect one. To steer away from "
                         f"several prompts, chain NASA Negative nodes into 'negatives'.")
    inputs = None
    if negative is not None:
        inputs = [NegativeInput(conditioning_entries(negative, node, "negative", single_batch=True), None)]
    elif negatives is not None:
        inputs = check_inputs(negatives, node)
    elif not use_sampler_negative:
        raise ValueError(f"{node}: no negative to steer away from: 'negative' is not connected and "
                         f"use_sampler_negative is off. Connect a negative prompt or turn use_sampler_negative on.")
    for i, item in enumerate(inputs or []):
        what = "'negative'" if negative is not None else f"'negatives' item {i + 1}"
        for t, _ in item.entries:
            check_width(t, adapter.context_dim(model), family, node, what)
        if item.mask is not None and item.mask.shape[0] > 1 and not adapter.video:
            raise ValueError(f"{node}: {what} has a mask of {item.mask.shape[0]} images; for this {family} image "
                             f"model the mask must be one image (its batch is frames for video models only). "
                             f"Pick one mask (e.g. with ImageToMask/SolidMask) or split the batch.")
    if stream not in joint.STREAMS:
        raise ValueError(f"{node}: 'stream' must be one of {', '.join(joint.STREAMS)}; got {stream!r}.")
    if stream != "propagated" and not adapter.joint_stream:
        raise ValueError(f"{node}: 'stream' {stream!r} applies to joint-attention models (FLUX, SD3, Chroma, ...); "
                         f"{family} has cross-attention, whose negative is always the embedded prompt. Set it to "
                         f"'propagated'.")
    if guard is not None and not isinstance(guard, Guard):
        raise ValueError(f"{node}: 'guard' must be a nasa_core.Guard, not {type(guard).__name__}.")
    schedule = Schedule(float(start_percent), float(end_percent), float(alpha_end_scale)).check(node)
    groups = adapter.block_groups(model)
    selection = parse_blocks(blocks, groups, f"{node}: 'blocks'", f"this {family} model")
    stream_last, stream_skip = None, frozenset()
    if selection is not None and adapter.joint_stream:
        stream_last, stream_skip = joint.stream_end(groups, selection)
    m = model.clone()
    adapter.install(m)
    settings = NasaSettings(alpha=alpha, negatives=inputs, use_sampler_negative=bool(use_sampler_negative),
                            node=node, family=family, context_dim=adapter.context_dim(model),
                            schedule=schedule, blocks=selection, replaces=nasa_replaces(m.model_options),
                            guard=guard, stream=stream, stream_last=stream_last, stream_skip=stream_skip,
                            method=method)
    set_wrapper(m, "SAMPLER_SAMPLE", make_sampler_wrapper(settings, adapter.layers))
    model_call.install(m)
    return m


def _method_alpha(method, alpha, negatives, adapter, family: str, node: str) -> float:
    """The run's coefficient base: NASA's checked alpha, or the method's strength (checked against ``alpha``)."""
    if method is None:
        return check_alpha(alpha, node)
    try:
        check_method(method)
    except TypeError as e:
        raise ValueError(f"{node}: {e}") from None
    if float(alpha) != method.strength:
        raise ValueError(f"{node}: with method '{method.name}' the negatives' strength is the method's own "
                         f"({method.strength}), not alpha {alpha}; pass alpha=method.strength.")
    if negatives is not None and any(n.alpha is not None for n in check_inputs(negatives, node)):
        raise ValueError(f"{node}: a NASA Negative in 'negatives' has its own alpha, which is NASA's strength; with "
                         f"method '{method.name}' set that alpha to -1 so the method's strength applies, or pick "
                         f"method 'nasa'.")
    return method.strength


def nasa_flops(model_patcher, latent, negative_tokens: int, rows: int = 1, reused: bool = False) -> Optional[int]:
    """NASA's extra FLOPs for one forward of ``model_patcher`` on a latent of shape (C, [T,] H, W) steering
    ``rows`` rows with a negative of ``negative_tokens``, counted from the model's shapes
    (nasa_core.flops); None for a family whose adapter does not describe its layers yet. ``reused``: a later
    step of a multi-step run (the negative's projections kept from the first step where the family can)."""
    adapter = find_adapter(model_patcher)
    if adapter.flop_layers is None:
        return None
    described = adapter.flop_layers(model_patcher, tuple(latent))
    if described is None:
        return None
    embedding, layers = described
    return nasa_extra_flops(layers, negative_tokens, rows=rows, embedding=embedding, reused=reused)
