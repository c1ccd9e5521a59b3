"""Blocks with a separate text cross-attention call (Wan, LTX-Video, Kandinsky 5): NASA through an attention override.

The cross-attention modules pass ``transformer_options`` to ComfyUI's ``optimized_attention``, which honours
``transformer_options["optimized_attention_override"]`` - the least fragile public hook:

* the family's ``DIFFUSION_MODEL`` wrapper builds this forward's :class:`CrossForward` once
  (:func:`forward_options`: steered rows from the NasaRun, the negatives embedded as the model embeds its text,
  which query tokens belong to the generated video) and hands it to the blocks in a copy of ``transformer_options``;
* a ``"dit"`` ``double_block`` replace per block (chaining a replace installed before) runs the original block with
  an attention override (:func:`steer_block`). The override lets every call through (or through an override
  installed before NASA), and on the text cross-attention call subtracts ``coef * softmax(Q K-^T/sqrt(d)) V-`` from
  the positive rows' video queries, computing Z- with the same attention function. The block's output projection
  follows. Which call is the text one, the family says (``is_text``); a block that makes another number of calls,
  or not exactly one text call, makes NASA raise.

Nothing of the block is re-implemented: Z+, any image term, the output projection, the FFN all run as ComfyUI wrote
them, and weight patches (LoRA) reach the negative's projections because they are the block's own modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import joint
from ..nasa_core import key_mask_of, steer
from .binding import set_wrapper
from .run import RUN_KEY

FORWARD_KEY = "nasa_cross_forward"    # transformer_options key: this forward's CrossForward


@dataclass
class CrossForward:
    """One diffusion-model forward's NASA data, built once by the family's DIFFUSION_MODEL wrapper."""
    model: torch.nn.Module
    groups: list                  # NasaRun.groups(): [(terms, rows)], positive rows only
    tokens: slice                 # the query tokens that are steered (the generated video's)
    text_start: int = 0           # context tokens before the text (Wan I2V's CLIP-vision tokens)
    negatives: dict = field(default_factory=dict)   # RowTerm.slot -> (text tokens (1, L, dim), key bias or None)
    run: object = None            # the NasaRun (block selection, regions)


def forward_options(options: Optional[dict], batch: int, model, tokens: slice, embed: Callable,
                    text_start: int = 0) -> Optional[dict]:
    """``transformer_options`` for this forward with its CrossForward, or None when nothing is steered.

    ``embed(entry, run)`` returns ``(tokens, bias)``: the negative embedded as the model embeds its text,
    and an additive key bias for ``mask=`` of ComfyUI's attention functions (or None); ``run`` is the
    NasaRun (its node names errors; ``run.reuse`` keeps the embedding for later steps)."""
    run = (options or {}).get(RUN_KEY)
    groups = run.groups(options, batch) if run is not None else []
    if not groups:
        return None
    fwd = CrossForward(model, groups, tokens, text_start, run=run)
    for terms, _ in groups:
        for term in terms:
            if term.slot not in fwd.negatives:
                fwd.negatives[term.slot] = embed(term.entry, run)
    return {**options, FORWARD_KEY: fwd}


def _mask_arg(args: tuple, kwargs: dict):
    """The ``mask`` of a call of ComfyUI's attention function (q, k, v, heads, mask=None, ...): keyword in newer
    releases, positional (``optimized_attention_masked``) in older ones."""
    return kwargs["mask"] if "mask" in kwargs else (args[4] if len(args) > 4 else None)


def _make_override(fwd: CrossForward, project: Callable, prior, seen: list, matched: list, is_text: Callable,
                   layer):
    scale = fwd.run.layer_scale(layer)

    def nasa_cross_attention(func, *args, **kwargs):
        call = len(seen)
        seen.append(call)
        out = prior(func, *args, **kwargs) if prior is not None else func(*args, **kwargs)
        q, k, host_mask = args[0], args[1], _mask_arg(args, kwargs)
        if not is_text(call, q, k, host_mask):
            return out
        matched.append(call)
        if scale == 0.0:
            return out
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        rest = {n: v for n, v in kwargs.items() if n not in ("heads", "mask")}
        v = args[2]
        if q.ndim == 4 and rest.pop("skip_reshape", False):   # a head-major (B, H, L, D) call (Kandinsky 5): steer
            q, k, v = (t.transpose(1, 2).flatten(2) for t in (q, k, v))   # as (B, L, H*D); Z-'s call is (B, L, H*D)
        # the layer's own keys (and key mask) for a method that attends with them (VSF); not under a prior override,
        # nor with a mask that depends on the query
        key_mask = None if host_mask is None else key_mask_of(host_mask, k.shape[1])   # LTX-Video: (B, 1, 1, L)
        positive = (k, v, key_mask) if prior is None and (host_mask is None or key_mask is not None) else None

        def attention_fn(q_rows, k_neg, v_neg, heads_, mask=None):
            b = q_rows.shape[0]
            kw = dict(rest) if mask is None else {**rest, "mask": mask.expand(b, *mask.shape[1:])}
            neg = (q_rows, k_neg.expand(b, -1, -1), v_neg.expand(b, -1, -1), heads_)
            if prior is not None:
                return prior(func, *neg, **kw)
            return func(*neg, **{**kw, "skip_output_reshape": True})    # head-major: steer needs no reshape

        projected = {}      # this layer's K-, V- per negative entry, shared by every group it steers
        tok = fwd.tokens
        view = out[:, tok]
        z, q_tok = view, q[:, tok]

        def projected_kv(term):
            if term.slot not in projected:
                projected[term.slot] = project(fwd.negatives[term.slot][0])
            return projected[term.slot]

        for terms, rows in fwd.groups:
            terms = [t._replace(coef=t.coef * scale) for t in terms]
            negs = fwd.run.negative_terms(terms, q_tok.shape[1], q.device, q.dtype, projected_kv,
                                          lambda t: fwd.negatives[t.slot][1])
            z = steer(z, q_tok, negs, heads, rows, attention_fn, inplace=prior is None,   # z: a view of out
                      guard=fwd.run.guard, method=fwd.run.method, positive=positive)
            fwd.run.mark_steered(layer)
        if z is not view:       # steer could not write into out (a prior's output, or autograd on): put it back
            out[:, tok] = z
        return out
    return nasa_cross_attention


def call_at(index: int, text_keys: int, where: str) -> Callable:
    """``is_text`` for :func:`steer_block` of a block whose text cross-attention is always its attention call
    ``index`` (Wan: self, [image,] text). That call must have ``text_keys`` keys, or NASA raises."""
    def is_text(call, q, k, mask) -> bool:
        if call != index:
            return False
        if q.ndim != 3 or k.ndim != 3 or k.shape[1] != text_keys:
            raise RuntimeError(f"NASA: {where}: attention call {call + 1} has keys {tuple(k.shape)}, expected the "
                               f"{text_keys} text tokens. This ComfyUI version changed the block: please report it.")
        return True
    return is_text


def steer_block(args: dict, prior: Optional[Callable], original_block: Callable, project: Callable,
                is_text: Callable, where: str, layer=None, calls: Optional[int] = None) -> dict:
    """Run one block with NASA on its text cross-attention; ``project(text)`` gives the layer's (K-, V-) of
    embedded text. ``is_text(call, q, k, mask)`` tells, for each attention call of the block (its index among the
    block's calls, the queries, keys and mask ComfyUI's attention function receives), whether it is the text
    cross-attention: NASA steers that call only, and the block must make exactly one such call (and ``calls``
    calls in all, where given) or NASA raises. ``prior`` is a block replace installed before NASA: it runs the
    block (or may skip it: no attention call at all, then nothing is steered)."""
    options = args["transformer_options"]
    seen: list = []
    matched: list = []
    override = _make_override(options[FORWARD_KEY], project, options.get(joint.OVERRIDE_KEY), seen, matched,
                              is_text, layer)
    out = joint.chain(prior, original_block)({**args, "transformer_options": {**options, joint.OVERRIDE_KEY: override}})
    if prior is not None and not seen:
        return out      # a replace installed before NASA skipped the block
    if len(matched) != 1 or (calls is not None and len(seen) != calls):
        expected = f"{calls} call(s), " if calls is not None else ""
        raise RuntimeError(f"NASA: {where} made {len(seen)} attention call(s) through ComfyUI's attention function, "
                           f"{len(matched)} of them its text cross-attention; expected {expected}exactly one text "
                           f"cross-attention. This ComfyUI version changed the block: please report it.")
    return out


@dataclass
class TextSite:
    """One of several text cross-attentions of a block (LTX-2: the video's and the audio's), for
    :func:`steer_block_sites`: its forward's :class:`CrossForward` (the negatives embedded as that stream embeds
    its text, the stream's steered tokens), ``project(text)`` -> its (K-, V-), ``is_text(call, q, k, mask)``
    (as for :func:`steer_block`) and its ``layer`` ((group, index), as block selections name it)."""
    fwd: CrossForward
    project: Callable
    is_text: Callable
    layer: object


def steer_block_sites(args: dict, prior: Optional[Callable], original_block: Callable, sites: list,
                      where: str) -> dict:
    """:func:`steer_block` for a block with several text cross-attentions (:class:`TextSite`), each with its own
    negative embedding, steered tokens and layer: each attention call is steered as the one site whose ``is_text``
    claims it (a call two sites claim is an error), every other call runs untouched; each site must claim exactly
    one call, or NASA raises."""
    options = args["transformer_options"]
    prior_override = options.get(joint.OVERRIDE_KEY)
    seen: list = []
    per_site = []
    for site in sites:
        matched: list = []
        per_site.append((site, _make_override(site.fwd, site.project, prior_override, seen, matched, site.is_text,
                                              site.layer), matched))

    def nasa_cross_attention_sites(func, *a, **kw):
        call = len(seen)
        owners = [override for site, override, _ in per_site if site.is_text(call, a[0], a[1], _mask_arg(a, kw))]
        if len(owners) > 1:
            raise RuntimeError(f"NASA: {where}: attention call {call + 1} looks like {len(owners)} of the block's "
                               f"text cross-attentions at once. This ComfyUI version changed the block: please "
                               f"report it.")
        if owners:
            return owners[0](func, *a, **kw)       # counts the call in ``seen`` itself
        seen.append(call)
        return prior_override(func, *a, **kw) if prior_override is not None else func(*a, **kw)

    out = joint.chain(prior, original_block)(
        {**args, "transformer_options": {**options, joint.OVERRIDE_KEY: nasa_cross_attention_sites}})
    if prior is not None and not seen:
        return out      # a replace installed before NASA skipped the block
    counts = [len(matched) for _, _, matched in per_site]
    if any(n != 1 for n in counts):
        found = ", ".join(f"{n} for {site.layer}" for (site, _, _), n in zip(per_site, counts))
        raise RuntimeError(f"NASA: {where} made {len(seen)} attention call(s) through ComfyUI's attention function; "
                           f"text cross-attention calls found: {found}; expected exactly one each. This ComfyUI "
                           f"version changed the block: please report it.")
    return out


def install_blocks(model_patcher, count: int, make_block: Callable, forward_wrapper: Callable) -> int:
    """A "dit" double_block replace per block (``make_block(index)(prior)``) and the DIFFUSION_MODEL wrapper."""
    for i in range(count):
        joint.install_dit_replace(model_patcher, "double_block", i, make_block(i))
    set_wrapper(model_patcher, "DIFFUSION_MODEL", forward_wrapper)
    return count
