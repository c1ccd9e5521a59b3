"""From the sampler to the adapters: the ``SAMPLER_SAMPLE`` wrapper that builds each sampling run's NasaRun.

Where a negative comes from, highest priority first, decided per positive prompt:

1. a negative carried by that prompt's conditioning (NASA Negative Conditioning node),
2. the ``negative`` / ``negatives`` input of Apply NASA Attention,
3. the negative the sampler receives (``use_sampler_negative``) - also at cfg 1, where
   ComfyUI drops it from the model pass.

The wrapper (a ModelPatcher wrapper, cloned with the model) reads the sampler's processed conds, builds a
:class:`.run.NasaRun` and puts it into this run's ``transformer_options``; family adapters read it at every
attention call. Uncond rows are never steered. A run that had a negative to apply and steered no layer raises.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..nasa_core import Guard, check_finite
from ..nasa_core.controls import Schedule
from .binding import wrapped_call
from .model_call import compiled_by_comfyui, prepare_compiled_run
from .other_packs import forward_replacing_cache
from .inputs import CARRIED_KEY, NegativeInput, check_single_batch, check_width
from .run import RUN_KEY, NasaRun, NegativePrompt, negative_prompt, prompt_list


@dataclass(frozen=True)
class NasaSettings:
    """What Apply NASA Attention was asked for, checked and complete; cloned along with the model."""
    alpha: float
    negatives: Optional[list]           # NegativeInput list (the node's own negatives), or None
    use_sampler_negative: bool
    node: str
    family: str
    context_dim: Optional[int]
    schedule: Schedule = field(default_factory=Schedule)
    blocks: Optional[dict] = None       # {(group, index): alpha multiplier}; None = every block at 1
    replaces: frozenset = frozenset()   # NASA's ("attn2" | "dit", key) replaces, checked at sample time
    guard: Optional[Guard] = None       # the stability guard (nasa_core.Guard); None = plain NASA
    method: object = None               # None = NASA; nasa_core.Nag or nasa_core.Vsf on the same terms
    stream: str = "propagated"          # joint-attention models: the negative stream (joint.STREAMS)
    stream_last: Optional[tuple] = None  # joint models with a block selection: the last steered layer, and
    stream_skip: frozenset = frozenset()  # the layers after it (the stream stops there: nothing reads it)


def _hooked(guider) -> bool:
    """ComfyUI weight hooks (scheduled LoRA hooks and the like) may change weights between steps or rows."""
    if getattr(getattr(guider, "model_patcher", None), "hook_patches", None):
        return True
    conds = getattr(guider, "conds", None) or {}
    return any(c.get("hooks") is not None for cs in conds.values() for c in cs if isinstance(c, dict))


def _prompts(inputs: Sequence[NegativeInput], alpha: float, model_sampling) -> list:
    return [negative_prompt(n.entries, alpha if n.alpha is None else n.alpha, model_sampling, n.mask) for n in inputs]


def _carried_negatives(positive_conds: Sequence[dict], settings: NasaSettings, model_sampling) -> dict:
    carried = {}
    for c in positive_conds:
        spec = c.get(CARRIED_KEY)
        if spec is None:
            continue
        for t, _ in spec["entries"]:
            check_width(t, settings.context_dim, settings.family, "NASA Negative Conditioning",
                        "the carried negative")
        if spec.get("alpha") is not None and settings.method is not None:
            raise ValueError(f"NASA Negative Conditioning: its alpha {spec['alpha']} is NASA's strength; with "
                             f"{settings.node}'s method '{settings.method.name}' set it to -1 so the method's "
                             f"strength applies, or pick method 'nasa'.")
        alpha = settings.alpha if spec.get("alpha") is None else spec["alpha"]
        carried[c["uuid"]] = negative_prompt(spec["entries"], alpha, model_sampling)
    return carried


def _area_crop(area, dims: Sequence[int]) -> Optional[tuple]:
    """A positive's resolved ``area`` (sizes then offsets, latent units) as ((offset, size), ...) per latent
    dimension, clamped as ComfyUI crops the model input (samplers.get_area_and_mult)."""
    if area is None:
        return None
    import comfy.samplers
    n = len(dims)
    area = comfy.samplers.add_area_dims(list(area), n)
    half = len(area) // 2
    sizes, offsets = area[half - n:half], area[2 * half - n:]
    return tuple((int(o), int(min(d - o, s))) for d, s, o in zip(dims, sizes, offsets))


def _sampler_negative(guider, settings: NasaSettings, model_sampling) -> Optional[NegativePrompt]:
    conds = getattr(guider, "conds", None) or {}
    negative = conds.get("negative") or []
    entries = []
    for c in negative:
        t = c.get("cross_attn")
        if t is None:
            continue
        if c.get("area") is not None or c.get("mask") is not None:
            logging.warning("%s: the sampler's negative has an area/mask; NASA applies it to the whole image.",
                            settings.node)
        entries.append((t, c))
    if not entries:
        logging.warning("%s: use_sampler_negative is on but this sampler passes no negative prompt (e.g. a "
                        "BasicGuider); NASA does nothing in this run. Connect 'negative' on the node instead.",
                        settings.node)
        return None
    for t, _ in entries:
        check_single_batch(t, settings.node, "the sampler's negative")
        check_width(t, settings.context_dim, settings.family, settings.node, "the sampler's negative")
        check_finite(t, settings.node, "the sampler's negative")
    return negative_prompt(entries, settings.alpha, model_sampling)


def build_run(guider, settings: NasaSettings, latent_shape=None, layers: Optional[dict] = None,
              reuse_projections: bool = False) -> NasaRun:
    """The NasaRun of one sampling run, complete: its negatives per positive prompt, ``layers`` (the family's
    :attr:`.family.Family.layers` of the model being sampled) and whether projections are kept across steps."""
    model = getattr(guider, "inner_model", None)
    model_sampling = getattr(model, "model_sampling", None)
    conds = getattr(guider, "conds", None) or {}
    positive = conds.get("positive") or []
    carried = _carried_negatives(positive, settings, model_sampling)
    if settings.negatives is not None:
        default = _prompts(settings.negatives, settings.alpha, model_sampling)
    elif settings.use_sampler_negative:
        default = _sampler_negative(guider, settings, model_sampling)
    else:
        default = None
    latent = areas = None
    if latent_shape is not None:
        latent = tuple(int(s) for s in latent_shape[2:])
        if any(p.mask is not None for ps in [prompt_list(default), *map(prompt_list, carried.values())] for p in ps):
            areas = {c["uuid"]: _area_crop(c.get("area"), latent) for c in positive if "uuid" in c}
    return NasaRun(default, carried, settings.node, settings.schedule, getattr(model_sampling, "percent_to_sigma", None),
                   settings.blocks, settings.guard, settings.stream, settings.stream_last, settings.stream_skip,
                   layers=layers, latent=latent, areas=areas, reuse_projections=reuse_projections,
                   method=settings.method)


def nasa_replaces(model_options: dict) -> frozenset:
    """The ("attn2" | "dit", key) replaces in ``model_options`` that are NASA's."""
    replace = (model_options or {}).get("transformer_options", {}).get("patches_replace", {})
    return frozenset((kind, key) for kind in ("attn2", "dit") for key, fn in (replace.get(kind) or {}).items()
                     if hasattr(fn, "nasa_prior"))


def _check_replaces(settings: NasaSettings, model_options: dict) -> None:
    lost = sorted(settings.replaces - nasa_replaces(model_options), key=str)
    if lost:
        shown = ", ".join(f"{kind} {key}" for kind, key in lost[:4]) + (" ..." if len(lost) > 4 else "")
        logging.warning("%s: a node applied after it replaced NASA on %d of its %d layers (%s); NASA does not act "
                        "there in this run. Nodes that replace attention (IPAdapter-style) must come before Apply "
                        "NASA Attention, which chains the patches it finds.", settings.node, len(lost),
                        len(settings.replaces), shown)


def make_sampler_wrapper(settings: NasaSettings, layers_of: Callable):
    """SAMPLER_SAMPLE wrapper: publish this run's NasaRun in transformer_options for the adapters.

    ``layers_of(base_model)`` (the family's :attr:`.family.Family.layers`) resolves the layers on the model being
    sampled.
    """
    def nasa_sampler_sample(executor, *args, **kwargs):
        call = wrapped_call(executor, args, kwargs, "ComfyUI's sampler (KSAMPLER.sample)",
                            needs=("model_wrap", "sigmas", "extra_args", "noise"))
        guider, extra_args, noise, sigmas = call["model_wrap"], call["extra_args"], call["noise"], call["sigmas"]
        run = build_run(guider, settings, None if noise is None else noise.shape, layers_of(guider.inner_model),
                        reuse_projections=sigmas is not None and len(sigmas) > 2 and not _hooked(guider))
        _check_replaces(settings, extra_args.get("model_options"))
        if compiled_by_comfyui(extra_args.get("model_options")):
            prepare_compiled_run(run, guider.inner_model, settings.node)
        to = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        previous = to.get(RUN_KEY)
        to[RUN_KEY] = run
        try:
            out = executor(*args, **kwargs)
            nasa_sampler_sample.last_steered = frozenset(run.steered)
            check_steered(run, settings, guider, sigmas, extra_args.get("model_options"))
            if run.missed_window():
                s = run.schedule
                logging.warning("%s: NASA did not act in this run: no sampled step lies in its window (start_percent "
                                "%g, end_percent %g). One-step models sample at percent 0 only; widen the window.",
                                settings.node, s.start_percent, s.end_percent)
            return out
        finally:
            if previous is None:
                to.pop(RUN_KEY, None)
            else:
                to[RUN_KEY] = previous
    nasa_sampler_sample.nasa_settings = settings     # what the node asked for, for inspection (tests, tools)
    nasa_sampler_sample.last_steered = frozenset()    # the layers the last run steered (tests, tools)
    return nasa_sampler_sample


def check_steered(run: NasaRun, settings: NasaSettings, guider, sigmas, model_options) -> None:
    """No silent no-op: a run that had a negative to apply and steered no layer at all raises. NASA binds to
    ComfyUI internals; when a ComfyUI release moves one of them the result must be an error, not an image
    without the negative."""
    if run.steered or not run.expects_steering(sigmas, (getattr(guider, "conds", None) or {}).get("positive") or ()):
        return
    model = getattr(getattr(guider, "inner_model", None), "diffusion_model", None)
    lost = settings.replaces - nasa_replaces(model_options)
    cache = forward_replacing_cache(model_options)
    if cache is not None:
        hint = (f" {cache} runs its own copy of the model's forward, which calls the blocks without ComfyUI's "
                f"transformer_options, so NASA's layer patches never see this run. Remove {cache}, or use "
                f"ComfyUI's core EasyCache or LazyCache node instead: they keep NASA working.")
    elif settings.replaces and lost == settings.replaces:
        hint = (f" A node applied after Apply NASA Attention replaced all {len(settings.replaces)} of NASA's layer "
                f"patches: move that node before it.")
    else:
        hint = ""
    raise RuntimeError(
        f"{settings.node}: NASA steered no layer of this {settings.family} model ({type(model).__name__}) in "
        f"this sampling run although it had a negative to apply: the negative prompt was NOT honoured.{hint} "
        f"If nothing else patches the model, this ComfyUI version changed something NASA binds to: please "
        f"report it to the NASA pack with your ComfyUI version and model.")
