"""NASA for joint-attention transformers (FLUX.1 / FLUX.2, LongCat-Image, Chroma, HunyuanVideo / 1.5, HunyuanImage
2.1, SD3, Qwen-Image, Lumina 2, Z-Image, HiDream-I1).

These models have no separate cross-attention: text and image tokens attend jointly, and the text
tokens are transformed block by block by the text-stream weights. NASA's negative therefore flows
through the model as a **negative stream** of its own:

* once per forward the negative prompt is embedded exactly as the model embeds its text
  (``txt_in``, ``context_embedder``, ...) into one :class:`Stream` per (negative entry, group of
  steered rows);
* at each block the family adapter projects the stream with that block's text-stream weights
  (``prepare``), the block itself runs unchanged (``original_block``), and inside its one joint
  attention call an ``optimized_attention_override`` (a ``transformer_options`` key ComfyUI's
  attention functions honour) lets ComfyUI compute the joint attention as usual, then

  - subtracts ``coef * softmax(Q_img K-^T/sqrt(d)) V-`` on the image-query tokens of the steered
    rows only (text queries and unsteered rows are bit-identical), and
  - computes the stream's own attention: its queries over [its keys; that row's image keys], as a
    real forward on the negative prompt would;

* the adapter then runs the block's text-stream output and MLP on the stream (``finish``).

The image is never duplicated; the extra work is the negative text tokens' share of a forward.

``stream="embedded"`` (a cheaper approximation, measured in docs/joint-attention.md) keeps
the stream at its embedding: every block projects the embedded negative with its own text-stream
weights, but the stream is never updated (no stream attention, no ``finish``). With a run's ``guard``
(nasa_core.Guard) each steered image token of Z+ - sum coef Z- is rescaled or clipped against Z+'s norm
over all heads' channels. With the run's method NAG (nasa_core.Nag) the same subtraction is turned into NAG's
result per image token (``Nag.finish``: extrapolation, L1 cap, blend), before the guard.
A family adapter supplies ``prepare``/``finish`` and where the image tokens sit in the joint
sequence; everything generic lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..nasa_core import row_index
from ..nasa_core.methods import check_vsf_regions
from .run import RUN_KEY

FORWARD_KEY = "nasa_forward"      # transformer_options key: this forward's ForwardState
OVERRIDE_KEY = "optimized_attention_override"
STREAMS = ("propagated", "embedded")


@dataclass
class Stream:
    """One negative entry flowing through the model for the batch rows it steers."""
    x: torch.Tensor                 # (R, L, D) the negative's hidden state (text stream)
    coef: float                     # alpha times the entry's share of its prompt
    rows: object                    # slice or index tensor into the batch
    q: Optional[torch.Tensor] = None    # this block's projections, as the block lays out its own, or (R, L, H*D):
    k: Optional[torch.Tensor] = None    # the attention override brings them to its call's layout (_to_layout)
    v: Optional[torch.Tensor] = None
    out: Optional[torch.Tensor] = None  # this block's attention output for the stream, always (R, L, H*D)
    scratch: dict = field(default_factory=dict)   # family data between prepare and finish (modulation, ...)
    term: object = None             # the run.RowTerm it carries (its prompt's mask, area crop)


@dataclass
class ForwardState:
    """What one model forward needs across blocks."""
    streams: list
    info: dict = field(default_factory=dict)      # family data (text length for single blocks, image tokens)
    run: object = None                            # the NasaRun (block selection, regions)


def start_forward(transformer_options: dict, batch: int, device, dtype,
                  embed: Callable[[torch.Tensor], torch.Tensor]) -> Optional[ForwardState]:
    """Build this forward's streams (``embed(neg)`` maps a raw (1, L, width) negative to the model's
    text hidden state: (1, L, D), or (batch, L, D) where the embedding depends on the row, e.g. on its
    timestep) and store them in ``transformer_options``. ``None`` when NASA is off."""
    run = transformer_options.get(RUN_KEY)
    if run is None:
        return None
    streams = []
    for terms, rows in run.groups(transformer_options, batch):
        index = row_index(rows, batch, device)
        for term in terms:
            x = embed(term.entry.on(device, dtype))
            streams.append(Stream(rows_of(x, index).expand(len(rows), *x.shape[1:]), term.coef, index, term=term))
    state = ForwardState(streams, run=run)
    transformer_options[FORWARD_KEY] = state
    return state


def forward_state(transformer_options: Optional[dict]) -> Optional[ForwardState]:
    return (transformer_options or {}).get(FORWARD_KEY)


def _tokens(t: torch.Tensor, bhld: bool, rows, tokens: slice) -> torch.Tensor:
    t = t[rows]
    return t[:, :, tokens] if bhld else t[:, tokens]


def _to_layout(t: torch.Tensor, like: torch.Tensor, bhld: bool) -> torch.Tensor:
    """A stream tensor in the layout of ``like``, the block's own tensor in its attention call. A stream tensor
    of the call's rank is taken as it is (a family prepares its stream as its block does); a 3-D (R, L, H*D)
    one is split into heads for a 4-D call, head-major (R, H, L, D) under ``skip_reshape``, else (R, L, H, D);
    a 4-D one for a 3-D call is head-major and is merged back. ComfyUI moves blocks between these layouts
    across releases (Qwen-Image went head-major in 0.3.6x)."""
    if t.ndim == like.ndim:
        return t
    if t.ndim == 3 and like.ndim == 4:
        heads = like.shape[1] if bhld else like.shape[2]
        t = t.view(t.shape[0], t.shape[1], heads, -1)
        return t.transpose(1, 2) if bhld else t
    if t.ndim == 4 and like.ndim == 3:
        return _rows_layout(t)
    raise RuntimeError(f"NASA: a negative stream tensor of shape {tuple(t.shape)} cannot take the layout of the "
                       f"block's attention call ({tuple(like.shape)}). This ComfyUI version changed the block: "
                       f"please report it.")


def _rows_layout(t: torch.Tensor) -> torch.Tensor:
    """An attention output as (R, L, H*D): head-major (``skip_output_reshape``) outputs are brought back."""
    return t.transpose(1, 2).flatten(2) if t.ndim == 4 else t


def _token_norms(z: torch.Tensor, head_major: bool) -> torch.Tensor:
    """Per-token L2 norm over all channels, float32: (B, L, 1) of (B, L, C), or (B, 1, L, 1) of (B, H, L, D)."""
    if head_major:
        return z.float().pow(2).sum(dim=(1, 3), keepdim=True).sqrt()
    return z.float().norm(dim=-1, keepdim=True)


def _guard(guard, out: torch.Tensor, out_tokens: tuple, pos_norm: torch.Tensor, rows, head_major: bool) -> None:
    """The guard on ``out``'s steered rows' image tokens, in place; ``pos_norm``: Z+'s token norms (all rows)."""
    index = (rows,) + out_tokens[1:]
    z, pos = out[index], pos_norm[rows]
    if head_major:      # Guard.scale works on (..., tokens, channels): move heads next to the channels
        factor = guard.scale(pos.transpose(1, 2).flatten(2), z.transpose(1, 2).flatten(2)).transpose(1, 2)[..., None]
    else:
        factor = guard.scale(pos, z)
    out[index] = z * factor.to(z.dtype)


def _image_side(image_kv, s: Stream, k: torch.Tensor, v: torch.Tensor, bhld: bool) -> tuple:
    """The keys and values of the block's own sequence a stream attends to besides its own: the ``image_kv``
    tokens of its rows, or ``image_kv(stream, k, v, bhld)`` where a family's real forward on the negative would
    place some of them elsewhere (Z-Image's image padding tokens sit at a fixed position, not beside the image)."""
    if callable(image_kv):
        return image_kv(s, k, v, bhld)
    return _tokens(k, bhld, s.rows, image_kv), _tokens(v, bhld, s.rows, image_kv)


def _make_override(state: ForwardState, image_q: slice, image_kv: slice, with_stream_attention: bool, prior,
                   seen: list, steer_call: int, layer):
    streams, run = state.streams, state.run
    scale = 1.0 if run is None or layer is None else run.layer_scale(layer)
    guard = None if run is None else run.guard
    finish = getattr(getattr(run, "method", None), "finish", None)     # NAG: from NASA's result and Z+
    vsf = getattr(getattr(run, "method", None), "attend", None) is not None   # VSF: one softmax with the image's keys

    def attend(func, *args, **kwargs):      # every attention call, NASA's too, through an override set before NASA
        return prior(func, *args, **kwargs) if prior is not None else func(*args, **kwargs)

    def nasa_joint_attention(func, *args, **kwargs):
        call = len(seen)
        seen.append(call)
        out = attend(func, *args, **kwargs)
        if call != steer_call:
            return out
        q, k, v = args[:3]
        rest = args[3:4] + (None,) * (len(args) > 4) + args[5:]   # heads if positional; positional mask -> None
        bhld = q.ndim == 4 and bool(kwargs.get("skip_reshape", False))     # (B, H, L, D) in, else (B, L, ...)
        out_tokens = (slice(None), slice(None), image_q) if kwargs.get("skip_output_reshape") else (slice(None), image_q)
        kw = {n: val for n, val in kwargs.items() if n != "mask"}    # the negative has no padding to mask
        cat_dim = 2 if bhld else 1
        n_img = len(range(q.shape[2 if bhld else 1])[image_q])
        head_major = bool(kwargs.get("skip_output_reshape"))
        steered = [s for s in streams if s.coef * scale != 0.0]
        pos_norm = _token_norms(out[out_tokens], head_major) if guard is not None and steered else None
        if finish is not None and steered:      # Z+ of the image tokens, and sum coef * region per token (NAG's weight)
            pos = out[out_tokens].clone()
            weight = torch.zeros(pos.shape[0], *((1, n_img) if head_major else (n_img,)), 1, dtype=pos.dtype,
                                 device=pos.device)
        if vsf and steered:
            _vsf(attend, func, args, kwargs, out, steered, scale, bhld, image_q, out_tokens, n_img, run, layer)
        for s in streams:
            coef = s.coef * scale
            s_k, s_v = _to_layout(s.k, k, bhld), _to_layout(s.v, v, bhld)
            if coef != 0.0 and not vsf:     # a block the selection leaves out: the stream still flows through it
                z_neg = attend(func, _tokens(q, bhld, s.rows, image_q), s_k, s_v, *rest, **kw)
                region = None if run is None or s.term is None else run.region(s.term, n_img, z_neg.device, z_neg.dtype)
                if region is not None:
                    region = region[:, None, :, None] if kwargs.get("skip_output_reshape") else region[..., None]
                    z_neg = z_neg * region
                if finish is not None:
                    weight[s.rows] += coef if region is None else coef * region
                index = (s.rows,) + out_tokens[1:]
                if isinstance(s.rows, slice):       # a view of out: subtract in place, no coef * Z- temporary
                    out[index].sub_(z_neg.to(out.dtype), alpha=coef)
                else:
                    out[index] = torch.sub(out[index], z_neg.to(out.dtype), alpha=coef)
                if run is not None:
                    run.mark_steered(layer)
            if with_stream_attention:
                img_k, img_v = _image_side(image_kv, s, k, v, bhld)
                s.out = _rows_layout(attend(func, _to_layout(s.q, q, bhld), torch.cat((s_k, img_k), dim=cat_dim),
                                          torch.cat((s_v, img_v), dim=cat_dim), *rest, **kw))
        if steered and (pos_norm is not None or finish is not None):
            rows = steered[0].rows if len(steered) == 1 else torch.unique(torch.cat([
                torch.arange(out.shape[0], device=out.device)[s.rows] for s in steered]))
            if finish is not None:
                index = (rows,) + out_tokens[1:]
                out[index] = finish(pos[rows], out[index], weight[rows], head_major)
            if pos_norm is not None:
                _guard(guard, out, out_tokens, pos_norm, rows, head_major)
        return out
    return nasa_joint_attention


def _vsf(attend, func, args, kwargs, out, steered, scale, bhld, image_q, out_tokens, n_img, run, layer) -> None:
    """VSF on a joint attention call, in place on ``out``: for each group of rows, the image queries' one softmax over
    the block's own keys ([text; image], RoPE applied, as the host attended) and every steered stream's keys, the
    streams' logits raised by the method's bias, against [V; -coef V-]; a regional negative blends per token
    (Z+ + r (Z_vsf - Z+)). The host's Z+ of those tokens is recomputed this way: VSF costs one more image attention
    over the prompt, image and negative keys than NASA does."""
    q, k, v = args[:3]
    cat_dim = 2 if bhld else 1
    if (kwargs.get("mask") if "mask" in kwargs else (args[4] if len(args) > 4 else None)) is not None:
        raise RuntimeError("NASA: method VSF on a joint attention call with a mask (the prompt's padding) is not "
                           "available yet: its one softmax would need that mask beside the negative's bias. Use "
                           "method 'nasa' or 'nag' with this model.")
    by_rows: dict = {}
    for s in steered:
        by_rows.setdefault(id(s.rows), []).append(s)
    bias = run.method.bias
    for group in by_rows.values():
        rows = group[0].rows
        regional = [s for s in group if s.term is not None and s.term.prompt.mask is not None]
        check_vsf_regions(len(group), len(regional))
        keys = [k[rows]] + [_to_layout(s.k, k, bhld) for s in group]
        values = [v[rows]] + [_to_layout(s.v, v, bhld) * -(s.coef * scale) for s in group]
        r = keys[0].shape[0]
        mask = torch.cat([torch.zeros(r, 1, keys[0].shape[cat_dim], dtype=q.dtype, device=q.device)] +
                         [torch.full((r, 1, t.shape[cat_dim]), bias, dtype=q.dtype, device=q.device) for t in keys[1:]],
                         dim=-1)
        call = (_tokens(q, bhld, rows, image_q), torch.cat(keys, dim=cat_dim), torch.cat(values, dim=cat_dim))
        call += args[3:4] + ((mask,) + args[5:] if len(args) > 4 else ())
        kw = dict(kwargs) if len(args) > 4 else {**kwargs, "mask": mask}
        z = attend(func, *call, **kw).to(out.dtype)
        index = (rows,) + out_tokens[1:]
        if regional:
            region = run.region(regional[0].term, n_img, z.device, z.dtype)
            region = region[:, None, :, None] if kwargs.get("skip_output_reshape") else region[..., None]
            z = torch.addcmul(out[index], region, z - out[index])
        out[index] = z
        run.mark_steered(layer)


def stream_end(groups: dict, selection: dict) -> tuple:
    """``(last, skip)`` for a block selection: the last steered layer in forward order (``groups`` lists them in
    forward order, as every joint family's ``block_groups`` does) and the layers after it, where the negative
    stream is no longer read (skipping them is exact). Nothing steered: ``(None, every layer)``."""
    order = [(group, index) for group, indices in groups.items() for index in indices]
    steered = [i for i, layer in enumerate(order) if selection.get(layer, 0.0) != 0.0]
    if not steered:
        return None, frozenset(order)
    return order[steered[-1]], frozenset(order[steered[-1] + 1:])


def run_block(state: ForwardState, args: dict, call_block: Callable[[dict], dict], image_q: slice, image_kv: slice,
              prepare: Callable[[Stream], None], finish: Optional[Callable[[Stream], None]], block_name: str,
              steer_call: int = 0, layer=None) -> dict:
    """Run one block with NASA: ``prepare`` each stream, run ``call_block(args)`` (the original block
    or a replace installed before NASA) with the steering override, then ``finish`` each stream.

    ``image_kv``: the tokens of the block's sequence the streams attend to besides their own (a slice), or a
    callable ``(stream, k, v, bhld) -> (keys, values)`` taking them from the block's attention call.
    ``finish=None`` on the last block that sees the stream: only its K/V are needed there.
    ``steer_call`` picks which attention call of the block is the joint one (SD3.5M runs a second,
    image-only self-attention after it). ``layer`` ((group, index)) names the block for the run's block
    selection: a block left out subtracts nothing, but the streams still flow through it up to the last
    selected block (``NasaRun.stream_last``); after it they stop.
    """
    if not state.streams:
        return call_block(args)
    run = state.run
    if run is not None:
        if layer in run.stream_skip:
            return call_block(args)     # after the last steered block: nothing reads the stream any more
        if run.stream == "embedded" or layer == run.stream_last:
            finish = None       # the stream stays at its embedding / is not read after this block
    for s in state.streams:
        prepare(s)
    options = dict(args.get("transformer_options") or {})
    seen: list = []
    options[OVERRIDE_KEY] = _make_override(state, image_q, image_kv, finish is not None,
                                           options.get(OVERRIDE_KEY), seen, steer_call, layer)
    out = call_block({**args, "transformer_options": options})
    if len(seen) <= steer_call:
        raise RuntimeError(f"NASA: {block_name} made {len(seen)} attention call(s) through ComfyUI's attention "
                           f"function; expected its joint attention to be call {steer_call + 1}. This ComfyUI "
                           f"version changed the block: please report it.")
    for s in state.streams:
        if finish is not None:
            finish(s)
        s.q = s.k = s.v = s.out = None
        s.scratch.clear()
    return out


def chain(prior: Optional[Callable], original_block: Callable) -> Callable[[dict], dict]:
    """How NASA's block replace runs the block: through a block replace installed before NASA, if any."""
    if prior is None:
        return original_block
    return lambda args: prior(args, {"original_block": original_block})


def streams_block(args: dict, extra: dict, prior: Optional[Callable], index: int, embed_of: Callable) -> tuple:
    """Start of a block replace in models whose blocks start the forward's streams themselves (FLUX-style double
    blocks, SD3): ``(call_block, state, model)``; ``state`` and ``model`` are None when this run steers nothing.
    Block 0 (or a forward without streams yet) embeds the negatives with ``embed_of(model)``."""
    options = args.get("transformer_options") or {}
    call_block = chain(prior, extra["original_block"])
    run = options.get(RUN_KEY)
    if run is None:
        return call_block, None, None
    dm = run.layers["model"]
    img, txt = args["img"], args["txt"]
    state = forward_state(options)
    if index == 0 or state is None:
        state = start_forward(options, img.shape[0], img.device, txt.dtype, embed_of(dm))
    return call_block, state, dm


def steered_block(args: dict, extra: dict, prior: Optional[Callable]) -> tuple:
    """Start of a block replace in a forward whose streams were already started: ``(call_block, state,
    model)``. ``call_block`` runs the block (through ``prior``, a replace installed before NASA, if any);
    ``state`` and ``model`` are None when this forward steers nothing."""
    options = args.get("transformer_options") or {}
    call_block = chain(prior, extra["original_block"])
    run, state = options.get(RUN_KEY), forward_state(options)
    if run is None or state is None or not state.streams:
        return call_block, None, None
    return call_block, state, run.layers["model"]


def unwrap_prior(prior):
    """A second Apply NASA Attention replaces the first instead of steering twice."""
    while prior is not None and hasattr(prior, "nasa_prior"):
        prior = prior.nasa_prior
    return prior


def install_dit_replace(model_patcher, block_name: str, index: int, make: Callable) -> None:
    """``make(prior)`` returns NASA's replace for ("dit", (block_name, index)), chaining ``prior``."""
    existing = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    prior = unwrap_prior(existing.get((block_name, index)))
    replace = make(prior)
    replace.nasa_prior = prior
    model_patcher.set_model_patch_replace(replace, "dit", block_name, index)


def rows_of(t: torch.Tensor, rows) -> torch.Tensor:
    """Per-row tensors (``vec``, modulation) for a stream's rows; batch-1 tensors are shared."""
    return t if t.shape[0] == 1 else t[rows]
