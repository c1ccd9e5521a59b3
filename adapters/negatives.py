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
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..nasa_core import Guard, NegativeTerm, check_alpha, check_finite, steer
from .binding import wrapped_call
from ..nasa_core.controls import Schedule, sigma_to_percent, token_region

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
    mask: Optional[torch.Tensor] = None    # (frames, H, W) in [0, 1]: the region it steers; None = everywhere


class Term(NamedTuple):
    """One negative entry steering a group of rows at one forward: subtracted with ``coef``."""
    entry: NegativeEntry
    coef: float
    prompt: NegativePrompt
    area: Optional[tuple] = None     # the positive's area crop ((offset, size) per latent dim), masked prompts only


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


def negative_prompt(entries, alpha: float, model_sampling=None, mask: Optional[torch.Tensor] = None) -> NegativePrompt:
    n = len(entries)
    return NegativePrompt([NegativeEntry(t, 1.0 / n, _sigma_window(o, model_sampling), o.get("attention_mask"))
                           for t, o in entries], alpha, mask)


@dataclass
class NegativeSpec:
    """One negative of a NASA_NEGATIVES list (NASA Negative node): its entries, strength and region."""
    entries: list                       # validated [tensor, dict] conditioning entries
    alpha: Optional[float]              # None = the alpha of the node that applies it
    mask: Optional[torch.Tensor] = None     # (frames, H, W) float in [0, 1], or None


@dataclass
class NasaSettings:
    """What Apply NASA Attention was asked for; cloned along with the model."""
    alpha: float
    negatives: Optional[list]           # NegativeSpec list (the node's own negatives), or None
    use_sampler_negative: bool
    node: str
    family: str
    context_dim: Optional[int]
    schedule: Schedule = field(default_factory=Schedule)
    blocks: Optional[dict] = None       # {(group, index): alpha multiplier}; None = every block at 1
    replaces: frozenset = frozenset()   # NASA's ("attn2" | "dit", key) replaces, checked at sample time
    guard: Optional[Guard] = None       # the stability guard (nasa_core.Guard); None = plain NASA
    stream: str = "propagated"          # joint-attention models: the negative stream (joint.STREAMS)
    stream_last: Optional[tuple] = None  # joint models with a block selection: the last steered layer, and
    stream_skip: frozenset = frozenset()  # the layers after it (the stream stops there: nothing reads it)


class NasaRun:
    """Per-sampling-run state: which negatives steer which positive prompt (by cond uuid), and when
    (``schedule``), where (``blocks``) and on which region (each prompt's mask) they act."""

    def __init__(self, default, carried: dict, node: str, schedule: Optional[Schedule] = None,
                 percent_to_sigma: Optional[Callable[[float], float]] = None, blocks: Optional[dict] = None,
                 guard: Optional[Guard] = None, stream: str = "propagated", stream_last: Optional[tuple] = None,
                 stream_skip: frozenset = frozenset()):
        self.default = _prompt_list(default)
        self.guard = guard if guard is not None and guard.active else None   # None: plain NASA's code path
        self.stream = stream
        self.stream_last, self.stream_skip = stream_last, stream_skip      # see NasaSettings
        self.carried = {uuid: _prompt_list(p) for uuid, p in carried.items()}
        self.node = node
        self.schedule = None if schedule is None or schedule.is_default else schedule
        self.percent_to_sigma = percent_to_sigma    # the model's (ComfyUI's percent convention), for ``schedule``
        self.blocks = blocks
        self.latent: Optional[tuple] = None    # the sampled latent's spatial size, (H, W) or (T, H, W)
        self.areas: dict = {}                  # positive uuid -> area crop, for masked negatives
        self.layers: dict = {}  # set by the family adapter at sample time
        self._regions: dict = {}
        self._factors: dict = {}    # sigma -> the schedule's factor there (0 outside the window)
        self.reuse_projections = False  # set by the sampler wrapper for multi-step runs without weight hooks
        self._reused: dict = {}     # (name, id(x)) -> (x, weights key, result): see reuse()
        self.steered: set = set()   # the layers ((group, index)) that subtracted a negative in this run

    def mark_steered(self, layer) -> None:
        """Every steering call site reports its layer here (``(group, index)``, as block selections name it;
        None where the caller has no name): a run that steers nothing is an error (:func:`check_steered`)."""
        self.steered.add(layer)

    def expects_steering(self, sigmas, positive_conds: Sequence[dict] = ()) -> bool:
        """Whether this run, sampled at ``sigmas``, has something to steer somewhere: a positive prompt with a
        negative of alpha != 0, an entry active, inside the schedule's window at some sampled sigma, and a block
        selection with a non-zero multiplier."""
        if self.blocks is not None and not any(v != 0.0 for v in self.blocks.values()):
            return False
        sampled = [float(s) for s in sigmas[:-1]] if sigmas is not None else [None]
        conds = [c for c in positive_conds if isinstance(c, dict)] or [{}]
        for c in conds:
            prompts = self.prompts_for(c.get("uuid"))
            start, end = float(c.get("timestep_start", float("inf"))), float(c.get("timestep_end", 0.0))
            for sigma in sampled:
                if sigma is not None and (sigma > start or sigma < end):
                    continue            # the positive itself is not sampled at this sigma
                if self.factor(sigma) != 0.0 and self.terms(prompts, sigma):
                    return True
        return False

    def reuse(self, name, modules: Sequence[torch.nn.Module], x, compute: Callable):
        """``compute(x)``, computed once per sampling run and reused at later steps while ``x`` (the same
        object: the negative as this run holds it, or an embedding this method returned) and the parameters of
        ``modules`` are unchanged. Exact: the same modules on the same input give the same result. Only when
        ``reuse_projections`` is on (multi-step runs without ComfyUI weight hooks, set by the sampler wrapper:
        one-step runs keep nothing); never for layers whose weights ComfyUI patches at cast time (lowvram weight
        functions); never where autograd could flow (gradients must reach every step)."""
        if not self.reuse_projections:
            return compute(x)
        weights = _weights_key(modules, torch.is_grad_enabled())
        if weights is None or (torch.is_grad_enabled() and getattr(x, "requires_grad", False)):
            return compute(x)
        key = (name, id(x))
        hit = self._reused.get(key)
        if hit is not None and hit[0] is x and hit[1] == weights:
            return hit[2]
        out = compute(x)
        self._reused[key] = (x, weights, out)      # holding x keeps its id unique for the run
        return out

    def prompts_for(self, uuid) -> list:
        return self.carried.get(uuid, self.default)

    def factor(self, sigma: Optional[float]) -> float:
        """The schedule's alpha multiplier at ``sigma`` (0 outside the window)."""
        if self.schedule is None or sigma is None:
            return 1.0
        if self.percent_to_sigma is None:
            raise RuntimeError(f"{self.node}: a start/end percent window needs the model's sampling schedule.")
        f = self._factors.get(sigma)
        if f is None:
            inside = self.schedule.inside(sigma, self.percent_to_sigma)
            f = self._factors[sigma] = self.schedule.ramp(sigma_to_percent(sigma, self.percent_to_sigma)) if inside else 0.0
        return f

    def missed_window(self) -> bool:
        """A window was set, steps were sampled, and none of them lay inside it (NASA never acted)."""
        return self.schedule is not None and bool(self._factors) and not any(self._factors.values())

    def terms(self, prompts: Sequence[NegativePrompt], sigma: Optional[float], factor: float = 1.0,
              area: Optional[tuple] = None) -> tuple:
        out = []
        for prompt in prompts:
            if prompt.alpha == 0.0:
                continue
            crop = area if prompt.mask is not None else None
            out.extend(Term(e, prompt.alpha * e.weight * factor, prompt, crop)
                       for e in prompt.entries if e.active(sigma))
        return tuple(out)

    def layer_scale(self, layer) -> float:
        """The block selection's alpha multiplier for ``layer`` ((group, index)); 0 = not steered."""
        if self.blocks is None:
            return 1.0
        return self.blocks.get(layer, 0.0)

    def groups(self, extra_options: dict, batch: int, layer=None) -> list:
        """``[(terms, rows), ...]``: the positive rows of this forward, grouped by the negative terms
        that steer them. ``terms`` is a tuple of :class:`Term`, ``rows`` a list of batch rows; coefs
        include the schedule's factor and, given ``layer``, the block selection's multiplier.
        Uncond/negative chunks (``cond_or_uncond`` 1 at cfg > 1) are never steered."""
        cond_or_uncond = extra_options.get("cond_or_uncond") or [0]
        uuids = extra_options.get("uuids") or [None] * len(cond_or_uncond)
        if batch % len(cond_or_uncond) != 0:
            raise RuntimeError(f"{self.node}: batch of {batch} rows does not split into {len(cond_or_uncond)} chunks")
        per_chunk = batch // len(cond_or_uncond)
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        factor = self.factor(sigma) * (1.0 if layer is None else self.layer_scale(layer))
        if factor == 0.0:
            return []
        groups: dict = {}
        for i, (kind, uid) in enumerate(zip(cond_or_uncond, uuids)):
            if kind != 0:
                continue
            terms = self.terms(self.prompts_for(uid), sigma, factor, self.areas.get(uid))
            if terms:
                groups.setdefault(tuple((id(t.entry), t.coef, t.area) for t in terms), (terms, []))[1].extend(
                    range(i * per_chunk, (i + 1) * per_chunk))
        return list(groups.values())

    def region(self, term: Term, n_tokens: int, device, dtype) -> Optional[torch.Tensor]:
        """The term's mask as a (1, n_tokens) weight over a layer's image query tokens, or None (everywhere)."""
        mask = term.prompt.mask
        if mask is None:
            return None
        key = (id(term.prompt), term.area, n_tokens, device, dtype)
        hit = self._regions.get(key)
        if hit is None:
            if self.latent is None:
                raise RuntimeError(f"{self.node}: a masked negative needs the sampled latent's size; this sampler "
                                   f"did not pass through NASA's sampler wrapper.")
            region = token_region(mask, self.latent, n_tokens, term.area)
            if region is None:
                raise RuntimeError(f"{self.node}: a layer has {n_tokens} image tokens, which is no downscale of the "
                                   f"{'x'.join(map(str, self.latent))} latent; NASA cannot place the negative's mask "
                                   f"on it. Remove the mask for this model and please report it.")
            hit = self._regions[key] = (term.prompt, region.to(device=device, dtype=dtype)[None])
        return hit[1]

    def negative_terms(self, terms: Sequence[Term], n_tokens: int, device, dtype, project: Callable,
                       mask_of: Optional[Callable] = None) -> list:
        """NegativeTerms of ``terms`` for a layer whose steered queries are ``n_tokens`` image tokens;
        ``project(term)`` gives the layer's (K-, V-), ``mask_of(term)`` an optional key mask."""
        return [NegativeTerm(*project(t), t.coef, None if mask_of is None else mask_of(t),
                             self.region(t, n_tokens, device, dtype)) for t in terms]

    def steer(self, z_pos: torch.Tensor, q: torch.Tensor, extra_options: dict, heads: int,
              project: Callable[[torch.Tensor], tuple], attention_fn, layer=None, inplace: bool = False) -> torch.Tensor:
        """Subtract every positive chunk's negative attention from ``z_pos`` (batch rows of q); every query
        token is an image token. ``layer`` ((group, index)) picks the block selection's multiplier.

        ``project(neg)`` returns the layer's (K-, V-) for a negative already on q's device/dtype;
        ``attention_fn(q, k, v, heads, mask=None)`` is the host's attention kernel; ``inplace``: z_pos is the
        caller's own fresh tensor (nasa_core.steer overwrites it instead of copying).
        """
        for terms, rows in self.groups(extra_options, q.shape[0], layer):
            negs = self.negative_terms(terms, q.shape[1], q.device, q.dtype,
                                       lambda t: project(t.entry.on(q.device, q.dtype)))  # batch 1: every row
            z_pos = steer(z_pos, q, negs, heads, rows, attention_fn, inplace, guard=self.guard)  # a run of rows: a slice
            self.mark_steered(layer)
        return z_pos


_CAST_TIME_PATCHES = ("weight_function", "bias_function", "weight_lowvram_function", "bias_lowvram_function")


def _weights_key(modules, grad: bool = False) -> Optional[tuple]:
    """What identifies the modules' current weights: each parameter's object, storage and version counter
    (a replaced parameter, a moved one, an in-place update all change it); None when a layer applies weight
    patches at cast time (comfy.ops lowvram weight/bias functions; ComfyUI 0.33's dynamic-VRAM patcher keeps them
    as ``weight_lowvram_function`` / ``bias_lowvram_function``), whose result NASA cannot vouch for, or when
    ``grad`` (autograd on) and a parameter requires grad."""
    key = []
    for module in modules:
        for sub in module.modules():
            if any(getattr(sub, name, None) for name in _CAST_TIME_PATCHES):
                return None
        for p in module.parameters():
            if grad and p.requires_grad:
                return None
            try:
                version = p._version
            except RuntimeError:        # inference tensors keep no version counter
                version = None
            key.append((id(p), p.data_ptr(), p.device, version))
    return tuple(key)


def _hooked(guider) -> bool:
    """ComfyUI weight hooks (scheduled LoRA hooks and the like) may change weights between steps or rows."""
    if getattr(getattr(guider, "model_patcher", None), "hook_patches", None):
        return True
    conds = getattr(guider, "conds", None) or {}
    return any(c.get("hooks") is not None for cs in conds.values() for c in cs if isinstance(c, dict))


def _prompt_list(p) -> list:
    if p is None:
        return []
    return list(p) if isinstance(p, (list, tuple)) else [p]


def _prompts(specs: Sequence[NegativeSpec], alpha: float, model_sampling) -> list:
    return [negative_prompt(s.entries, alpha if s.alpha is None else s.alpha, model_sampling, s.mask) for s in specs]


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


def build_run(guider, settings: NasaSettings, latent_shape=None) -> NasaRun:
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
    percent_to_sigma = getattr(model_sampling, "percent_to_sigma", None)
    run = NasaRun(default, carried, settings.node, settings.schedule, percent_to_sigma, settings.blocks,
                  settings.guard, settings.stream, settings.stream_last, settings.stream_skip)
    if latent_shape is not None:
        run.latent = tuple(int(s) for s in latent_shape[2:])
        if any(p.mask is not None for ps in [run.default, *run.carried.values()] for p in ps):
            run.areas = {c["uuid"]: _area_crop(c.get("area"), run.latent) for c in positive if "uuid" in c}
    return run


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


def make_sampler_wrapper(settings: NasaSettings, prepare: Callable):
    """SAMPLER_SAMPLE wrapper: publish this run's NasaRun in transformer_options for the adapters.

    ``prepare(run, base_model)`` lets the family adapter resolve its layers on the model being sampled.
    """
    def nasa_sampler_sample(executor, *args, **kwargs):
        call = wrapped_call(executor, args, kwargs, "ComfyUI's sampler (KSAMPLER.sample)",
                            needs=("model_wrap", "sigmas", "extra_args", "noise"))
        guider, extra_args, noise, sigmas = call["model_wrap"], call["extra_args"], call["noise"], call["sigmas"]
        run = build_run(guider, settings, None if noise is None else noise.shape)
        run.reuse_projections = sigmas is not None and len(sigmas) > 2 and not _hooked(guider)
        prepare(run, guider.inner_model)
        _check_replaces(settings, extra_args.get("model_options"))
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
    hint = (f" A node applied after Apply NASA Attention replaced all {len(settings.replaces)} of NASA's layer "
            f"patches: move that node before it." if settings.replaces and lost == settings.replaces else "")
    raise RuntimeError(
        f"{settings.node}: NASA steered no layer of this {settings.family} model ({type(model).__name__}) in "
        f"this sampling run although it had a negative to apply: the negative prompt was NOT honoured.{hint} "
        f"If nothing else patches the model, this ComfyUI version changed something NASA binds to: please "
        f"report it to the NASA pack with your ComfyUI version and model.")


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


def _check_same_encoder(entries, widths: set, node: str, others: str, fix: str) -> None:
    """Every entry of a negative has one of ``widths`` (those of the conditioning it goes with), if any."""
    for t, _ in entries:
        if widths and t.shape[-1] not in widths:
            raise ValueError(f"{node}: 'negative' is {t.shape[-1]} wide but {others} {sorted(widths)[0]} wide: they "
                             f"come from different text encoders. {fix}")


def make_carried_negative(conditioning, negative, alpha, node: str):
    """NASA Negative Conditioning: a copy of ``conditioning`` whose entries carry ``negative``."""
    pos = conditioning_entries(conditioning, node, "conditioning")
    neg = conditioning_entries(negative, node, "negative", single_batch=True)
    if alpha is not None:
        alpha = check_alpha(alpha, node, low=-float("inf"))     # finite, at most 2; any negative value = inherit
        alpha = None if alpha < 0 else alpha
    _check_same_encoder(neg, {t.shape[-1] for t, _ in pos}, node, "'conditioning' is",
                        "Encode the negative with the same CLIP as the positive prompt.")
    spec = {"entries": neg, "alpha": alpha}
    return [[t, {**opts, CARRIED_KEY: spec}] for t, opts in pos]


def make_negative_spec(negative, alpha, mask=None, previous=None, node: str = "NASA Negative") -> list:
    """NASA Negative: ``previous`` (a NASA_NEGATIVES list, or None) plus one negative with its own alpha
    (negative alpha = the applying node's) and optional MASK (its region: (H, W) or (frames, H, W), 0..1)."""
    entries = conditioning_entries(negative, node, "negative", single_batch=True)
    alpha = check_alpha(alpha, node, low=-float("inf"))
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
            raise ValueError(f"{node}: 'mask' must be a MASK (height, width) or (frames, height, width); got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}. Connect a mask from Load Image (its "
                             f"mask output), SolidMask or a mask editor.")
        mask = mask.detach().float().cpu()
        mask = mask[None] if mask.ndim == 2 else mask
        check_finite(mask, node, "'mask'")
        if float(mask.min()) < 0.0 or float(mask.max()) > 1.0:
            raise ValueError(f"{node}: 'mask' has values in [{float(mask.min()):g}, {float(mask.max()):g}]; a mask "
                             f"must lie in [0, 1] (1 = steer here). Normalise it (e.g. ThresholdMask).")
    items = [] if previous is None else list(previous)
    if not all(isinstance(n, NegativeSpec) for n in items):
        raise ValueError(f"{node}: 'negatives' must come from another NASA Negative node.")
    _check_same_encoder(entries, {t.shape[-1] for s in items for t, _ in s.entries}, node,
                        "the chained negatives are", "Encode every negative with the same CLIP as the positive prompt.")
    return items + [NegativeSpec(entries, None if alpha < 0 else alpha, mask)]
