"""The other attention-space negative methods beside NASA, on the same two attention outputs NASA computes.

Pure torch, no ComfyUI. Every steered layer of every family already computes, in one pass, the image queries'
attention to the positive prompt (Z+, the host's own output) and to each negative (Z-_i, the negative projected by
the layer's own weights), with a coefficient c_i per negative (the method's strength times the block multiplier,
the step window, the negative's share; see nasa_core.attention.NegativeTerm). The methods differ only in how they
combine them:

* **NASA** (ours): Z = Z+ - sum_i c_i r_i Z-_i (``r_i``: the negative's region weight per query token, 1 without
  a mask).
* **NAG** (Normalized Attention Guidance, Chen et al., NeurIPS 2025): extrapolate away from the negative,
  Z~ = Z+ + sum_i c_i r_i (Z+ - Z-_i); where its per-token L1 norm exceeds ``tau`` times Z+'s, scale it down to
  that; blend with Z+ by ``alpha``: Z = Z+ + alpha (Z~ - Z+). With one negative and c = ``scale`` - 1 this is
  ``scale * Z+ - (scale - 1) * Z-`` as the authors' code, ComfyUI's NAGuidance node and the NAG packs write it
  (the paper's extrapolation scale is ``scale - 1``). Its norms run per token over all channels (every head), as
  those implementations take them.
* **VSF** (Value Sign Flip, ICLR 2026): one softmax over the positive keys and the negatives' keys, the negatives'
  logits raised by ``bias`` and their values' sign flipped and scaled: Z = softmax([S+; S-_i + bias])
  [V+; -c_i V-_i]. It needs the layer's positive keys and values (not only Z+): :func:`vsf_attention`.

Each method has a float64 reference written from its paper here (:func:`reference_nag`, :func:`reference_vsf`),
held equal to the runtime paths in the tests. A method at zero strength returns Z+ untouched (bit for bit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .attention import (AttentionFn, NegativeTerm, additive_mask, check_qkv, weighted, attention,
                        reference_attention, region_weight, row_index)

METHODS = ("nasa", "nag", "vsf")
NAG_EPS = 1e-6
"""Floor of the per-token L1 norms in NAG's ratio (the authors' code and ComfyUI's NAGuidance use the same)."""


@dataclass(frozen=True)
class Nag:
    """NAG's settings. ``scale``: the guidance scale as ComfyUI's NAGuidance and the NAG packs name it (1 = off;
    the NAG authors use 5 on FLUX and SD3.5, 5-11 on SDXL and Wan); the run's coefficients carry ``scale - 1``.
    ``tau``: the largest allowed ratio ||Z~||_1 / ||Z+||_1 per token (authors' default 2.5; ComfyUI's node
    1.5). ``alpha``: the blend toward the normalized Z~ (authors' default 0.25 on FLUX, 0.5 elsewhere; 0 = off)."""

    scale: float = 5.0
    tau: float = 2.5
    alpha: float = 0.25
    name = "nag"

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 1.0):
            raise ValueError(f"NAG: scale must be a number >= 1 (1 = off; the NAG authors use 5); got {self.scale}. "
                             f"Below 1 it would steer toward the negative.")
        if not (math.isfinite(self.tau) and self.tau >= 1.0):
            raise ValueError(f"NAG: tau is the largest allowed L1 ratio ||Z~|| / ||Z+|| per token, a number >= 1 "
                             f"(the authors use 2.5); got {self.tau}")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"NAG: alpha blends the normalized guidance into Z+, a number in [0, 1] (the authors "
                             f"use 0.25 on FLUX, 0.5 elsewhere); got {self.alpha}")

    @property
    def strength(self) -> float:
        """The coefficient base of the run's negatives: the paper's extrapolation scale, ``scale - 1``."""
        return self.scale - 1.0

    @property
    def off(self) -> bool:
        return self.scale == 1.0 or self.alpha == 0.0

    def finish(self, z_pos: torch.Tensor, z_nasa: torch.Tensor, weight, head_major: bool = False) -> torch.Tensor:
        """NAG's output from NASA's: ``z_nasa`` = Z+ - sum_i w_i Z-_i and ``weight`` = sum_i w_i (a number, or a
        per-token tensor broadcasting against Z+'s token axis: the regions) give Z~ = z_nasa + weight * Z+
        = Z+ + sum_i w_i (Z+ - Z-_i); then the L1 cap at ``tau`` and the blend. ``head_major``: the tensors are
        (B, H, L, D) (norms over heads and channels), else (B, L, C). A token whose Z~ is Z+ (weight 0 there)
        comes back as Z+ bit for bit."""
        guided = z_nasa + weight * z_pos if isinstance(weight, torch.Tensor) else torch.add(z_nasa, z_pos,
                                                                                               alpha=weight)
        dims = (1, 3) if head_major else (-1,)
        norm_pos = z_pos.float().abs().sum(dim=dims, keepdim=True).clamp_min(NAG_EPS)
        norm_guided = guided.float().abs().sum(dim=dims, keepdim=True).clamp_min(NAG_EPS)
        ratio = norm_guided / norm_pos
        factor = torch.where(ratio > self.tau, self.tau / ratio, torch.ones_like(ratio)).to(guided.dtype)
        return torch.add(z_pos, guided * factor - z_pos, alpha=self.alpha)


@dataclass(frozen=True)
class Vsf:
    """VSF's settings. ``scale``: the factor the negatives' values are flipped with (-scale * V-; the run's
    coefficients carry it; the VSF authors use 3.5 on SD3.5 Large Turbo, 1.8 on Wan 2.1 with CausVid);
    ``bias``: added to the negatives' attention logits (the authors' ``offset``, 0.1)."""

    scale: float = 3.5
    bias: float = 0.1
    name = "vsf"

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 0.0):
            raise ValueError(f"VSF: scale flips the negative's values (-scale * V-), a number >= 0 (0 = off; the "
                             f"VSF authors use 1.8-3.5); got {self.scale}")
        if not math.isfinite(self.bias):
            raise ValueError(f"VSF: bias is added to the negative's attention logits, a finite number (the VSF "
                             f"authors use 0.1); got {self.bias}")

    @property
    def strength(self) -> float:
        """The coefficient base of the run's negatives: the value factor ``scale``."""
        return self.scale

    @property
    def off(self) -> bool:
        return self.scale == 0.0

    def attend(self, q, k_pos, v_pos, negatives: Sequence[NegativeTerm], heads: int, attention_fn: AttentionFn,
               pos_mask: Optional[torch.Tensor], z_pos: torch.Tensor, rows=None) -> torch.Tensor:
        """VSF's output for the steered rows ``q`` (B, Lq, H*D) as (B, Lq, H*D), from the layer's positive keys and
        values and the rows' Z+ ``z_pos`` (kept where a regional negative's weight is 0: Z+ + r (Z_vsf - Z+)).
        One softmax takes one region: a masked negative must be the only negative of its prompt. ``rows``: the
        batch rows ``q`` was taken from (a region with a batch is selected by them)."""
        active = [t for t in negatives if t.coef != 0.0]
        regional = [t for t in active if t.region is not None]
        check_vsf_regions(len(active), len(regional))
        z = vsf_attention(q, k_pos, v_pos, active, heads, self.bias, pos_mask, attention_fn)
        if z.ndim == 4:         # head-major (B, H, Lq, D) from the host's kernel
            z = z.transpose(1, 2).reshape(q.shape)
        z = z.to(z_pos.dtype)
        if regional:
            z = torch.addcmul(z_pos, region_weight(regional[0], z, rows), z - z_pos)
        return z


Method = Optional[object]     # None (NASA), a Nag or a Vsf


def check_method(method) -> None:
    if method is not None and not isinstance(method, (Nag, Vsf)):
        raise TypeError(f"NASA: method must be None (NASA), nasa_core.Nag or nasa_core.Vsf; got {type(method).__name__}")


def check_vsf_regions(negatives: int, regional: int) -> None:
    """VSF's one softmax takes one region: a masked (regional) negative must be the only negative of its prompt."""
    if regional and negatives > 1:
        raise ValueError("VSF: a masked (regional) negative must be the only negative of its prompt: VSF puts "
                         "all negatives into one softmax, which cannot weight each by its own region. Use NASA "
                         "or NAG for several masked negatives, or one masked negative with VSF.")


def _vsf_keys(k_pos, v_pos, pos_mask, negatives: Sequence[NegativeTerm], bias: float, dtype, device):
    """[K+; K-_i], [V+; -c_i V-_i] and the additive key mask [pos mask; neg mask + bias] of VSF's one softmax, the
    mask as (B or 1, 1, Lk): the key-mask layout every ComfyUI attention backend broadcasts over heads and queries."""
    masks = []
    width = max(t.shape[0] for t in [k_pos] + [n.k for n in negatives])
    ks = [t.expand(width, -1, -1) for t in [k_pos] + [n.k for n in negatives]]
    vs = [v_pos.expand(width, -1, -1)] + [(-n.coef * n.v).expand(width, -1, -1) for n in negatives]
    pos_add = additive_mask(pos_mask, width, dtype, device)
    masks.append(torch.zeros(width, k_pos.shape[1], dtype=dtype, device=device) if pos_add is None
                 else pos_add[:, 0, 0])
    for n in negatives:
        add = additive_mask(n.mask, width, dtype, device)
        base = torch.zeros(width, n.k.shape[1], dtype=dtype, device=device) if add is None else add[:, 0, 0]
        masks.append(base + bias)
    return torch.cat(ks, dim=1), torch.cat(vs, dim=1), torch.cat(masks, dim=1)[:, None]


def vsf_attention(q, k_pos, v_pos, negatives: Sequence[NegativeTerm], heads: int, bias: float,
                  pos_mask: Optional[torch.Tensor] = None, attention_fn: AttentionFn = attention) -> torch.Tensor:
    """VSF's attention output for ``q`` (B, Lq, H*D): one call of ``attention_fn`` over [K+; K-_i] with values
    [V+; -coef_i V-_i] and the negatives' logits raised by ``bias`` (an additive key mask, so the host's kernel
    runs it). Terms at coefficient 0 are left out: with none left this is plain attention. Regions are not
    applied here (see :meth:`Vsf.attend`). Returns (B, Lq, H*D), or head-major if ``attention_fn`` returns that."""
    active = [t for t in negatives if t.coef != 0.0]
    check_qkv(q, k_pos, v_pos, heads, "positive")
    for t in active:
        check_qkv(q, t.k, t.v, heads, "negative")
    if not active:
        return attention_fn(q, k_pos, v_pos, heads, mask=pos_mask)
    k, v, mask = _vsf_keys(k_pos, v_pos, pos_mask, active, bias, q.dtype, q.device)
    return attention_fn(q, k, v, heads, mask=mask)


def reference_nag(q, k_pos, v_pos, negatives: Sequence[NegativeTerm], heads: int, nag: Nag,
                  pos_mask: Optional[torch.Tensor] = None, steer_rows=None) -> torch.Tensor:
    """NAG written out from the paper in float64: Z~ = Z+ + sum_i c_i r_i (Z+ - Z-_i), capped at tau times Z+'s
    per-token L1 norm, blended by alpha; rows not in ``steer_rows`` keep Z+."""
    z_pos = reference_attention(q, k_pos, v_pos, heads, pos_mask).double()
    rows = row_index(steer_rows, q.shape[0], q.device)
    guided = z_pos.clone()
    for term in negatives:
        z_neg = reference_attention(q, term.k, term.v, heads, term.mask).double()
        guided = guided + weighted(z_pos - z_neg, term)
    norm_pos = z_pos.abs().sum(-1, keepdim=True).clamp_min(NAG_EPS)
    norm_guided = guided.abs().sum(-1, keepdim=True).clamp_min(NAG_EPS)
    ratio = norm_guided / norm_pos
    capped = guided * torch.minimum(ratio, torch.full_like(ratio, nag.tau)) / ratio
    z = nag.alpha * capped + (1 - nag.alpha) * z_pos
    out = z_pos.clone()
    out[rows] = z[rows]
    return out.to(q.dtype)


def reference_vsf(q, k_pos, v_pos, negatives: Sequence[NegativeTerm], heads: int, vsf: Vsf,
                  pos_mask: Optional[torch.Tensor] = None, steer_rows=None) -> torch.Tensor:
    """VSF written out from the paper in float64, with an explicit softmax over [S+; S-_i + bias] against
    [V+; -c_i V-_i]; a regional negative blends per token: Z+ + r (Z_vsf - Z+). Rows not steered keep Z+."""
    b, lq, c = q.shape
    d = c // heads

    def split(t):
        return t.double().expand(b, -1, -1).reshape(b, t.shape[1], heads, d).transpose(1, 2)

    def scores(k, mask, add):
        s = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d) + add
        m = additive_mask(mask, b, torch.float64, q.device)
        return s if m is None else s + m

    z_pos = reference_attention(q, k_pos, v_pos, heads, pos_mask).double()
    active = [t for t in negatives if t.coef != 0.0]
    if not active:
        return z_pos.to(q.dtype)
    s = torch.cat([scores(k_pos, pos_mask, 0.0)] + [scores(t.k, t.mask, vsf.bias) for t in active], dim=-1)
    v = torch.cat([split(v_pos)] + [-t.coef * split(t.v) for t in active], dim=2)
    z_vsf = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, lq, c)
    regions = [t for t in active if t.region is not None]
    if regions:                 # one masked negative: its weight per query token
        r = torch.ones(b, lq, 1, dtype=torch.float64) * regions[0].region.double().reshape(-1, lq, 1)
        z_vsf = z_pos + r * (z_vsf - z_pos)
    out = z_pos.clone()
    rows = row_index(steer_rows, b, q.device)
    out[rows] = z_vsf[rows]
    return out.to(q.dtype)
