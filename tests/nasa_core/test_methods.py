"""NAG and VSF beside NASA (nasa_core.methods): every steering path of nasa_core.steer (all rows / a slice / an
index list, rows or head-major Z-, in place or not, regional terms, key masks) equals each method's float64
reference; each method at zero strength is Z+ bit for bit; the parameters mean what ComfyUI's NAGuidance node and
the VSF authors' code mean by them."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import nasa_core as nc  # loaded by path in conftest.py
from nasa_test_support import head_major_attention

HEADS, B, LQ, C = 4, 3, 10, 32
PATHS = [(rows, layout, inplace) for rows in (None, slice(1, 3), [0, 2])
         for layout in ("rows", "head-major") for inplace in (False, True)]


def _case(seed=3, coefs=(4.0, 1.5), region=True, masks=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, LQ, C, generator=g)
    kp, vp = torch.randn(1, 7, C, generator=g), torch.randn(1, 7, C, generator=g)
    mask = (torch.rand(1, 6, generator=g) > 0.3) if masks else None
    terms = [nc.NegativeTerm(torch.randn(1, 6, C, generator=g), torch.randn(1, 6, C, generator=g), coefs[0], mask)]
    if len(coefs) > 1:
        terms.append(nc.NegativeTerm(torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g), coefs[1],
                                     region=torch.rand(LQ, generator=g) if region else None))
    return q, kp, vp, terms


def _steer(q, kp, vp, terms, rows, layout, inplace, method, guard=None, pos_mask=None):
    z_pos = nc.attention(q, kp, vp, HEADS, mask=pos_mask)
    fn = head_major_attention if layout == "head-major" else nc.attention
    return nc.steer(z_pos, q, terms, HEADS, rows, attention_fn=fn, inplace=inplace, guard=guard, method=method,
                    positive=(kp, vp, pos_mask))


# --- NAG ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.2, 6.0, 100.0])
@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_nag_equals_its_reference(tau, rows, layout, inplace):
    """Several negatives (one regional, one key-masked), every path; tau 1.2 caps every token, 6 some, 100 none."""
    nag = nc.Nag(scale=5.0, tau=tau, alpha=0.4)
    q, kp, vp, terms = _case(masks=True)
    got = _steer(q, kp, vp, terms, rows, layout, inplace, nag)
    want = nc.reference_nag(q, kp, vp, terms, HEADS, nag, steer_rows=rows)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_nag_caps_where_the_l1_ratio_exceeds_tau_and_only_there():
    """The cap is live in the cases above: at tau 6 some tokens are over it, some under; at 1.2 all over, at 100
    none (else those tests could not tell a cap from none)."""
    q, kp, vp, terms = _case(coefs=(4.0,))
    z_pos = nc.attention(q, kp, vp, HEADS).double()
    z_neg = nc.attention(q, terms[0].k, terms[0].v, HEADS).double()
    ratio = (z_pos + 4.0 * (z_pos - z_neg)).abs().sum(-1) / z_pos.abs().sum(-1)
    assert (ratio > 6.0).any() and (ratio < 6.0).any() and (ratio > 1.2).all() and (ratio < 100).all()


def test_nag_is_comfyuis_nag_formula_with_one_negative():
    """scale, tau, alpha as ComfyUI's NAGuidance node (and the NAG authors' code) compute them, written out here
    on Z+ and Z-: guided = scale Z+ - (scale - 1) Z-, L1 ratio capped at tau, blended by alpha. The run's
    coefficient for NAG is ``scale - 1`` (Nag.strength)."""
    nag = nc.Nag(scale=5.0, tau=1.5, alpha=0.5)
    q, kp, vp, terms = _case(coefs=(nag.strength,))
    z_pos = nc.attention(q, kp, vp, HEADS).double()
    z_neg = nc.attention(q, terms[0].k, terms[0].v, HEADS).double()
    guided = z_pos * 5.0 - z_neg * 4.0
    ratio = guided.abs().sum(-1, keepdim=True).clamp_min(1e-6) / z_pos.abs().sum(-1, keepdim=True).clamp_min(1e-6)
    want = guided * torch.minimum(ratio, torch.full_like(ratio, 1.5)) / ratio * 0.5 + z_pos * 0.5
    got = _steer(q, kp, vp, terms, None, "rows", False, nag)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_nag_off_is_z_plus_bit_for_bit(rows, layout, inplace):
    q, kp, vp, terms = _case()
    plain = nc.attention(q, kp, vp, HEADS)
    off = nc.Nag(scale=1.0)            # strength 0: every coefficient 0
    zero = [dataclasses.replace(t, coef=off.strength * t.coef) for t in terms]
    assert torch.equal(_steer(q, kp, vp, zero, rows, layout, inplace, off), plain)
    # alpha 0: the blend keeps Z+ exactly, whatever the guidance
    assert torch.equal(_steer(q, kp, vp, terms, rows, layout, inplace, nc.Nag(scale=5.0, alpha=0.0)), plain)
    assert off.off and nc.Nag(alpha=0.0).off and not nc.Nag().off


def test_nag_tokens_outside_a_region_keep_z_plus_bit_for_bit():
    q, kp, vp, _ = _case()
    g = torch.Generator().manual_seed(9)
    region = (torch.arange(LQ) % 2).float()
    term = nc.NegativeTerm(torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g), 4.0, region=region)
    plain = nc.attention(q, kp, vp, HEADS)
    got = _steer(q, kp, vp, [term], None, "rows", False, nc.Nag())
    assert torch.equal(got[:, region == 0], plain[:, region == 0])
    assert not torch.allclose(got[:, region == 1], plain[:, region == 1])


def test_nag_then_guard_is_the_guard_on_nags_output():
    nag, guard = nc.Nag(scale=5.0, tau=2.5, alpha=0.5), nc.Guard("clip", tau=1.65)
    q, kp, vp, terms = _case(region=False)
    z_pos = nc.attention(q, kp, vp, HEADS)
    z = nc.reference_nag(q, kp, vp, terms, HEADS, nag).double()
    norm, pos = z.norm(dim=-1, keepdim=True), z_pos.double().norm(dim=-1, keepdim=True)
    want = torch.where(norm > 1.65 * pos, z * 1.65 * pos / norm, z)
    assert (norm > 1.65 * pos).any() and (norm < 1.65 * pos).any()
    torch.testing.assert_close(_steer(q, kp, vp, terms, None, "rows", True, nag, guard).double(), want,
                               rtol=1e-5, atol=1e-5)


# --- VSF ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [0.1, -1.0])
@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_vsf_equals_its_reference(bias, rows, layout, inplace):
    """Two negatives in one softmax (one key-masked) and a masked positive, every path."""
    vsf = nc.Vsf(scale=3.5, bias=bias)
    q, kp, vp, terms = _case(coefs=(3.5, 1.0), region=False, masks=True)
    pos_mask = torch.tensor([[True] * 6 + [False]])
    got = _steer(q, kp, vp, terms, rows, layout, inplace, vsf, pos_mask=pos_mask)
    want = nc.reference_vsf(q, kp, vp, terms, HEADS, vsf, pos_mask=pos_mask, steer_rows=rows)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_vsf_is_one_softmax_written_as_a_mix_of_z_plus_and_the_flipped_negative():
    """An independent form of VSF's one softmax: per head and query, Z = p Z+ - (1 - p) s Z-, where p is the
    positive keys' share of the softmax mass, sigmoid(LSE+ - LSE- - bias)."""
    vsf = nc.Vsf(scale=2.0, bias=0.3)
    q, kp, vp, terms = _case(coefs=(2.0,))
    d = C // HEADS

    def heads_of(t):
        return t.double().expand(B, -1, -1).reshape(B, t.shape[1], HEADS, d).transpose(1, 2)

    def lse_and_out(k, v):
        s = heads_of(q) @ heads_of(k).transpose(-1, -2) / math.sqrt(d)
        return torch.logsumexp(s, -1, keepdim=True), torch.softmax(s, -1) @ heads_of(v)
    lse_pos, z_pos = lse_and_out(kp, vp)
    lse_neg, z_neg = lse_and_out(terms[0].k, terms[0].v)
    p = torch.sigmoid(lse_pos - lse_neg - 0.3)
    want = (p * z_pos - (1 - p) * 2.0 * z_neg).transpose(1, 2).reshape(B, LQ, C)
    torch.testing.assert_close(_steer(q, kp, vp, terms, None, "rows", False, vsf).double(), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_vsf_with_the_negative_off_is_z_plus_bit_for_bit(rows, layout, inplace):
    q, kp, vp, terms = _case(coefs=(0.0, 0.0))
    assert torch.equal(_steer(q, kp, vp, terms, rows, layout, inplace, nc.Vsf(scale=0.0)), nc.attention(q, kp, vp, HEADS))
    assert nc.Vsf(scale=0.0).off and not nc.Vsf().off


def test_vsf_regional_negative_blends_per_token_and_keeps_z_plus_outside():
    vsf = nc.Vsf()
    q, kp, vp, _ = _case()
    g = torch.Generator().manual_seed(5)
    region = torch.rand(B, LQ, generator=g)         # one weight row per batch row
    region[:, :3] = 0.0
    term = nc.NegativeTerm(torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g), 3.5, region=region)
    got = _steer(q, kp, vp, [term], [0, 2], "head-major", False, vsf)
    torch.testing.assert_close(got, nc.reference_vsf(q, kp, vp, [term], HEADS, vsf, steer_rows=[0, 2]),
                               rtol=1e-5, atol=1e-5)
    plain = nc.attention(q, kp, vp, HEADS)
    assert torch.equal(got[:, :3], plain[:, :3]) and torch.equal(got[1], plain[1])


def test_vsf_refuses_several_negatives_when_one_is_regional():
    q, kp, vp, terms = _case(coefs=(3.5, 1.0), region=True)
    with pytest.raises(ValueError, match="masked .regional. negative must be the only negative"):
        _steer(q, kp, vp, terms, None, "rows", False, nc.Vsf())


def test_vsf_without_the_positive_keys_is_a_clear_error():
    q, kp, vp, terms = _case(region=False)
    z_pos = nc.attention(q, kp, vp, HEADS)
    with pytest.raises(RuntimeError, match="positive keys and values, which the chosen method .VSF. needs"):
        nc.steer(z_pos, q, terms, HEADS, method=nc.Vsf())


# --- settings ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,words", [
    (lambda: nc.Nag(scale=0.5), "scale must be a number >= 1"),
    (lambda: nc.Nag(tau=0.9), "tau is the largest allowed L1 ratio"),
    (lambda: nc.Nag(alpha=1.5), "alpha blends the normalized guidance"),
    (lambda: nc.Nag(scale=float("nan")), "scale must be a number >= 1"),
    (lambda: nc.Vsf(scale=-1.0), "scale flips the negative's values"),
    (lambda: nc.Vsf(bias=float("inf")), "bias is added to the negative's attention logits"),
])
def test_bad_method_settings_raise_clear_errors(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_published_defaults_and_strengths():
    assert nc.METHODS == ("nasa", "nag", "vsf")
    assert (nc.Nag().scale, nc.Nag().tau, nc.Nag().alpha, nc.Nag().strength) == (5.0, 2.5, 0.25, 4.0)
    assert (nc.Vsf().scale, nc.Vsf().bias, nc.Vsf().strength) == (3.5, 0.1, 3.5)
    nc.check_method(None), nc.check_method(nc.Nag()), nc.check_method(nc.Vsf())
    with pytest.raises(TypeError, match="method must be None"):
        nc.check_method("nag")
