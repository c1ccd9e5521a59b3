"""One sampling run's NASA state, read by every family adapter at every steered layer.

Names: a :class:`NegativePrompt` (entries :class:`PromptEntry`, an alpha, a region) is a negative resolved for this
run; at each forward, :meth:`NasaRun.groups` gives the :class:`RowTerm` s that steer each group of positive rows,
and a layer projects each into a :class:`nasa_core.NegativeTerm` (its K-, V-) for :func:`nasa_core.steer`.
:mod:`.sampler` builds the run and puts it into ``transformer_options[RUN_KEY]``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..nasa_core import Guard, NegativeTerm, steer
from ..nasa_core.controls import Schedule, sigma_to_percent, token_region
from .reuse import ProjectionCache

RUN_KEY = "nasa_run"            # transformer_options key holding the NasaRun of the current sampling run
STEP_KEY = "nasa_step"          # transformer_options key holding the current model call's StepPlan


@dataclass
class PromptEntry:
    """One conditioning entry of a :class:`NegativePrompt` (ConditioningCombine makes several)."""
    cond: torch.Tensor                     # raw text-encoder output (batch, tokens, width)
    weight: float                          # share of the prompt: entries of one prompt are averaged, as ComfyUI does
    sigma_window: Optional[tuple] = None   # (sigma_start, sigma_end) from start/end_percent, or None = always
    attention_mask: Optional[torch.Tensor] = None   # the text encoder's token mask (1 = token), where it gives one
    _cache: dict = field(default_factory=dict, repr=False)
    options: dict = field(default_factory=dict, repr=False, compare=False)
    """The entry's conditioning options: the text inputs some models take besides ``cond`` (HiDream's
    ``conditioning_llama3``, Anima's ``t5xxl_ids``), read by their family adapters through :meth:`option_on`."""

    def on(self, device, dtype) -> torch.Tensor:
        if torch.compiler.is_compiling():       # a cast in the graph; a cache would be guarded on and recompile
            return self.cond.to(device=device, dtype=dtype)
        key = (device, dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self.cond.to(device=device, dtype=dtype)
        return t

    def option_on(self, name: str, device, dtype) -> Optional[torch.Tensor]:
        """The tensor option ``name`` on ``device`` in ``dtype`` (cached as :meth:`on` caches ``cond``), or None."""
        value = self.options.get(name)
        if not isinstance(value, torch.Tensor):
            return None
        if torch.compiler.is_compiling():
            return value.to(device=device, dtype=dtype)
        key = (name, device, dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = value.to(device=device, dtype=dtype)
        return t

    def active(self, sigma: Optional[float]) -> bool:
        if self.sigma_window is None or sigma is None:
            return True
        start, end = self.sigma_window
        return not (sigma > start or sigma < end)


@dataclass
class NegativePrompt:
    """A negative resolved for one sampling run: its entries (timed), its alpha and its region."""
    entries: list     # PromptEntry, averaged
    alpha: float
    mask: Optional[torch.Tensor] = None    # (frames, H, W) in [0, 1]: the region it steers; None = everywhere


class RowTerm(NamedTuple):
    """One prompt entry steering a group of rows at one forward, subtracted with ``coef``; a layer projects it into
    a :class:`nasa_core.NegativeTerm` (its K-, V-)."""
    entry: PromptEntry
    coef: float
    prompt: NegativePrompt
    area: Optional[tuple] = None     # the positive's area crop ((offset, size) per latent dim), masked prompts only
    slot: int = 0                    # the entry's index among the distinct entries of this model call's plan: code
                                     # that keeps one result per entry keys on it (a compiled graph would bake id())


class StepPlan(NamedTuple):
    """What one model call steers, decided once per call outside the model (:meth:`NasaRun.plan`, from the
    ``APPLY_MODEL`` wrapper of :mod:`.model_call`): no layer reads the sigma off the device (a host sync and,
    under torch.compile, a graph break) and nothing a compiled layer reads changes from one step to the next
    unless what it steers does (else every step would recompile).

    ``signature`` spells out every Python value a traced layer bakes into a compiled graph (coefficients, rows,
    the run's settings, the negatives' shapes). torch.compile does not re-check transformer_options before it
    reuses a graph when ComfyUI's sampler calls a compiled model (observed with torch 2.13: a graph traced for
    the uncond call ran for the cond call); :func:`.model_call.nasa_step` puts the signature on the diffusion
    model itself, whose attributes it does check, and :func:`.model_call.nasa_forward_check` reads it there."""
    n_chunks: int           # chunks of the call's batch (cond_or_uncond)
    groups: tuple           # ((terms, chunk indices), ...): RowTerms at ``factor`` and the positive chunks they steer
    factor: float           # the schedule's alpha multiplier at this call's sigma
    signature: str = ""


def _tensor_key(t) -> Optional[tuple]:
    return None if t is None else (tuple(t.shape), str(t.dtype), t.device.type)


def _options_key(options: dict) -> tuple:
    """The shapes of an entry's tensor options (a family adapter may read them: HiDream's Llama states)."""
    return tuple(sorted((str(k), _tensor_key(v)) for k, v in options.items() if isinstance(v, torch.Tensor)))


def with_plan(options: dict) -> dict:
    """``options`` (a model call's transformer_options holding a NasaRun) with the call's :class:`StepPlan`, made
    here unless an outer wrapper put it there."""
    if STEP_KEY in options:
        return options
    return {**options, STEP_KEY: options[RUN_KEY].plan(options)}


def sigma_window(opts: dict, model_sampling) -> Optional[tuple]:
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
    return NegativePrompt([PromptEntry(t, 1.0 / n, sigma_window(o, model_sampling), o.get("attention_mask"),
                                       options=o) for t, o in entries], alpha, mask)


def prompt_list(p) -> list:
    if p is None:
        return []
    return list(p) if isinstance(p, (list, tuple)) else [p]


class NasaRun:
    """Per-sampling-run state: which negatives steer which positive prompt (by cond uuid), and when
    (``schedule``), where (``blocks``) and on which region (each prompt's mask) they act."""

    def __init__(self, default, carried: dict, node: str, schedule: Optional[Schedule] = None,
                 percent_to_sigma: Optional[Callable[[float], float]] = None, blocks: Optional[dict] = None,
                 guard: Optional[Guard] = None, stream: str = "propagated", stream_last: Optional[tuple] = None,
                 stream_skip: frozenset = frozenset(), layers: Optional[dict] = None,
                 latent: Optional[tuple] = None, areas: Optional[dict] = None, reuse_projections: bool = False,
                 method=None):
        self.default = prompt_list(default)
        self.guard = guard if guard is not None and guard.active else None   # None: plain NASA's code path
        self.method = method        # None: NASA; nasa_core.Nag / Vsf: that method on the same terms (nasa_core.steer)
        self.stream = stream
        self.stream_last, self.stream_skip = stream_last, stream_skip      # see sampler.NasaSettings
        self.carried = {uuid: prompt_list(p) for uuid, p in carried.items()}
        self.node = node
        self.schedule = None if schedule is None or schedule.is_default else schedule
        self.percent_to_sigma = percent_to_sigma    # the model's (ComfyUI's percent convention), for ``schedule``
        self.blocks = blocks
        self.layers = {} if layers is None else layers     # the family's Family.layers of the model being sampled
        self.latent = latent                   # the sampled latent's spatial size, (H, W) or (T, H, W)
        self.areas = {} if areas is None else areas        # positive uuid -> area crop, for masked negatives
        self.projections = ProjectionCache(reuse_projections)   # multi-step runs without weight hooks: reused
        self._regions: dict = {}
        self._factors: dict = {}    # sigma -> the schedule's factor there (0 outside the window)
        self._steered: set = set()  # the layers that subtracted a negative in this run's earlier model calls
        self._marks: set = set()    # ... in the current one: a fresh set per call (see new_call)

    @property
    def steered(self) -> frozenset:
        """The layers ((group, index)) that subtracted a negative in this run."""
        return frozenset(self._steered | self._marks)

    @property
    def call_steered(self) -> frozenset:
        """The layers that subtracted a negative in the current model call (since :meth:`new_call`)."""
        return frozenset(self._marks)

    def mark_steered(self, layer) -> None:
        """Every steering call site reports its layer here (``(group, index)``, as block selections name it;
        None where the caller has no name): a run that steers nothing is an error (:func:`.sampler.check_steered`)."""
        self._marks.add(layer)

    def new_call(self) -> None:
        """A model call starts: its layers mark a fresh, empty set. A torch.compile'd layer is guarded on the
        contents of the set it adds to; one that grew over the run would recompile the model at its second call."""
        self._steered |= self._marks
        self._marks = set()

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
        """``compute(x)``, kept for the later steps of this run where :class:`.reuse.ProjectionCache` can prove
        it unchanged (``name``: what is computed, e.g. ``("kv",) + layer``)."""
        return self.projections.get(name, modules, x, compute)

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
            out.extend(RowTerm(e, prompt.alpha * e.weight * factor, prompt, crop)
                       for e in prompt.entries if e.active(sigma))
        return tuple(out)

    def layer_scale(self, layer) -> float:
        """The block selection's alpha multiplier for ``layer`` ((group, index)); 0 = not steered."""
        if self.blocks is None:
            return 1.0
        return self.blocks.get(layer, 0.0)

    def plan(self, options: dict) -> StepPlan:
        """This model call's :class:`StepPlan` (``options``: its transformer_options): the positive chunks of
        ``cond_or_uncond``, grouped by the negative terms that steer them at the call's sigma. Uncond/negative
        chunks (``cond_or_uncond`` 1 at cfg > 1) are never steered."""
        cond_or_uncond = options.get("cond_or_uncond") or [0]
        uuids = options.get("uuids") or [None] * len(cond_or_uncond)
        sigmas = options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        factor = self.factor(sigma)
        groups: dict = {}
        if factor != 0.0:
            for i, (kind, uid) in enumerate(zip(cond_or_uncond, uuids)):
                if kind != 0:
                    continue
                terms = self.terms(self.prompts_for(uid), sigma, factor, self.areas.get(uid))
                if terms:
                    groups.setdefault(tuple((id(t.entry), t.coef, t.area) for t in terms), (terms, []))[1].append(i)
        slots: dict = {}
        grouped = tuple((tuple(t._replace(slot=slots.setdefault(id(t.entry), len(slots))) for t in terms), tuple(chunks))
                        for terms, chunks in groups.values())
        return StepPlan(len(cond_or_uncond), grouped, factor, self._signature(len(cond_or_uncond), grouped, factor))

    def _signature(self, n_chunks: int, groups: tuple, factor: float) -> str:
        terms = tuple((chunks, tuple((t.coef, t.entry.weight, t.prompt.alpha, t.area, _tensor_key(t.entry.cond),
                                      _tensor_key(t.entry.attention_mask), _tensor_key(t.prompt.mask))
                                     for t in ts)) for ts, chunks in groups)
        return repr((self.settings_signature, n_chunks, factor, terms))

    @functools.cached_property
    def settings_signature(self) -> str:
        """The run's settings a compiled graph bakes in, whatever the call: the method, the guard, the stream, the block
        selection, the latent's size, and each negative's alpha, weights and shapes. Fixed for the run (a NasaRun
        is complete when constructed): made once, not at every model call."""
        prompts = [p for ps in [self.default, *self.carried.values()] for p in ps]
        negatives = tuple((p.alpha, _tensor_key(p.mask), tuple((e.weight, _tensor_key(e.cond),
                                                                 _tensor_key(e.attention_mask),
                                                                 _options_key(e.options)) for e in p.entries))
                          for p in prompts)
        return repr((repr(self.method), repr(self.guard), self.stream, self.stream_last, tuple(sorted(self.stream_skip, key=repr)),
                     None if self.blocks is None else tuple(sorted(self.blocks.items(), key=repr)), self.latent,
                     negatives))

    def groups(self, extra_options: dict, batch: int, layer=None) -> list:
        """``[(terms, rows), ...]``: the positive rows of this forward, grouped by the negative terms
        that steer them. ``terms`` is a tuple of :class:`RowTerm`, ``rows`` a list of batch rows; coefs
        include the schedule's factor and, given ``layer``, the block selection's multiplier. The call's
        :class:`StepPlan` comes from ``extra_options`` (put there per model call), else is made here."""
        plan = extra_options.get(STEP_KEY)
        if plan is None:
            plan = self.plan(extra_options)
        if batch % plan.n_chunks != 0:
            raise RuntimeError(f"{self.node}: batch of {batch} rows does not split into {plan.n_chunks} chunks")
        scale = 1.0 if layer is None else self.layer_scale(layer)
        if scale == 0.0:
            return []
        per_chunk = batch // plan.n_chunks
        factor = plan.factor * scale
        out = []
        for terms, chunks in plan.groups:
            if scale != 1.0:
                terms = tuple(t._replace(coef=t.prompt.alpha * t.entry.weight * factor) for t in terms)
            out.append((terms, [r for c in chunks for r in range(c * per_chunk, (c + 1) * per_chunk)]))
        return out

    def region(self, term: RowTerm, n_tokens: int, device, dtype) -> Optional[torch.Tensor]:
        """The term's mask as a (1, n_tokens) weight over a layer's image query tokens, or None (everywhere)."""
        mask = term.prompt.mask
        if mask is None:
            return None
        if torch.compiler.is_compiling():       # computed in the graph (a cache would be guarded on)
            return self._region(term, n_tokens, device, dtype)
        key = (id(term.prompt), term.area, n_tokens, device, dtype)
        hit = self._regions.get(key)
        if hit is None:
            hit = self._regions[key] = (term.prompt, self._region(term, n_tokens, device, dtype))
        return hit[1]

    def _region(self, term: RowTerm, n_tokens: int, device, dtype) -> torch.Tensor:
        if self.latent is None:
            raise RuntimeError(f"{self.node}: a masked negative needs the sampled latent's size; this sampler "
                               f"did not pass through NASA's sampler wrapper.")
        region = token_region(term.prompt.mask, self.latent, n_tokens, term.area)
        if region is None:
            raise RuntimeError(f"{self.node}: a layer has {n_tokens} image tokens, which is no downscale of the "
                               f"{'x'.join(map(str, self.latent))} latent; NASA cannot place the negative's mask "
                               f"on it. Remove the mask for this model and please report it.")
        return region.to(device=device, dtype=dtype)[None]

    def negative_terms(self, terms: Sequence[RowTerm], n_tokens: int, device, dtype, project: Callable,
                       mask_of: Optional[Callable] = None) -> list:
        """NegativeTerms of ``terms`` for a layer whose steered queries are ``n_tokens`` image tokens;
        ``project(term)`` gives the layer's (K-, V-), ``mask_of(term)`` an optional key mask."""
        return [NegativeTerm(*project(t), t.coef, None if mask_of is None else mask_of(t),
                             self.region(t, n_tokens, device, dtype)) for t in terms]

    def steer(self, z_pos: torch.Tensor, q: torch.Tensor, extra_options: dict, heads: int,
              project: Callable[[torch.Tensor], tuple], attention_fn, layer=None, inplace: bool = False,
              positive: Optional[tuple] = None) -> torch.Tensor:
        """Subtract every positive chunk's negative attention from ``z_pos`` (batch rows of q); every query
        token is an image token. ``layer`` ((group, index)) picks the block selection's multiplier.

        ``project(neg)`` returns the layer's (K-, V-) for a negative already on q's device/dtype;
        ``attention_fn(q, k, v, heads, mask=None)`` is the host's attention kernel; ``inplace``: z_pos is the
        caller's own fresh tensor (nasa_core.steer overwrites it instead of copying). ``positive``: the layer's
        (K+, V+, key mask or None), which the run's method may need (VSF).
        """
        for terms, rows in self.groups(extra_options, q.shape[0], layer):
            negs = self.negative_terms(terms, q.shape[1], q.device, q.dtype,
                                       lambda t: project(t.entry.on(q.device, q.dtype)))  # batch 1: every row
            z_pos = steer(z_pos, q, negs, heads, rows, attention_fn, inplace, guard=self.guard,   # rows: a slice
                          method=self.method, positive=positive)
            self.mark_steered(layer)
        return z_pos
