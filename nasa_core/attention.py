"""NASA attention: Z = softmax(Q K+^T / sqrt(d)) V+  -  sum_i c_i * softmax(Q K-_i^T / sqrt(d)) V-_i.

Pure torch, no ComfyUI. Tensors use the layout ComfyUI's attention functions use:
q is (B, Lq, H*D); k and v are (B or 1, Lk, H*D). The paper's equation (9) is the
single-negative case c = alpha.

Two implementations live here and tests hold them equal:

* :func:`reference_nasa_attention` - the formula written out with an explicit softmax,
  computed in float64. Slow and obvious; for tests only.
* :func:`nasa_attention` / :func:`steer` - what runs at sample time. ``steer`` takes the
  positive output Z+ that the host already computed (so a host attention backend or a
  previously installed attention replacement keeps producing Z+), and subtracts the
  negative terms only on the rows that are steered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

Rows = Union[None, slice, torch.Tensor, Sequence[int]]
AttentionFn = Callable[..., torch.Tensor]


@dataclass
class NegativeTerm:
    """One negative prompt already projected by the layer: Z- = softmax(Q k^T/sqrt(d)) v.

    ``coef`` is the weight the term is subtracted with (alpha for a single negative).
    ``mask`` is an optional key mask for the negative: bool (True = attend) or additive
    float, of shape (B or 1, Lk).
    ``region`` optionally weights the term per query token (a regional negative): shape (Lq,) or
    (B or 1, Lq), 0 = that token is not steered by this negative.
    """

    k: torch.Tensor
    v: torch.Tensor
    coef: float
    mask: Optional[torch.Tensor] = None
    region: Optional[torch.Tensor] = None


GUARD_MODES = ("off", "rescale", "clip")


@dataclass(frozen=True)
class Guard:
    """An optional stability guard on the steered tokens of Z = Z+ - sum_i c_i Z-_i (default off: plain NASA).

    Per query token, over its channels (all heads), with L2 norms:

    * ``"rescale"``: Z is scaled to the norm of that token's Z+ (the direction moves, the scale stays);
    * ``"clip"``: where ||Z|| > tau * ||Z+||, Z is scaled down to tau * ||Z+||; other tokens are plain NASA,
      bit for bit;
    * ``"off"``: plain NASA, the same code path as no guard.

    Rows that are not steered are Z+ whatever the mode.
    """

    mode: str = "off"
    tau: float = 1.0

    def __post_init__(self):
        if self.mode not in GUARD_MODES:
            raise ValueError(f"NASA guard: mode must be one of {', '.join(GUARD_MODES)}; got {self.mode!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"NASA guard: tau is the largest allowed ratio ||Z|| / ||Z+||, a positive number "
                             f"(e.g. 1.0-2.5); got {self.tau}")

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def scale(self, pos_norm: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The per-token factor (..., 1), float32, that turns Z into the guarded Z; ``pos_norm`` is ||Z+||."""
        norm = z.float().norm(dim=-1, keepdim=True)
        one = torch.ones((), dtype=norm.dtype, device=norm.device)
        if self.mode == "rescale":
            return torch.where(norm > 0, pos_norm / norm, one)
        if self.mode == "clip":
            limit = self.tau * pos_norm
            return torch.where(norm > limit, limit / norm, one)
        return one.expand_as(norm)


def region_weight(term: NegativeTerm, like: torch.Tensor, rows=None) -> Optional[torch.Tensor]:
    """The term's per-query-token region weight shaped to multiply ``like`` ((B, Lq, C) or (B, Lq, H, D)): (B or 1,
    Lq, 1[, 1]), rows selected where the region has a batch; None without a region."""
    if term.region is None:
        return None
    region = term.region.to(device=like.device, dtype=like.dtype)
    if region.ndim == 2 and region.shape[0] != 1 and rows is not None:
        region = region[rows]
    if region.shape[-1] != like.shape[1]:
        raise ValueError(f"NASA attention: the region weights {region.shape[-1]} query tokens but the layer has "
                         f"{like.shape[1]}")
    return region.reshape(region.shape + (1,) * (like.ndim - 2))


def weighted(z_neg: torch.Tensor, term: NegativeTerm, rows=None) -> torch.Tensor:
    """coef * Z- (times the term's per-token region weight, rows selected where it has a batch). Z- is
    (B, Lq, C) or (B, Lq, H, D)."""
    out = z_neg * term.coef
    region = region_weight(term, z_neg, rows)
    return out if region is None else out * region


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, what: str) -> None:
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"NASA attention: {what}: q, k, v must be (batch, tokens, channels); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if heads <= 0 or q.shape[-1] % heads != 0:
        raise ValueError(f"NASA attention: {what}: {q.shape[-1]} query channels do not split into {heads} heads")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"NASA attention: {what}: key width {k.shape[-1]} differs from query width {q.shape[-1]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"NASA attention: {what}: {k.shape[1]} keys but {v.shape[1]} values")
    if k.shape[1] == 0:
        raise ValueError(f"NASA attention: {what}: no key tokens (empty prompt?)")
    if k.shape[0] not in (1, q.shape[0]) or v.shape[0] != k.shape[0]:
        raise ValueError(f"NASA attention: {what}: key/value batch {k.shape[0]}/{v.shape[0]} does not match "
                         f"query batch {q.shape[0]} (must be 1 or equal)")


def additive_mask(mask: Optional[torch.Tensor], batch: int, dtype: torch.dtype, device) -> Optional[torch.Tensor]:
    """(B or 1, Lk), or with singleton axes between as ComfyUI lays key masks out ((B, 1, Lk), (B, 1, 1, Lk)),
    bool/float key mask -> additive (B, 1, 1, Lk) float mask."""
    if mask is None:
        return None
    shape = tuple(mask.shape)
    mask = mask.to(device)
    while mask.ndim > 2 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 2:
        raise ValueError(f"NASA attention: key mask must be (batch, tokens), or with axes of 1 between (ComfyUI's "
                         f"(batch, 1, tokens) / (batch, 1, 1, tokens)), got {shape}")
    if mask.dtype == torch.bool:
        add = torch.zeros(mask.shape, dtype=dtype, device=device)
        add = add.masked_fill(~mask, float("-inf"))
    else:
        add = mask.to(dtype)
    return add.expand(batch, -1)[:, None, None, :]


def key_mask_of(mask: torch.Tensor, keys: int) -> Optional[torch.Tensor]:
    """An attention call's mask as a key mask (B or 1, 1, ``keys``), the same for every query - (B, 1, keys) or
    (B, 1, 1, keys) as ComfyUI's text padding masks are laid out - or None where it depends on the query."""
    while mask.ndim > 3 and mask.shape[1] == 1:
        mask = mask[:, 0]
    return mask if mask.ndim == 3 and mask.shape[1] == 1 and mask.shape[-1] == keys else None


def reference_attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out; float64 math, output in q's dtype."""
    check_qkv(q, k, v, heads, "reference")
    b, lq, c = q.shape
    d = c // heads
    k = k.expand(b, -1, -1)
    v = v.expand(b, -1, -1)
    qh = q.double().reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.double().reshape(b, v.shape[1], heads, d).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    add = additive_mask(mask, b, torch.float64, q.device)
    if add is not None:
        scores = scores + add
    probs = torch.softmax(scores, dim=-1)
    out = probs @ vh
    return out.transpose(1, 2).reshape(b, lq, c).to(q.dtype)


def reference_nasa_attention(q, k_pos, v_pos, negatives: Sequence[NegativeTerm], heads: int,
                             pos_mask: Optional[torch.Tensor] = None, steer_rows: Rows = None,
                             guard: Optional[Guard] = None) -> torch.Tensor:
    """Equations (7)-(9) of the paper, generalised to several negatives, and the guard: the obvious way."""
    z_pos = reference_attention(q, k_pos, v_pos, heads, pos_mask).double()
    z = z_pos
    rows = row_index(steer_rows, q.shape[0], q.device)
    for term in negatives:
        z_neg = reference_attention(q, term.k, term.v, heads, term.mask).double()
        delta = torch.zeros_like(z)
        delta[rows] = weighted(z_neg, term)[rows]
        z = z - delta
    if guard is not None and guard.mode != "off":
        pos_norm = torch.sqrt((z_pos ** 2).sum(-1, keepdim=True))
        norm = torch.sqrt((z ** 2).sum(-1, keepdim=True))
        if guard.mode == "rescale":
            target = pos_norm
        else:
            target = torch.minimum(norm, guard.tau * pos_norm)
        guarded = torch.where(norm > 0, z * target / norm, z)
        z = z.clone()
        z[rows] = guarded[rows]
    return z.to(q.dtype)


def attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Default attention backend: torch SDPA. (B, Lq, H*D) in, (B, Lq, H*D) out."""
    b, lq, c = q.shape
    d = c // heads
    k = k.expand(b, -1, -1)
    v = v.expand(b, -1, -1)
    qh = q.reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    add = additive_mask(mask, b, q.dtype, q.device)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=add)
    return out.transpose(1, 2).reshape(b, lq, c)


def row_index(rows: Rows, batch: int, device) -> Union[slice, torch.Tensor]:
    """Normalise a row selection. Python ints that form a run become a slice (a view, no device work)."""
    if rows is None:
        return slice(None)
    if isinstance(rows, slice):
        return rows
    if isinstance(rows, torch.Tensor):
        if rows.dtype == torch.bool:
            if rows.shape != (batch,):
                raise ValueError(f"NASA attention: boolean row selection has shape {tuple(rows.shape)}, batch is {batch}")
            return rows.nonzero().flatten()
        return rows.to(device=device, dtype=torch.long).flatten()
    rows = [int(r) for r in rows]
    if not rows:
        return torch.empty(0, dtype=torch.long, device=device)
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, dtype=torch.long, device=device)


def _is_all_rows(rows: Union[slice, torch.Tensor], batch: int) -> bool:
    if isinstance(rows, slice):
        return range(batch)[rows] == range(batch)
    return False        # index tensors are never "all rows": whole-batch selections arrive as slices


def _rows_of(t: torch.Tensor, rows) -> torch.Tensor:
    """Select rows of a key/value/mask tensor that may have batch 1 (shared by every row)."""
    return t if t.shape[0] == 1 else t[rows]


def _as_rows(z_neg: torch.Tensor, heads: int) -> torch.Tensor:
    """Z- as (B, Lq, C) or, when the attention function returned it head-major (B, H, Lq, D) as attention
    kernels produce it, as the (B, Lq, H, D) view of that: subtracted through a view of Z+, it needs none of
    the copy that reshaping it to (B, Lq, C) would make."""
    if z_neg.ndim == 4:
        if z_neg.shape[1] != heads:
            raise ValueError(f"NASA attention: a head-major Z- must be (batch, {heads} heads, tokens, dim); got "
                             f"{tuple(z_neg.shape)}")
        return z_neg.transpose(1, 2)
    return z_neg


def _like(dst: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
    """``dst`` (B, Lq, C) viewed in ``z_neg``'s (B, Lq, C) or (B, Lq, H, D) shape."""
    return dst if z_neg.ndim == 3 else dst.view(dst.shape[0], dst.shape[1], z_neg.shape[2], z_neg.shape[3])


def steer(z_pos: torch.Tensor, q: torch.Tensor, negatives: Sequence[NegativeTerm], heads: int,
          steer_rows: Rows = None, attention_fn: AttentionFn = attention, inplace: bool = False,
          guard: Optional[Guard] = None, method=None, positive: Optional[tuple] = None) -> torch.Tensor:
    """Z+ - sum_i coef_i * Z-_i on the steered rows; Z+ is returned untouched where nothing is steered.

    ``attention_fn(q, k, v, heads, mask=None)`` computes each Z-, as (B, Lq, H*D) or head-major
    (B, H, Lq, D); pass the host's backend so the negative attention runs on the same kernel as the
    positive one. ``inplace``: ``z_pos`` is the caller's own fresh tensor and is overwritten (no copy of it).
    ``guard``: an optional :class:`Guard` applied to the steered rows' result (None or mode "off": plain NASA).
    ``method``: None for NASA, else a method of nasa_core.methods with the same terms: one with ``finish`` (NAG)
    turns NASA's result into its own; one with ``attend`` (VSF) computes the steered rows from the layer's
    positive keys, which ``positive`` = (k_pos, v_pos, pos_mask or None) must then give.
    """
    active = [t for t in negatives if t.coef != 0.0]
    if not active:
        return z_pos
    batch = q.shape[0]
    rows = row_index(steer_rows, batch, q.device)
    if isinstance(rows, torch.Tensor) and rows.numel() == 0:
        return z_pos
    all_rows = _is_all_rows(rows, batch)
    q_rows = q if all_rows else q[rows]
    # in place where Z+ is ours and the rows are a view of it (an index selection is a copy of its own); never
    # on a Z+ autograd needs for its backward (NASA-T training differentiates through the attention)
    inplace = inplace and not (torch.is_grad_enabled() and z_pos.requires_grad)
    in_view = inplace and isinstance(rows, slice)
    guarded = guard is not None and guard.active
    pos_norm = (z_pos if all_rows else z_pos[rows]).float().norm(dim=-1, keepdim=True) if guarded else None
    if getattr(method, "attend", None) is not None:
        out = _attend(method, z_pos, q_rows, active, heads, rows, all_rows, attention_fn, positive)
    else:
        finish = getattr(method, "finish", None)
        pos_rows = (z_pos if all_rows else z_pos[rows]).clone() if finish is not None else None
        weight = 0.0        # sum of the terms' weights per token (NAG's Z~ = NASA's result + weight * Z+)
        out = None          # Z+ minus the terms so far, on the steered rows; a tensor we may write once set
        for term in active:
            k = term.k if all_rows else _rows_of(term.k, rows)
            v = term.v if all_rows else _rows_of(term.v, rows)
            mask = term.mask if (term.mask is None or all_rows) else _rows_of(term.mask, rows)
            check_qkv(q_rows, k, v, heads, "negative")
            z_neg = _as_rows(attention_fn(q_rows, k, v, heads, mask=mask), heads)
            if term.region is None:      # one pass over Z-: out - coef * Z-, no coef * Z- temporary
                z_neg, coef = z_neg.to(z_pos.dtype), term.coef
            else:
                z_neg, coef = weighted(z_neg, term, None if all_rows else rows).to(z_pos.dtype), 1.0
            if finish is not None:
                region = region_weight(term, z_pos, None if all_rows else rows)
                weight = weight + (term.coef if region is None else term.coef * region)
            if out is None:
                base = z_pos if all_rows else z_pos[rows]
                if in_view or not isinstance(rows, slice):
                    out = base                      # Z+ itself (or a view of it), or the copy indexing made
                elif z_neg.ndim == 3:
                    out = torch.sub(base, z_neg, alpha=coef)
                    continue
                else:
                    out = base.clone()
            _like(out, z_neg).sub_(z_neg, alpha=coef)
        if finish is not None:
            done = finish(pos_rows, out, weight)
            out = out.copy_(done) if in_view else done
    if guarded:
        factor = guard.scale(pos_norm, out).to(out.dtype)
        out = out * factor if (torch.is_grad_enabled() and out.requires_grad) else out.mul_(factor)
    if in_view and out.data_ptr() == (z_pos if all_rows else z_pos[rows]).data_ptr():
        return z_pos                            # written through ``out``, Z+ itself or a view of it
    if all_rows:
        return out
    full = z_pos if inplace else z_pos.clone()
    full[rows] = out
    return full


def _attend(method, z_pos, q_rows, active, heads, rows, all_rows, attention_fn, positive) -> torch.Tensor:
    """The steered rows' output of a method that attends with the layer's positive keys (VSF)."""
    if positive is None:
        raise RuntimeError("NASA: this steering path gives no positive keys and values, which the chosen method "
                           "(VSF) needs for its one softmax. Use NASA or NAG with this model, and please report it.")
    k_pos, v_pos, pos_mask = positive

    def pick(t):
        return t if (t is None or all_rows) else _rows_of(t, rows)
    terms = [NegativeTerm(pick(t.k), pick(t.v), t.coef, pick(t.mask), t.region) for t in active]
    return method.attend(q_rows, pick(k_pos), pick(v_pos), terms, heads, attention_fn, pick(pos_mask),
                         z_pos if all_rows else z_pos[rows], None if all_rows else rows)


def nasa_attention(q, k_pos, v_pos, k_neg, v_neg, heads: int, alpha: float,
                   pos_mask: Optional[torch.Tensor] = None, neg_mask: Optional[torch.Tensor] = None,
                   steer_rows: Rows = None, attention_fn: AttentionFn = attention,
                   guard: Optional[Guard] = None) -> torch.Tensor:
    """The paper's NASA layer for one negative: Z+ - alpha * Z-, only on ``steer_rows`` (optionally guarded)."""
    check_qkv(q, k_pos, v_pos, heads, "positive")
    z_pos = attention_fn(q, k_pos, v_pos, heads, mask=pos_mask)
    return steer(z_pos, q, [NegativeTerm(k_neg, v_neg, float(alpha), neg_mask)], heads, steer_rows, attention_fn,
                 guard=guard)
