"""Getting negative prompts to sample time, for every model family (touches ComfyUI internals).

Where a negative can come from, highest priority first, decided per positive prompt:

1. a negative carried by that prompt's conditioning (NASA Negative Conditioning node),
2. the ``negative`` input of Apply NASA Attention,
3. the negative the sampler receives (``use_sampler_negative``) - also at cfg 1, where
   ComfyUI drops it from the model pass.

A ``SAMPLER_SAMPLE`` wrapper (a ModelPatcher wrapper, cloned with the model) reads the
sampler's processed conds, builds a :class:`NasaRun` and puts it into this run's
``transformer_options``; family adapters read it at every attention call. Uncond rows are
never steered.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..nasa_core import NegativeTerm, check_alpha, check_finite, steer

RUN_KEY = "nasa_run"            # transformer_options key holding the NasaRun of the current sampling run
CARRIED_KEY = "nasa_negative"   # conditioning-dict key written by NASA Negative Conditioning
WRAPPER_KEY = "nasa"            # ModelPatcher wrapper key


@dataclass
class NegativeEntry:
    """One conditioning entry of a negative prompt (ConditioningCombine makes several)."""
    cond: torch.Tensor                     # raw text-encoder output (batch, tokens, width)
    weight: float                          # share of the prompt: entries of one prompt are averaged, as ComfyUI does
    sigma_window: Optional[tuple] = None   # (sigma_start, sigma_end) from start/end_percent, or None = always
    attention_mask: Optional[torch.Tensor] = None   # the text encoder's token mask (1 = token), where it gives one
    _cache: dict = field(default_factory=dict, repr=False)

    def on(self, device, dtype) -> torch.Tensor:
        key = (device, dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self.cond.to(device=device, dtype=dtype)
        return t

    def active(self, sigma: Optional[float]) -> bool:
        if self.sigma_window is None or sigma is None:
            return True
        start, end = self.sigma_window
        return not (sigma > start or sigma < end)


@dataclass
class NegativePrompt:
    entries: list     # NegativeEntry, averaged
    alpha: float


def conditioning_entries(conditioning, node: str, input_name: str, single_batch: bool = False) -> list:
    """Validate a CONDITIONING value and return its [tensor, dict] entries.

    ``single_batch``: each entry must hold one prompt (batch 1), as a negative must: the same negative
    steers every image of the batch."""
    if conditioning is None:
        raise ValueError(f"{node}: '{input_name}' is not connected.")
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{node}: '{input_name}' is empty (no conditioning entries). Connect a CLIP Text Encode "
                         f"output with your negative prompt.")
    out = []
    for i, entry in enumerate(conditioning):
        if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not isinstance(entry[0], torch.Tensor):
            raise ValueError(f"{node}: '{input_name}' entry {i} is not a conditioning [tensor, options] pair.")
        t = entry[0]
        if t.ndim != 3 or t.shape[1] == 0:
            raise ValueError(f"{node}: '{input_name}' entry {i} has shape {tuple(t.shape)}; expected "
                             f"(batch, tokens>0, width) from a text encoder.")
        if single_batch:
            check_single_batch(t, node, f"'{input_name}'")
        check_finite(t, node, f"'{input_name}'")
        out.append((t, entry[1] if isinstance(entry[1], dict) else {}))
    return out


def check_single_batch(t: torch.Tensor, node: str, what: str) -> None:
    if t.shape[0] != 1:
        raise ValueError(f"{node}: {what} holds a batch of {t.shape[0]} prompts; a negative must be a single prompt "
                         f"(batch 1) - it steers every image of the batch. Encode one negative with CLIP Text Encode.")


def check_width(t: torch.Tensor, context_dim: Optional[int], family: str, node: str, what: str) -> None:
    if context_dim is not None and t.shape[-1] != context_dim:
        raise ValueError(
            f"{node}: {what} is {t.shape[-1]} wide but this {family} model's text input expects {context_dim}. "
            f"The negative was encoded with a different text encoder than the model's (CLIP and T5 outputs "
            f"differ in width): encode it with the same text encoder as the positive prompt (the CLIP output of "
            f"this model's checkpoint or CLIP loader).")


def _sigma_window(opts: dict, model_sampling) -> Optional[tuple]:
    """(sigma_start, sigma_end) of a conditioning entry: the sigmas ComfyUI's process_conds already put on
    the sampler's conds, else converted from start/end_percent (ConditioningSetTimestepRange)."""
    if "timestep_start" in opts or "timestep_end" in opts:
        return (float(opts.get("timestep_start", float("inf"))), float(opts.get("timestep_end", 0.0)))
    if model_sampling is None or ("start_percent" not in opts and "end_percent" not in opts):
        return None
    start = model_sampling.percent_to_sigma(opts.get("start_percent", 0.0))
    end = model_sampling.percent_to_sigma(opts.get("end_percent", 1.0))
    return (float(start), float(end))


def negative_prompt(entries, alpha: float, model_sampling=None) -> NegativePrompt:
    n = len(entries)
    return NegativePrompt([NegativeEntry(t, 1.0 / n, _sigma_window(o, model_sampling), o.get("attention_mask"))
                           for t, o in entries], alpha)


@dataclass
class NasaSettings:
    """What Apply NASA Attention was asked for; cloned along with the model."""
    alpha: float
    negative: Optional[list]            # validated [tensor, dict] entries, or None
    use_sampler_negative: bool
    node: str
    family: str
    context_dim: Optional[int]


class NasaRun:
    """Per-sampling-run state: which negative steers which positive prompt (by cond uuid)."""

    def __init__(self, default: Optional[NegativePrompt], carried: dict, node: str):
        self.default = default
        self.carried = carried
        self.node = node
        self.layers: dict = {}  # set by the family adapter at sample time

    def prompt_for(self, uuid) -> Optional[NegativePrompt]:
        return self.carried.get(uuid, self.default)

    def terms(self, prompt: Optional[NegativePrompt], sigma: Optional[float]) -> tuple:
        if prompt is None or prompt.alpha == 0.0:
            return ()
        return tuple((e, prompt.alpha * e.weight) for e in prompt.entries if e.active(sigma))

    def groups(self, extra_options: dict, batch: int) -> list:
        """``[(terms, rows), ...]``: the positive rows of this forward, grouped by the negative terms
        that steer them. ``terms`` is ``((NegativeEntry, coef), ...)``, ``rows`` a list of batch rows.
        Uncond/negative chunks (``cond_or_uncond`` 1 at cfg > 1) are never steered."""
        cond_or_uncond = extra_options.get("cond_or_uncond") or [0]
        uuids = extra_options.get("uuids") or [None] * len(cond_or_uncond)
        if batch % len(cond_or_uncond) != 0:
            raise RuntimeError(f"{self.node}: batch of {batch} rows does not split into {len(cond_or_uncond)} chunks")
        per_chunk = batch // len(cond_or_uncond)
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        groups: dict = {}
        for i, (kind, uid) in enumerate(zip(cond_or_uncond, uuids)):
            if kind != 0:
                continue
            terms = self.terms(self.prompt_for(uid), sigma)
            if terms:
                groups.setdefault(tuple((id(e), c) for e, c in terms), (terms, []))[1].extend(
                    range(i * per_chunk, (i + 1) * per_chunk))
        return list(groups.values())

    def steer(self, z_pos: torch.Tensor, q: torch.Tensor, extra_options: dict, heads: int,
              project: Callable[[torch.Tensor], tuple], attention_fn) -> torch.Tensor:
        """Subtract every positive chunk's negative attention from ``z_pos`` (batch rows of q).

        ``project(neg)`` returns the layer's (K-, V-) for a negative already on q's device/dtype;
        ``attention_fn(q, k, v, heads, mask=None)`` is the host's attention kernel.
        """
        for terms, rows in self.groups(extra_options, q.shape[0]):
            negs = []
            for entry, coef in terms:
                k, v = project(entry.on(q.device, q.dtype))     # batch 1: shared by every steered row
                negs.append(NegativeTerm(k, v, coef))
            z_pos = steer(z_pos, q, negs, heads, rows, attention_fn)   # a run of rows becomes a slice: no device sync
        return z_pos


def _carried_negatives(positive_conds: Sequence[dict], settings: NasaSettings, model_sampling) -> dict:
    carried = {}
    for c in positive_conds:
        spec = c.get(CARRIED_KEY)
        if spec is None:
            continue
        for t, _ in spec["entries"]:
            check_width(t, settings.context_dim, settings.family, "NASA Negative Conditioning",
                        "the carried negative")
        alpha = settings.alpha if spec.get("alpha") is None else spec["alpha"]
        carried[c["uuid"]] = negative_prompt(spec["entries"], alpha, model_sampling)
    return carried


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


def build_run(guider, settings: NasaSettings) -> NasaRun:
    model = getattr(guider, "inner_model", None)
    model_sampling = getattr(model, "model_sampling", None)
    conds = getattr(guider, "conds", None) or {}
    carried = _carried_negatives(conds.get("positive") or [], settings, model_sampling)
    if settings.negative is not None:
        default = negative_prompt(settings.negative, settings.alpha, model_sampling)
    elif settings.use_sampler_negative:
        default = _sampler_negative(guider, settings, model_sampling)
    else:
        default = None
    return NasaRun(default, carried, settings.node)


def make_sampler_wrapper(settings: NasaSettings, prepare: Callable):
    """SAMPLER_SAMPLE wrapper: publish this run's NasaRun in transformer_options for the adapters.

    ``prepare(run, base_model)`` lets the family adapter resolve its layers on the model being sampled.
    """
    def nasa_sampler_sample(executor, *args, **kwargs):
        guider = args[0] if args else kwargs.get("model_wrap")
        extra_args = args[2] if len(args) > 2 else kwargs["extra_args"]
        run = build_run(guider, settings)
        prepare(run, guider.inner_model)
        to = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        previous = to.get(RUN_KEY)
        to[RUN_KEY] = run
        try:
            return executor(*args, **kwargs)
        finally:
            if previous is None:
                to.pop(RUN_KEY, None)
            else:
                to[RUN_KEY] = previous
    return nasa_sampler_sample


def attach_model(run: NasaRun, base_model) -> None:
    """``attach_layers`` of the adapters that need only the model being sampled (its diffusion model)."""
    run.layers = {"model": base_model.diffusion_model}


def set_wrapper(model_patcher, kind: str, fn: Callable) -> None:
    """Install NASA's ModelPatcher wrapper of ``kind`` (a ``comfy.patcher_extension.WrappersMP`` name),
    replacing one a previous Apply NASA Attention put there."""
    import comfy.patcher_extension as pe
    kind = getattr(pe.WrappersMP, kind)
    model_patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)
    model_patcher.add_wrapper_with_key(kind, WRAPPER_KEY, fn)


def make_carried_negative(conditioning, negative, alpha, node: str):
    """NASA Negative Conditioning: a copy of ``conditioning`` whose entries carry ``negative``."""
    pos = conditioning_entries(conditioning, node, "conditioning")
    neg = conditioning_entries(negative, node, "negative", single_batch=True)
    if alpha is not None:
        alpha = check_alpha(alpha, node, low=-float("inf"))     # finite, at most 2; any negative value = inherit
        alpha = None if alpha < 0 else alpha
    widths = {t.shape[-1] for t, _ in pos}
    for t, _ in neg:
        if widths and t.shape[-1] not in widths:
            raise ValueError(f"{node}: 'negative' is {t.shape[-1]} wide but 'conditioning' is "
                             f"{sorted(widths)[0]} wide: they come from different text encoders. Encode the "
                             f"negative with the same CLIP as the positive prompt.")
    spec = {"entries": neg, "alpha": alpha}
    return [[t, {**opts, CARRIED_KEY: spec}] for t, opts in pos]
