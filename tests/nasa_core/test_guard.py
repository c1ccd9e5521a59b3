"""The stability guard (nasa_core.Guard): exact when off, equal to a float64 reference when on, in every
steering path (all rows / a slice / an index list, rows or head-major Z-, in place or not, regional terms)."""
from __future__ import annotations

import pytest
import torch

import nasa_core as nc  # loaded by path in conftest.py
from nasa_test_support import head_major_attention

HEADS, B, LQ, C = 4, 3, 10, 32


def _case(seed=3, coef=0.7):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, LQ, C, generator=g)
    kp, vp = torch.randn(1, 7, C, generator=g), torch.randn(1, 7, C, generator=g)
    terms = [nc.NegativeTerm(torch.randn(1, 6, C, generator=g), torch.randn(1, 6, C, generator=g), coef),
             nc.NegativeTerm(torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g), 0.3,
                             region=torch.rand(LQ, generator=g))]
    return q, kp, vp, terms


PATHS = [(rows, layout, inplace) for rows in (None, slice(1, 3), [0, 2])
         for layout in ("rows", "head-major") for inplace in (False, True)]


def _steer(q, kp, vp, terms, rows, layout, inplace, guard):
    z_pos = nc.attention(q, kp, vp, HEADS)
    fn = head_major_attention if layout == "head-major" else nc.attention
    return nc.steer(z_pos, q, terms, HEADS, rows, attention_fn=fn, inplace=inplace, guard=guard)


@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_off_is_plain_nasa_bit_for_bit(rows, layout, inplace):
    q, kp, vp, terms = _case()
    plain = _steer(q, kp, vp, terms, rows, layout, inplace, None)
    assert torch.equal(_steer(q, kp, vp, terms, rows, layout, inplace, nc.Guard("off")), plain)
    # a clip no token reaches multiplies by exactly 1.0: also plain NASA bit for bit
    assert torch.equal(_steer(q, kp, vp, terms, rows, layout, inplace, nc.Guard("clip", tau=1e6)), plain)


@pytest.mark.parametrize("mode,tau", [("rescale", 1.0), ("clip", 1.3), ("clip", 1.45)])
@pytest.mark.parametrize("rows,layout,inplace", PATHS)
def test_on_equals_the_reference(mode, tau, rows, layout, inplace):
    q, kp, vp, terms = _case(coef=1.0)          # plain ||Z||/||Z+|| spans 1.21-1.70: each tau splits the tokens
    guard = nc.Guard(mode, tau)
    got = _steer(q, kp, vp, terms, rows, layout, inplace, guard)
    want = nc.reference_nasa_attention(q, kp, vp, terms, HEADS, steer_rows=rows, guard=guard)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = _steer(q, kp, vp, terms, rows, layout, inplace, None)
    z_pos = nc.attention(q, kp, vp, HEADS)
    steered = torch.zeros(B, dtype=torch.bool)
    steered[nc.row_index(rows, B, "cpu")] = True
    assert torch.equal(got[~steered], z_pos[~steered])                  # unsteered rows stay Z+
    ratio = got[steered].norm(dim=-1) / z_pos[steered].norm(dim=-1)
    if mode == "rescale":
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=1e-5, atol=0)
    else:
        plain_ratio = plain[steered].norm(dim=-1) / z_pos[steered].norm(dim=-1)
        bites = plain_ratio > tau
        assert bites.any() and (~bites).any(), "the case must have tokens on both sides of tau"
        torch.testing.assert_close(ratio[bites], torch.full_like(ratio[bites], tau), rtol=1e-5, atol=0)
        assert torch.equal(got[steered][~bites], plain[steered][~bites])    # below tau: plain NASA exactly


def test_guard_keeps_the_gradient_path_of_nasa_t():
    q, kp, vp, terms = _case(coef=1.5)
    z_pos = nc.attention(q, kp, vp, HEADS).requires_grad_(True)
    out = nc.steer(z_pos, q, terms, HEADS, None, guard=nc.Guard("clip", 1.0), inplace=True)
    out.square().sum().backward()
    assert z_pos.grad is not None and torch.isfinite(z_pos.grad).all()


def test_zero_result_token_stays_zero_under_rescale():
    z = torch.zeros(1, 2, 4)
    factor = nc.Guard("rescale").scale(torch.ones(1, 2, 1), z)
    assert torch.equal(factor, torch.ones(1, 2, 1))


@pytest.mark.parametrize("kwargs,words", [({"mode": "norm"}, "mode must be one of off, rescale, clip"),
                                          ({"mode": "clip", "tau": 0.0}, "positive number"),
                                          ({"mode": "clip", "tau": float("nan")}, "positive number")])
def test_bad_guard_settings_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        nc.Guard(**kwargs)
