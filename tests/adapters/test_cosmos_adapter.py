"""NASA on ComfyUI's own Cosmos Predict2 (MiniTrainDIT: T2I, I2V) and Anima (the same DiT behind an LLM adapter),
tiny random weights.

Held against code written here, independent of the pack:
* a reference cross-attention written out in float64 (q/k projections with per-head RMS norms, softmax, the
  subtraction of alpha * Z- on the cond rows, output_proj) replaces each block's cross_attn through a torch forward
  hook: NASA's output equals it at cfg 1 over two steps, and on the cond rows at cfg > 1;
* the negative's context is what the model itself makes of that prompt: for Cosmos Predict2 the T5 output as is;
  for Anima the context a block receives when the negative is sampled as an ordinary prompt (its Qwen3 states and
  its own T5 ids through the LLM adapter, padded to 512), read off a plain run - with the adapter run in
  Anima.forward (no inference mode) and in model_base.Anima.extra_conds (inference mode, as ComfyUI samples);
* the negative is projected once per block per sampling run (steps 2+ reuse it), Anima's adapter runs on it once;
* I2V conditioning frames (denoise mask 0: CosmosPredict2ImageToVideoLatent's start image) are not steered;
* refusals: another node's cross_attn patch, a block of another class.

The generic checks run on the three cases in test_contract.py. The random-weight builder leaves RMSNorm weights at 0;
family_cases.py draws them in [0.5, 2).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

FAMILIES = ["cosmos_predict2_t2i", "cosmos_predict2_i2v", "anima"]


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    return SimpleNamespace(rm=rm, apply=support.apply_nasa, mod=comfyui.mod)


def _model(env, family, **overrides):
    cases.skip_if_missing(family)
    return cases.model(env.rm, family, **overrides)


def _conds(env, family, **kw):
    return cases.conds(env.rm, family, **kw)


def _sample(mp, family, pos, neg, **kw):
    return cases.sample(mp, family, pos, neg, **kw)


# ----------------------------------------------------------------------------- independent reference

def _lin(x, layer, weight=None):
    w = layer.weight if weight is None else weight
    return F.linear(x.double(), w.double(), None if layer.bias is None else layer.bias.double())


def _rms_heads(x, norm, heads):
    """RMS norm over each head's channels (q_norm / k_norm act on (..., heads, head_dim))."""
    shape = x.shape
    x = x.double().reshape(*shape[:-1], heads, -1)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    return x.reshape(shape)


def _attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, float64; q (B, Lq, H*D), k/v (B or 1, Lk, H*D)."""
    b, lq, c = q.shape
    d = c // heads
    qh = q.reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, lq, c)


def _reference(mp, negative_context, alpha, fixed_tokens=None, weights=None, method=None):
    """Every block's cross_attn of ``mp`` computes NASA (or ``method``, written as support.steered_written_out takes
    it) written out in float64 while the hooks are open.
    ``negative_context``: (1, L, width), the context the model makes of the negative prompt. ``fixed_tokens``: query
    tokens not steered (conditioning frames). ``weights``: parameter name -> tensor the negative's K/V use."""
    dm = mp.model.diffusion_model
    w = weights or {}
    hooks = []
    for i, block in enumerate(dm.blocks):
        attn = block.cross_attn

        def hook(module, args, kwargs, output, attn=attn, i=i):
            x = args[0]
            context = args[1] if len(args) > 1 else kwargs["context"]
            heads = attn.n_heads
            q = _rms_heads(_lin(x, attn.q_proj), attn.q_norm, heads)
            k, v = _rms_heads(_lin(context, attn.k_proj), attn.k_norm, heads), _lin(context, attn.v_proj)
            z = _attention(q, k, v, heads)
            k_neg = _rms_heads(_lin(negative_context, attn.k_proj, w.get(f"blocks.{i}.cross_attn.k_proj.weight")),
                               attn.k_norm, heads)
            v_neg = _lin(negative_context, attn.v_proj, w.get(f"blocks.{i}.cross_attn.v_proj.weight"))
            chunks = kwargs["transformer_options"]["cond_or_uncond"]
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind == 0:
                    rows = slice(c * per, (c + 1) * per)
                    steered = support.steered_written_out(
                        method, z[rows], *(support.split_heads(t.expand(per, -1, -1), heads) for t in (
                            q[rows], k[rows], v[rows], k_neg, v_neg)), alpha)
                    if fixed_tokens is not None:
                        steered[:, fixed_tokens] = z[rows][:, fixed_tokens]
                    z[rows] = steered
            return _lin(z, attn.output_proj).to(x.dtype)
        hooks.append((attn, hook))
    return support.Replacing(hooks)


def _context_of(mp, family, prompt):
    """The context block 0's cross-attention receives when ``prompt`` is sampled as an ordinary positive."""
    seen = []
    attn = mp.model.diffusion_model.blocks[0].cross_attn
    h = attn.register_forward_hook(lambda m, args, kwargs, out: seen.append(
        (args[1] if len(args) > 1 else kwargs["context"]).clone()), with_kwargs=True)
    try:
        _sample(mp, family, prompt, prompt)
    finally:
        h.remove()
    assert seen and all(torch.equal(s, seen[0]) for s in seen)
    return seen[0][:1]


def _negative_context(env, mp, family, neg):
    if family == "anima":
        ctx = _context_of(mp, family, neg)
        assert ctx.shape[1] == 512             # the LLM adapter's output, padded to 512 tokens
        return ctx
    return neg[0][0]


# ----------------------------------------------------------------------------- equality with the reference

@pytest.mark.parametrize("family", FAMILIES)
def test_steered_output_equals_independent_reference(env, family):
    mp = _model(env, family)
    pos, neg = _conds(env, family)
    base = _sample(mp, family, pos, neg, steps=2)
    got = _sample(env.apply(mp, alpha=0.8), family, pos, neg, steps=2)
    with _reference(mp, _negative_context(env, mp, family, neg), 0.8):
        want = _sample(mp, family, pos, neg, steps=2)
    support.check_close(got, want, base)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method, family):
    """NAG and VSF on every block's text cross-attention (VSF's softmax over the prompt's keys and the negative's
    context's) equal the methods written out in the test; switched off, the output is the unpatched model's, bit
    for bit."""
    obj, off = support.method_objects(env.mod("nasa_core"), method)
    apply_nasa = env.mod("adapters").apply_nasa
    mp = _model(env, family)
    pos, neg = _conds(env, family)
    base = _sample(mp, family, pos, neg, steps=2)
    got = _sample(apply_nasa(mp, alpha=obj.strength, method=obj), family, pos, neg, steps=2)
    with _reference(mp, _negative_context(env, mp, family, neg), obj.strength, method=method):
        want = _sample(mp, family, pos, neg, steps=2)
    support.check_close(got, want, base)
    assert torch.equal(_sample(apply_nasa(mp, alpha=off.strength, method=off), family, pos, neg, steps=2), base)


@pytest.mark.parametrize("family", ["cosmos_predict2_t2i", "anima"])
def test_cfg_above_one_cond_rows_equal_the_reference(env, family):
    """cfg 4, cond and uncond in one batched pass: the first step's cond prediction equals the reference's (which
    steers the cond rows only); the uncond prediction is untouched."""
    mp = _model(env, family)
    case = cases.CASES[family]
    pos, neg = _conds(env, family, neg_len=case.pos_len)      # one length: one batched pass
    base_cap, nasa_cap, ref_cap = [], [], []
    _sample(mp, family, pos, neg, cfg=4.0, steps=2, capture=base_cap)
    _sample(env.apply(mp, alpha=0.8), family, pos, neg, cfg=4.0, steps=2, capture=nasa_cap)
    with _reference(mp, _negative_context(env, mp, family, neg), 0.8):
        _sample(mp, family, pos, neg, cfg=4.0, steps=2, capture=ref_cap)
    support.check_close(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])
    assert torch.equal(nasa_cap[0][1], base_cap[0][1])


def test_anima_in_inference_mode_equals_the_reference(env):
    """Under inference mode (as ComfyUI samples) model_base.Anima.extra_conds runs the LLM adapter on the positive;
    NASA runs it on the negative inside the forward, with the negative's own T5 ids: the same result."""
    mp = _model(env, "anima")
    pos, neg = _conds(env, "anima")
    with torch.inference_mode():
        base = _sample(mp, "anima", pos, neg, steps=2)
        got = _sample(env.apply(mp, alpha=0.8), "anima", pos, neg, steps=2)
        neg_context = _context_of(mp, "anima", neg)
        with _reference(mp, neg_context, 0.8):
            want = _sample(mp, "anima", pos, neg, steps=2)
    assert torch.equal(neg_context, _context_of(mp, "anima", neg))   # the two ComfyUI paths adapt the prompt alike
    support.check_close(got, want, base)


def test_lora_weight_patches_reach_the_negative(env):
    """Weight patches (LoRA) on k_proj / v_proj reach the negative's projections."""
    family = "cosmos_predict2_t2i"
    mp = _model(env, family)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, family)
    lora = mp.clone()
    patched, original = {}, {}
    g = torch.Generator().manual_seed(5)
    for name in [f"blocks.{i}.cross_attn.{p}.weight" for i in range(len(dm.blocks)) for p in ("k_proj", "v_proj")]:
        w = dm.get_parameter(name).detach().clone()
        delta = torch.randn(w.shape, generator=g) * w.std() * 0.3
        lora.add_patches({"diffusion_model." + name: (delta,)})
        patched[name], original[name] = w + delta, w
    steered = env.apply(lora, alpha=0.8)
    base = _sample(lora, family, pos, neg)
    got = _sample(steered, family, pos, neg)
    with _reference(lora, neg[0][0], 0.8, weights=patched):
        want = _sample(lora, family, pos, neg)
    support.check_close(got, want, base)
    with _reference(lora, neg[0][0], 0.8, weights=original):
        wrong = _sample(lora, family, pos, neg)
    assert (got - wrong).abs().max() > 100 * (got - want).abs().max()     # the check can fail


# ----------------------------------------------------------------------------- how often, and with what

@pytest.mark.parametrize("family", FAMILIES)
def test_negative_projected_once_per_run(env, family):
    mp = _model(env, family)
    dm = mp.model.diffusion_model
    case = cases.CASES[family]
    pos, neg = _conds(env, family)
    k = support.Lengths([b.cross_attn.k_proj for b in dm.blocks])
    adapter = support.Lengths([dm.llm_adapter]) if family == "anima" else None
    fwd = support.Forwards(mp)
    try:
        _sample(env.apply(mp, alpha=0.5), family, pos, neg, steps=2)
    finally:
        for c in (k, adapter, fwd):
            if c is not None:
                c.close()
    assert fwd.n == 2
    if family == "anima":       # both contexts are 512 tokens after the adapter; the adapter tells the prompts apart
        assert all(lengths == [512] * 3 for lengths in k.calls.values()), k.calls
        # the positive's Qwen3 states at each forward (no inference mode: Anima.forward adapts them), the negative once
        assert support.once_per_run(adapter.calls[0], case.pos_len, case.neg_len, 2), adapter.calls
    else:
        assert all(support.once_per_run(lengths, case.pos_len, case.neg_len, 2) for lengths in k.calls.values())


def test_anima_negative_adapted_with_its_own_t5_ids(env):
    """The negative's T5 ids and weights come from the negative's conditioning: other ids, another steering; the same
    Qwen3 states without ids are taken as the context as is (as the model takes such a prompt)."""
    mp = _model(env, "anima")
    pos, neg = _conds(env, "anima")
    m = env.apply(mp, alpha=0.8)
    got = _sample(m, "anima", pos, neg)
    other = [[neg[0][0], {**neg[0][1], "t5xxl_ids": torch.flip(neg[0][1]["t5xxl_ids"], [0])}]]
    assert not torch.equal(_sample(m, "anima", pos, other), got)
    bare = [[neg[0][0], {}]]
    base = _sample(mp, "anima", pos, neg)
    with _reference(mp, neg[0][0], 0.8):
        want = _sample(mp, "anima", pos, bare)
    support.check_close(_sample(m, "anima", pos, bare), want, base)


# ----------------------------------------------------------------------------- I2V conditioning frames

def test_i2v_conditioning_frames_not_steered(env):
    """CosmosPredict2ImageToVideoLatent marks the start image's latent frame with denoise mask 0 (timestep 0: clean
    conditioning). Its tokens keep Z+ in every steered layer: block 0's cross-attention output on them is
    bit-identical with NASA, the generated frames' is not; the whole sample equals the reference that fixes them."""
    family = "cosmos_predict2_i2v"
    mp = _model(env, family)
    pos, neg = _conds(env, family)
    latent = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(1, 1, 3, 8, 8)
    mask[:, :, 0] = 0.0
    per_frame = 4 * 4
    outs = []
    h = mp.model.diffusion_model.blocks[0].cross_attn.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        base = support.sample(mp, latent, pos, neg, noise_mask=mask)
        got = support.sample(env.apply(mp, alpha=1.0), latent, pos, neg, noise_mask=mask)
    finally:
        h.remove()
    plain, nasa = outs
    assert plain.shape[1] == 3 * per_frame
    assert torch.equal(nasa[:, :per_frame], plain[:, :per_frame])
    assert ((nasa[:, per_frame:] - plain[:, per_frame:]).abs().amax(-1) > 0).all()
    with _reference(mp, neg[0][0], 1.0, fixed_tokens=slice(0, per_frame)):
        want = support.sample(mp, latent, pos, neg, noise_mask=mask)
    support.check_close(got, want, base)


@pytest.mark.parametrize("family", ["cosmos_predict2_t2i", "anima"])
def test_masked_negative_steers_its_region_only(env, family):
    """A NASA Negative with a mask on the left half of the image: block 0's cross-attention output on the right
    half's tokens is bit-identical with NASA, the left half's is not (8x8 latent, 2x2 patches: 4x4 tokens)."""
    import nodes
    mp = _model(env, family)
    pos, neg = _conds(env, family)
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    negatives = nodes.NODE_CLASS_MAPPINGS["NASANegative"].execute(negative=neg, alpha=1.0, mask=mask,
                                                                   negatives=None).result[0]
    outs = []
    h = mp.model.diffusion_model.blocks[0].cross_attn.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        _sample(mp, family, pos, neg)
        _sample(support.apply_nasa_advanced(mp, negatives=negatives), family, pos, neg)
    finally:
        h.remove()
    plain, nasa = (o.view(o.shape[0], 4, 4, -1) for o in outs)
    assert torch.equal(nasa[:, :, 2:], plain[:, :, 2:])
    assert ((nasa[:, :, :2] - plain[:, :, :2]).abs().amax(-1) > 0).all()


def test_block_selection_leaves_other_blocks_to_comfyui(env):
    """blocks "blocks:0": block 1's cross-attention runs ComfyUI's own forward (bit-identical inputs give bit-identical
    outputs there), block 0 is steered."""
    family = "cosmos_predict2_t2i"
    mp = _model(env, family)
    pos, neg = _conds(env, family)
    dm = mp.model.diffusion_model
    seen = {0: [], 1: []}
    hooks = [dm.blocks[i].cross_attn.register_forward_hook(
        lambda m, args, kwargs, o, i=i: seen[i].append((args[0].clone(), o.clone())), with_kwargs=True) for i in (0, 1)]
    try:
        _sample(mp, family, pos, neg)
        _sample(support.apply_nasa_advanced(mp, blocks="blocks:0"), family, pos, neg)
    finally:
        for h in hooks:
            h.remove()
    assert not torch.equal(seen[0][0][1], seen[0][1][1])
    x_plain, out_plain = seen[1][0]
    x_nasa, out_nasa = seen[1][1]
    assert not torch.equal(x_plain, x_nasa)
    attn = dm.blocks[1].cross_attn
    rope = None
    with torch.no_grad():
        assert torch.equal(out_nasa, type(attn).forward(attn, x_nasa, pos[0][0], rope_emb=rope))


# ----------------------------------------------------------------------------- refusals

def test_another_nodes_cross_attention_patch_is_refused(env):
    mp = _model(env, "cosmos_predict2_t2i").clone()
    attn = mp.model.diffusion_model.blocks[1].cross_attn
    mp.add_object_patch("diffusion_model.blocks.1.cross_attn.forward", lambda *a, **k: attn.forward(*a, **k))
    with pytest.raises(ValueError, match="another node already replaced the cross-attention of Cosmos Predict2"):
        env.apply(mp)


def test_blocks_of_another_class_are_refused(env):
    """A MiniTrainDIT whose block is a subclass (another forward) is not silently steered."""
    from comfy.ldm.cosmos.predict2 import Block
    mp = env.rm.build_dit_model("cosmos_predict2_t2i")
    block = mp.model.diffusion_model.blocks[0]
    block.__class__ = type("OtherBlock", (Block,), {})
    with pytest.raises(ValueError, match="model family 'CosmosT2IPredict2' is not supported"):
        env.apply(mp)

