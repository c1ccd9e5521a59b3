"""nasa_core: the runtime attention path equals the written-out formula. Pure torch, always runs."""
import math

import pytest
import torch

import nasa_core as nc  # loaded by path in conftest.py (the pack root is never on sys.path)
from nasa_test_support import head_major_attention


def _formula(q, kp, vp, kn, vn, heads, alpha):
    """Eqs. (7)-(9) of the paper, one head at a time, in float64, straight from the text."""
    b, lq, c = q.shape
    d = c // heads
    out = torch.empty(b, lq, c, dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            qh = q[bi, :, sl].double()

            def z(k, v):
                kb = k[min(bi, k.shape[0] - 1), :, sl].double()
                vb = v[min(bi, v.shape[0] - 1), :, sl].double()
                return torch.softmax(qh @ kb.T / math.sqrt(d), dim=-1) @ vb
            out[bi, :, sl] = z(kp, vp) - alpha * z(kn, vn)
    return out


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("heads", [1, 4, 8])
@pytest.mark.parametrize("lens", [(77, 77), (77, 154), (5, 300)])
def test_runtime_equals_formula(heads, lens):
    lp, ln = lens
    q = _rand(2, 33, 64, seed=1)
    kp, vp = _rand(1, lp, 64, seed=2), _rand(1, lp, 64, seed=3)
    kn, vn = _rand(1, ln, 64, seed=4), _rand(1, ln, 64, seed=5)
    got = nc.nasa_attention(q, kp, vp, kn, vn, heads, 0.7)
    want = _formula(q, kp, vp, kn, vn, heads, 0.7)
    effect = (_formula(q, kp, vp, kn, vn, heads, 0.0) - want).abs().max()
    assert effect > 0.1
    assert (got.double() - want).abs().max() <= 1e-5 * max(1.0, float(effect))
    ref = nc.reference_nasa_attention(q, kp, vp, [nc.NegativeTerm(kn, vn, 0.7)], heads)
    assert (ref.double() - want).abs().max() < 1e-5


def test_alpha_zero_returns_positive_untouched():
    q, kp, vp = _rand(2, 9, 16, seed=1), _rand(2, 7, 16, seed=2), _rand(2, 7, 16, seed=3)
    z = nc.attention(q, kp, vp, 4)
    out = nc.steer(z, q, [nc.NegativeTerm(_rand(1, 5, 16), _rand(1, 5, 16), 0.0)], 4)
    assert out is z


def test_only_selected_rows_are_steered():
    q = _rand(4, 10, 32, seed=1)
    kp, vp, kn, vn = (_rand(1, 6, 32, seed=s) for s in (2, 3, 4, 5))
    z = nc.attention(q, kp, vp, 2)
    for rows in ([0, 2], [1, 2], torch.tensor([3, 0]), torch.tensor([False, True, True, False]), slice(1, 3)):
        out = nc.steer(z, q, [nc.NegativeTerm(kn, vn, 1.0)], 2, rows)
        sel = torch.zeros(4, dtype=torch.bool)
        sel[torch.arange(4)[rows] if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool else rows] = True
        assert torch.equal(out[~sel], z[~sel])
        want = _formula(q, kp, vp, kn, vn, 2, 1.0)
        assert (out[sel].double() - want[sel]).abs().max() < 1e-5
    assert nc.steer(z, q, [nc.NegativeTerm(kn, vn, 1.0)], 2, []) is z


def test_several_negatives_sum_and_per_row_keys():
    q = _rand(2, 8, 16, seed=1)
    kp, vp = _rand(2, 6, 16, seed=2), _rand(2, 6, 16, seed=3)
    negs = [nc.NegativeTerm(_rand(2, 4, 16, seed=4), _rand(2, 4, 16, seed=5), 0.5),
            nc.NegativeTerm(_rand(1, 9, 16, seed=6), _rand(1, 9, 16, seed=7), 0.25)]
    got = nc.steer(nc.attention(q, kp, vp, 4), q, negs, 4)
    want = nc.reference_nasa_attention(q, kp, vp, negs, 4)
    assert (got - want).abs().max() < 1e-5
    manual = _formula(q, kp, vp, negs[0].k, negs[0].v, 4, 0.5) - 0.25 * (
        _formula(q, kp, vp, negs[1].k, negs[1].v, 4, 0.0) - _formula(q, kp, vp, negs[1].k, negs[1].v, 4, 1.0))
    assert (got.double() - manual).abs().max() < 1e-5


def test_key_masks_match_reference():
    q = _rand(2, 8, 16, seed=1)
    kp, vp, kn, vn = (_rand(1, 6, 16, seed=s) for s in (2, 3, 4, 5))
    pos_mask = torch.tensor([[True] * 4 + [False] * 2])
    neg_mask = torch.tensor([[True, False] * 3, [False, True] * 3])
    got = nc.nasa_attention(q, kp, vp, kn, vn, 2, 0.8, pos_mask=pos_mask, neg_mask=neg_mask)
    # masked keys are the same as dropping them
    want0 = _formula(q[:1], kp[:, :4], vp[:, :4], kn[:, 0::2], vn[:, 0::2], 2, 0.8)
    want1 = _formula(q[1:], kp[:, :4], vp[:, :4], kn[:, 1::2], vn[:, 1::2], 2, 0.8)
    assert (got[:1].double() - want0).abs().max() < 1e-5
    assert (got[1:].double() - want1).abs().max() < 1e-5
    ref = nc.reference_nasa_attention(q, kp, vp, [nc.NegativeTerm(kn, vn, 0.8, neg_mask)], 2, pos_mask=pos_mask)
    assert (got - ref).abs().max() < 1e-5


def test_bf16_close_to_fp32_formula():
    q = _rand(1, 64, 128, seed=1, dtype=torch.bfloat16)
    kp, vp, kn, vn = (_rand(1, 77, 128, seed=s, dtype=torch.bfloat16) for s in (2, 3, 4, 5))
    got = nc.nasa_attention(q, kp, vp, kn, vn, 8, 0.5)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    want = _formula(q, kp, vp, kn, vn, 8, 0.5)
    assert (got.double() - want).abs().max() < 0.05


@pytest.mark.parametrize("bad", [
    dict(k=(1, 0, 16)),            # empty prompt
    dict(k=(3, 5, 16)),            # batch neither 1 nor q's
    dict(k=(1, 5, 12)),            # width mismatch
])
def test_bad_shapes_raise_clear_errors(bad):
    q = _rand(2, 4, 16)
    k = torch.zeros(bad["k"])
    with pytest.raises(ValueError, match="NASA attention"):
        nc.nasa_attention(q, _rand(1, 5, 16), _rand(1, 5, 16), k, torch.zeros(bad["k"]), 4, 1.0)


def test_alpha_and_finite_checks():
    assert nc.check_alpha(0.5, "X") == 0.5
    for bad in (float("nan"), float("inf"), -0.1, 2.5, "abc", None):
        with pytest.raises(ValueError, match="X: alpha"):
            nc.check_alpha(bad, "X")
    t = torch.ones(1, 3, 4)
    nc.check_finite(t, "X", "'negative'")
    t[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"X: 'negative' contains 1 non-finite"):
        nc.check_finite(t, "X", "'negative'")


def test_nasa_core_imports_nothing_from_comfyui():
    import ast
    from pathlib import Path
    for f in (Path(nc.__file__).parent).glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for n in names:
                # os: processes.py reads the variables torchrun sets
                assert n.split(".")[0] in {"torch", "math", "copy", "contextlib", "re", "dataclasses", "typing",
                                           "__future__", "os"}, (f.name, n)


@pytest.mark.parametrize("rows", [None, slice(1, 3), [0, 2]])
@pytest.mark.parametrize("layout", ["rows", "head-major"])
@pytest.mark.parametrize("inplace", [False, True])
def test_head_major_and_in_place_steer_equal_the_plain_path(rows, layout, inplace):
    """Z- returned head-major (subtracted through a view, no reshape copy) and Z+ overwritten in place give the
    bit-identical result of the plain path; without ``inplace`` Z+ is never written."""
    g = torch.Generator().manual_seed(3)
    heads, b, lq, c = 4, 3, 10, 32
    q = torch.randn(b, lq, c, generator=g)
    terms = [nc.NegativeTerm(torch.randn(1, 6, c, generator=g), torch.randn(1, 6, c, generator=g), 0.7),
             nc.NegativeTerm(torch.randn(1, 5, c, generator=g), torch.randn(1, 5, c, generator=g), 0.3,
                             region=torch.rand(lq, generator=g))]
    z_pos = torch.randn(b, lq, c, generator=g)
    want = nc.steer(z_pos.clone(), q, terms, heads, rows)
    given = z_pos.clone()
    fn = head_major_attention if layout == "head-major" else nc.attention
    got = nc.steer(given, q, terms, heads, rows, attention_fn=fn, inplace=inplace)
    assert torch.equal(got, want)
    if inplace:
        assert got.data_ptr() == given.data_ptr() and torch.equal(given, want)      # no copy of Z+ was made
    else:
        assert torch.equal(given, z_pos)
