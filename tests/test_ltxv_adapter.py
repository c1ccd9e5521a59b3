"""NASA on ComfyUI's own LTXVModel (LTX-Video), tiny random weights.

Held against code written here, independent of the pack:
* hooks on every block's attn2.to_k count the negative's projection: once per block per sampling run (steps
  2+ reuse it); the negative goes through caption_projection once per run;
* a reference attn2 written out in float64 (RMS norms, projections, the prompt's attention mask, softmax,
  the negative restricted to its unpadded tokens) replaces each block's attn2 through a torch forward hook:
  NASA's output equals it;
* the negative's padding tokens (attention_mask 0) are ignored, as the model ignores the prompt's;
* alpha = 0 is bit-identical; uncond rows at cfg > 1 are bit-identical; cfg 1 runs one pass per step;
  guide-frame tokens (keyframe_idxs) are not steered.

The random-weight builder leaves RMSNorm weights at 0 (its init knows LayerNorm/GroupNorm only), which
would make every attention uniform; the models here get random RMSNorm weights in [0.5, 2).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import nasa_test_support as support

POS_LEN, POS_VALID, NEG_LEN, NEG_VALID = 16, 11, 20, 13     # T5 pads prompts; the masks mark the real tokens


@pytest.fixture(scope="module")
def env(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_models")
    cache = {}

    def model(dtype=torch.float32):
        if dtype not in cache:
            mp = rm.build_dit_model("ltxv", dtype=dtype, seed=0)
            g = torch.Generator().manual_seed(100)
            for m in mp.model.diffusion_model.modules():
                if isinstance(m, torch.nn.RMSNorm):
                    m.weight.copy_((0.5 + 1.5 * torch.rand(m.weight.shape, generator=g)).to(m.weight.dtype))
            cache[dtype] = mp
        return cache[dtype]

    node_carry = nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"]
    apply = support.apply_nasa

    def carry(cond, neg):
        return node_carry.execute(conditioning=cond, negative=neg, alpha=-1.0).result[0]

    return SimpleNamespace(model=model, apply=apply, carry=carry, width=rm.DIT_FAMILIES["ltxv"][1]["caption_channels"])


def _prompt(env, length, valid, seed, width=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, :valid] = 1
    return [[torch.randn(1, length, width or env.width, generator=g), {"attention_mask": mask}]]


def _conds(env, seed=0, neg_len=NEG_LEN, neg_valid=NEG_VALID):
    return _prompt(env, POS_LEN, POS_VALID, seed), _prompt(env, neg_len, neg_valid, seed + 1)


def _sample(mp, pos, neg, cfg=1.0, steps=1, batch=1, frames=2, size=4, capture=None):
    return support.sample(mp, torch.zeros(batch, 128, frames, size, size), pos, neg, cfg, steps, capture)


# ----------------------------------------------------------------------------- independent reference

def _lin(x, layer):
    return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())


def _rms(x, norm):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def _attention(q, k, v, heads, bias=None):
    """softmax(Q K^T / sqrt(d) + bias) V per head, float64; q (B, Lq, H*D), k/v (B or 1, Lk, H*D)."""
    b, lq, c = q.shape
    d = c // heads
    qh = q.reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias.double()
    return (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2).reshape(b, lq, c)


@contextmanager
def _reference(mp, negative, alpha):
    """Every block's attn2 of ``mp`` computes NASA written out in float64 while in this context.
    ``negative`` is a conditioning entry [tensor, {"attention_mask": ...}]; only its real tokens count."""
    dm = mp.model.diffusion_model
    text, opts = negative
    if "attention_mask" in opts:
        text = text[:, opts["attention_mask"][0].bool()]
    handles = []
    for block in dm.transformer_blocks:
        attn = block.attn2

        def hook(module, args, kwargs, output, attn=attn):
            x, context, mask = args[0], kwargs["context"], kwargs.get("mask")
            heads = attn.heads
            q = _rms(_lin(x, attn.to_q), attn.q_norm)
            z = _attention(q, _rms(_lin(context, attn.to_k), attn.k_norm), _lin(context, attn.to_v), heads, mask)
            cp = dm.caption_projection
            emb = _lin(F.gelu(_lin(text, cp.linear_1), approximate="tanh"), cp.linear_2)
            k_neg, v_neg = _rms(_lin(emb, attn.to_k), attn.k_norm), _lin(emb, attn.to_v)
            chunks = kwargs["transformer_options"]["cond_or_uncond"]
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind == 0:
                    rows = slice(c * per, (c + 1) * per)
                    z[rows] = z[rows] - alpha * _attention(q[rows], k_neg, v_neg, heads)
            return _lin(z, attn.to_out[0]).to(x.dtype)
        handles.append(attn.register_forward_hook(hook, with_kwargs=True))
    try:
        yield mp
    finally:
        for h in handles:
            h.remove()


def _reference_sample(mp, negative, alpha, *args, **kwargs):
    with _reference(mp, negative, alpha):
        return _sample(mp, *args, **kwargs)


# ----------------------------------------------------------------------------- coverage

def test_every_cross_attention_steered_exactly_once_per_forward(env):
    mp = env.model()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)
    m = env.apply(mp, alpha=0.5)
    cross_k = support.Lengths([b.attn2.to_k for b in dm.transformer_blocks])
    self_k = support.Lengths([b.attn1.to_k for b in dm.transformer_blocks])
    caption = support.Lengths([dm.caption_projection])
    fwd = support.Forwards(mp)
    try:
        _sample(m, pos, neg, cfg=1.0, steps=2)
    finally:
        for c in (cross_k, self_k, caption, fwd):
            c.close()
    assert fwd.n == 2                                          # cfg 1: one model pass per step
    for i, lengths in cross_k.calls.items():     # per forward the prompt once; the negative once per run (reused)
        assert support.once_per_run(lengths, POS_LEN, NEG_LEN, 2), (i, lengths)
    assert support.once_per_run(caption.calls[0], POS_LEN, NEG_LEN, 2)
    assert all(NEG_LEN not in lengths for lengths in self_k.calls.values())


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_alpha_zero_is_bit_identical(env, cfg):
    mp = env.model()
    pos, neg = _conds(env, neg_len=POS_LEN)
    base = _sample(mp, pos, neg, cfg=cfg, steps=2)
    assert torch.equal(_sample(env.apply(mp, alpha=0.0), pos, neg, cfg=cfg, steps=2), base)
    assert torch.equal(_sample(env.apply(mp, alpha=0.0, negative=neg), pos, neg, cfg=cfg, steps=2), base)
    steered = _sample(env.apply(mp, alpha=1.0), pos, neg, cfg=cfg, steps=2)
    assert torch.isfinite(steered).all() and (steered - base).abs().max() > 1e-2 * base.abs().max()


def test_steered_output_equals_independent_reference(env):
    mp = env.model()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg, steps=2)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, steps=2)
    support.check_close(got, _reference_sample(mp, neg[0], 0.8, pos, neg, steps=2), base)


def test_negative_padding_is_ignored_as_the_model_ignores_the_prompts(env):
    """Tokens the negative's attention_mask marks as padding do not count: rewriting them changes nothing;
    a negative without a mask attends to all its tokens (as the model would) and matches that reference."""
    mp = env.model()
    pos, neg = _conds(env)
    m = env.apply(mp, alpha=0.8)
    got = _sample(m, pos, neg)
    other_padding = [[neg[0][0].clone(), dict(neg[0][1])]]
    other_padding[0][0][:, NEG_VALID:] = 10 * torch.randn(1, NEG_LEN - NEG_VALID, env.width)
    base = _sample(mp, pos, neg)
    assert (got - _sample(m, pos, other_padding)).abs().max() <= 1e-6 * (got - base).abs().max()
    unmasked = [[neg[0][0], {}]]
    m_unmasked = env.apply(mp, alpha=0.8, negative=unmasked, use_sampler_negative=False)
    got_unmasked = _sample(m_unmasked, pos, neg)
    support.check_close(got_unmasked, _reference_sample(mp, unmasked[0], 0.8, pos, neg), base)
    assert (got_unmasked - got).abs().max() > 100 * (got - _reference_sample(mp, neg[0], 0.8, pos, neg)).abs().max()


def test_mask_reaches_nasa_from_every_source(env):
    """Sampler negative, wired negative and carried negative (NASA Negative Conditioning) steer alike: the
    negative's attention_mask travels with it on each path."""
    mp = env.model()
    pos, neg = _conds(env)
    _, other = _conds(env, seed=7)
    from_sampler = _sample(env.apply(mp, alpha=0.8), pos, neg)
    wired = _sample(env.apply(mp, alpha=0.8, negative=neg, use_sampler_negative=False), pos, other)
    carried = _sample(env.apply(mp, alpha=0.8, negative=other), env.carry(pos, neg), other)
    assert torch.equal(from_sampler, wired) and torch.equal(from_sampler, carried)


def test_cfg_above_one_steers_only_cond_rows_with_no_extra_pass(env):
    mp = env.model()
    pos, neg = _conds(env, neg_len=POS_LEN, neg_valid=7)     # same length: cond and uncond share one batched pass
    base_cap, nasa_cap, ref_cap = [], [], []
    fwd = support.Forwards(mp)
    _sample(mp, pos, neg, cfg=4.0, steps=2, capture=base_cap)
    n_plain = fwd.n
    _sample(env.apply(mp, alpha=0.8), pos, neg, cfg=4.0, steps=2, capture=nasa_cap)
    n_nasa = fwd.n - n_plain
    fwd.close()
    _reference_sample(mp, neg[0], 0.8, pos, neg, cfg=4.0, steps=2, capture=ref_cap)
    assert n_plain == n_nasa == 2
    (b_cond, b_unc), (n_cond, n_unc), (r_cond, _) = base_cap[0], nasa_cap[0], ref_cap[0]
    assert torch.equal(n_unc, b_unc)
    support.check_close(n_cond, r_cond, b_cond)


def test_batch_of_two_latents(env):
    mp = env.model()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg, batch=2)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, batch=2)
    want = _reference_sample(mp, neg[0], 0.8, pos, neg, batch=2)
    assert not torch.equal(base[0], base[1])
    for row in range(2):
        support.check_close(got[row], want[row], base[row])


def test_bf16_model(env):
    mp = env.model(torch.bfloat16).clone()
    mp.set_model_compute_dtype(torch.bfloat16)     # on CPU ComfyUI would otherwise compute bf16 weights in fp32
    pos, neg = _conds(env)
    seen = []
    h = mp.model.diffusion_model.transformer_blocks[0].attn2.to_k.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    try:
        base = _sample(mp, pos, neg)
        assert torch.equal(_sample(env.apply(mp, alpha=0.0), pos, neg), base)
        got = _sample(env.apply(mp, alpha=0.8), pos, neg)
    finally:
        h.remove()
    assert set(seen) == {torch.bfloat16} and torch.isfinite(got).all()
    support.check_close(got, _reference_sample(mp, neg[0], 0.8, pos, neg), base, tol=0.1)


# ----------------------------------------------------------------------------- what is not steered

def test_guide_frame_tokens_are_not_steered(env):
    """Tokens of guide frames appended by LTXVAddGuide (keyframe_idxs) are conditioning: the first block's
    cross-attention output of those tokens is bit-identical with NASA; the video's is not."""
    mp = env.model()
    pos, neg = _conds(env)
    guide = 4 * 4                                       # one appended 4x4 latent frame
    coords = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0) * 32, torch.arange(4.0) * 32,
                                        indexing="ij")).reshape(1, 3, guide)
    pos = [[pos[0][0], {**pos[0][1], "keyframe_idxs": coords}]]
    outs = []
    h = mp.model.diffusion_model.transformer_blocks[0].attn2.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        _sample(mp, pos, neg, frames=3)
        _sample(env.apply(mp, alpha=1.0), pos, neg, frames=3)
    finally:
        h.remove()
    plain, nasa = outs
    assert plain.shape[1] == 3 * 16
    assert torch.equal(nasa[:, -guide:], plain[:, -guide:])
    assert ((nasa[:, :-guide] - plain[:, :-guide]).abs().amax(-1) > 0).all()


# ----------------------------------------------------------------------------- the node's input, bad input

def test_input_model_untouched(env):
    mp = env.model()
    pos, neg = _conds(env)
    opts_before, wrappers_before = repr(mp.model_options), repr(mp.wrappers)
    plain_before = _sample(mp, pos, neg)
    steered = _sample(env.apply(mp), pos, neg)
    assert torch.equal(_sample(mp, pos, neg), plain_before) and not torch.equal(steered, plain_before)
    assert repr(mp.model_options) == opts_before and repr(mp.wrappers) == wrappers_before


def test_clip_width_negative_is_refused_naming_node_family_and_fix(env):
    mp = env.model()
    pos, bad = _conds(env)[0], _prompt(env, NEG_LEN, NEG_VALID, 3, width=768)
    assert env.width != 768
    with pytest.raises(ValueError) as e:
        env.apply(mp, negative=bad)
    msg = str(e.value)
    assert "Apply NASA Attention" in msg and "LTX-Video (LTXV)" in msg and f"expects {env.width}" in msg
    assert "768" in msg and "same text encoder as the positive" in msg
    with pytest.raises(ValueError, match=r"Apply NASA Attention: the sampler's negative is 768 wide but this "
                                         r"LTX-Video \(LTXV\) model"):
        _sample(env.apply(mp), pos, bad)


def test_mask_of_another_length_is_refused(env):
    mp = env.model()
    pos, neg = _conds(env)
    bad = [[neg[0][0], {"attention_mask": torch.ones(1, NEG_LEN + 3, dtype=torch.long)}]]
    with pytest.raises(ValueError, match="Apply NASA Attention: the negative's attention_mask covers 23 tokens "
                                         "but the negative has 20"):
        _sample(env.apply(mp, negative=bad), pos, neg)
