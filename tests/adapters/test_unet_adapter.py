"""NASA-I on ComfyUI's own UNet classes (SD1.5, SD2.1-v, SDXL) with random weights.

Exact properties, checked against code written here, independent of the pack:
* every cross-attention layer projects the negative exactly once per sampling run (hooks on to_k count it;
  steps 2+ reuse it, exact by tests/adapters/test_reuse.py),
* the steered output equals a reference NASA written in this file (float64 softmax), at cfg 1 and on the cond
  rows at cfg > 1, in bf16, through each of ComfyUI's attention kernels and with the stability guard,
* a pre-installed attn2 replace keeps firing, LoRA-style weight patches reach the negative,
* the input model of the node is never modified; where the negative comes from (sampler, wired, carried,
  combined, timestep-ranged) and the errors on bad input.

The generic checks (alpha 0, cfg > 1 uncond rows, batches, widths, a second node, the canary) run on SD1.5,
SD2.1-v and SDXL in test_contract.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

LONG = ("a very long negative prompt " * 20).strip()   # 100 words > 75 tokens: encodes to 154 tokens


@pytest.fixture(scope="module")
def env(comfyui):
    import comfy.model_management  # noqa: F401
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    cache = {}

    def checkpoint(family, dtype=torch.float32, weight_scale=None):
        key = (family, dtype, weight_scale)
        if key not in cache:
            mp = cases.model(rm, family, dtype, **({} if weight_scale is None else {"weight_scale": weight_scale}))
            clip = rm.build_clip(family, "tiny", seed=0)
            cache[key] = (mp, clip)
        return cache[key]

    def encode(clip, text):
        return nodes.CLIPTextEncode().encode(clip, text)[0]

    node_carry = nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"]
    apply = support.apply_nasa

    def carry(cond, neg, alpha=-1.0):
        return node_carry.execute(conditioning=cond, negative=neg, alpha=alpha).result[0]

    return dict(rm=rm, checkpoint=checkpoint, encode=encode, apply=apply, carry=carry, sample=_sample)


def _sample(model, pos, neg, cfg=1.0, steps=1, batch=1, size=8, seed=1, capture=None):
    """One KSampler run (euler, sgm_uniform) on a fixed noise; returns the latent."""
    return support.sample(model, torch.zeros(batch, 4, size, size), pos, neg, cfg, steps, capture, "sgm_uniform", seed)


# ----------------------------------------------------------------------------- independent helpers

def _cross_attention_modules(diffusion_model):
    """(block_name, block_id, block_index) -> attn2, found by walking ComfyUI's UNet here in the test."""
    from comfy.ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
    out = {}
    groups = [("input", list(diffusion_model.input_blocks)), ("middle", [diffusion_model.middle_block]),
              ("output", list(diffusion_model.output_blocks))]
    for name, blocks in groups:
        for bid, block in enumerate(blocks):
            for sub in block:
                if isinstance(sub, SpatialTransformer):
                    for idx, tb in enumerate(sub.transformer_blocks):
                        assert isinstance(tb, BasicTransformerBlock)
                        out[(name, bid, idx)] = tb.attn2
    return out


def _explicit_attention(q, k, v, heads):
    b, lq, c = q.shape
    d = c // heads
    k = k.expand(b, -1, -1)
    v = v.expand(b, -1, -1)
    qh = q.double().reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.double().reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, lq, c)


def _reference_model(mp, negative_tensor, alpha, weights=None, prior=None, guard=None, method=None):
    """A clone of ``mp`` running NASA as written in the paper, implemented here with ComfyUI's replace hook.

    ``negative_tensor`` is one text-encoder output, or a list of (tensor, weight) averaged with those weights.

    ``weights`` optionally maps layer key -> (W_k, W_v) to use for the negative's projection.
    ``prior(q, k, v, extra)`` optionally produces Z+ (to model a chained replace).
    ``guard`` = (mode, tau): the stability guard on each steered token (norms over all channels).
    ``method``: ("nag", tau, blend) or ("vsf", bias), the other methods written out (support.nag_written_out,
    support.vsf_written_out) at strength ``alpha``; one negative."""
    m = mp.clone()
    mods = _cross_attention_modules(mp.model.diffusion_model)

    def make(key):
        attn = mods[key]

        def ref(q, k, v, extra):
            heads = extra["n_heads"]
            z = prior(q, k, v, extra).double() if prior else _explicit_attention(q, k, v, heads)
            wk, wv = weights[key] if weights else (attn.to_k.weight, attn.to_v.weight)
            negs = negative_tensor if isinstance(negative_tensor, list) else [(negative_tensor, 1.0)]
            chunks = extra["cond_or_uncond"]
            per = q.shape[0] // len(chunks)
            pos = z.clone()
            for neg, share in negs:
                neg = neg.to(q.dtype)
                kn = neg.double() @ wk.double().T
                vn = neg.double() @ wv.double().T
                for i, kind in enumerate(chunks):
                    if kind == 0:
                        rows = slice(i * per, (i + 1) * per)
                        zn = _explicit_attention(q[rows], kn, vn, heads)
                        if method is None:
                            z[rows] = z[rows] - alpha * share * zn
                        elif method[0] == "nag":
                            z[rows] = support.nag_written_out(z[rows], zn, alpha * share, *method[1:])
                        else:
                            z[rows] = support.vsf_written_out(q[rows], k[rows], v[rows], kn, vn, heads,
                                                              alpha * share, method[1])
            if guard is not None:
                mode, tau = guard
                pn, zn = pos.norm(dim=-1, keepdim=True), z.norm(dim=-1, keepdim=True)
                limit = pn if mode == "rescale" else torch.minimum(zn, tau * pn)
                steered = torch.tensor([kind == 0 for kind in chunks]).repeat_interleave(per)[:, None, None]
                z = torch.where(steered, z * limit / zn, z)
            return z.to(q.dtype)
        return ref

    for key in mods:
        m.set_model_attn2_replace(make(key), *key)
    return m


class _ToKCounter:
    """Counts calls of every cross-attention layer's to_k per context length (independent of NASA)."""

    def __init__(self, mp):
        self.calls = {}
        self.handles = []
        for key, attn in _cross_attention_modules(mp.model.diffusion_model).items():
            self.handles.append(attn.to_k.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, inputs, output):
            self.calls.setdefault(key, []).append(inputs[0].shape[1])
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _rel_err(got, want, base):
    effect = (want - base).abs().max().item()
    err = (got - want).abs().max().item()
    return err, effect


# ----------------------------------------------------------------------------- layer coverage

@pytest.mark.parametrize("family,expected", [("sd15", 16), ("sdxl", 70)])
def test_every_cross_attention_layer_steered_exactly_once_per_forward(env, family, expected):
    mp, clip = env["checkpoint"](family)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, LONG)
    assert pos[0][0].shape[1] == 77 and neg[0][0].shape[1] == 154
    m = env["apply"](mp, alpha=0.5)
    counter, fwd = _ToKCounter(mp), support.Forwards(mp)
    try:
        env["sample"](m, pos, neg, cfg=1.0, steps=2)
    finally:
        counter.close()
        fwd.close()
    assert fwd.n == 2                                   # cfg 1: one model pass per step
    assert len(counter.calls) == expected
    for key, lengths in counter.calls.items():
        # per forward the positive context once; the negative (154 tokens) once per run: step 2 reuses it
        assert support.once_per_run(lengths, 77, 154, 2), (key, lengths)


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("neg_text", ["a dog", LONG])
def test_steered_output_equals_independent_reference(env, neg_text):
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, neg_text)
    base = env["sample"](mp, pos, neg)
    got = env["sample"](env["apply"](mp, alpha=0.8), pos, neg)
    want = env["sample"](_reference_model(mp, neg[0][0], 0.8), pos, neg)
    err, effect = _rel_err(got, want, base)
    assert effect > 1e-2 * base.abs().max().item(), "NASA's effect is too small to test anything"
    assert err <= 1e-3 * effect, (err, effect)


@pytest.mark.parametrize("guard", [("rescale", 1.0), ("clip", 0.3)])
def test_guard_equals_reference_and_bites(env, comfyui, guard):
    """The stability guard (nasa_core.Guard) on every cross-attention layer equals the guard written out here
    (cfg 4: uncond rows unguarded); off, and a clip no token reaches, are plain NASA bit for bit."""
    core, apply_nasa = comfyui.mod("nasa_core"), comfyui.mod("adapters").apply_nasa
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    plain = env["sample"](apply_nasa(mp, alpha=0.8), pos, neg, cfg=4.0)
    got = env["sample"](apply_nasa(mp, alpha=0.8, guard=core.Guard(*guard)), pos, neg, cfg=4.0)
    want = env["sample"](_reference_model(mp, neg[0][0], 0.8, guard=guard), pos, neg, cfg=4.0)
    err, effect = _rel_err(got, want, plain)
    assert effect > 1e-2 * plain.abs().max().item(), "the guard never bit: test it harder"
    assert err <= 1e-3 * effect, (err, effect)
    for off in (core.Guard("off"), core.Guard("clip", 1e6)):
        assert torch.equal(env["sample"](apply_nasa(mp, alpha=0.8, guard=off), pos, neg, cfg=4.0), plain)


@pytest.mark.parametrize("method", [("nag", 2.0, 0.5), ("nag", 100.0, 1.0), ("vsf", 0.1), ("vsf", -2.0)],
                         ids=["nag-capped", "nag-uncapped", "vsf", "vsf-bias-2"])
def test_nag_and_vsf_equal_their_references(env, comfyui, method):
    """NAG and VSF on every cross-attention layer (cfg 4: the uncond rows untouched) equal the methods written out
    in the test; at zero strength (NAG scale 1, VSF scale 0) the output is the unpatched model's, bit for bit."""
    core, apply_nasa = comfyui.mod("nasa_core"), comfyui.mod("adapters").apply_nasa
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    plain = env["sample"](mp, pos, neg, cfg=4.0)
    obj = core.Nag(scale=3.0, tau=method[1], alpha=method[2]) if method[0] == "nag" else core.Vsf(2.0, method[1])
    got = env["sample"](apply_nasa(mp, alpha=obj.strength, method=obj), pos, neg, cfg=4.0)
    want = env["sample"](_reference_model(mp, neg[0][0], obj.strength, method=method), pos, neg, cfg=4.0)
    support.check_close(got, want, plain)
    off = core.Nag(scale=1.0) if method[0] == "nag" else core.Vsf(scale=0.0)
    assert torch.equal(env["sample"](apply_nasa(mp, alpha=off.strength, method=off), pos, neg, cfg=4.0), plain)


def test_cfg_above_one_cond_rows_equal_the_reference(env):
    """cfg 4, cond and uncond in one batched pass: the first step's cond prediction equals the reference's (which
    steers the cond rows only)."""
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    base_cap, nasa_cap, ref_cap = [], [], []
    env["sample"](mp, pos, neg, cfg=4.0, steps=2, capture=base_cap)
    env["sample"](env["apply"](mp, alpha=0.8), pos, neg, cfg=4.0, steps=2, capture=nasa_cap)
    env["sample"](_reference_model(mp, neg[0][0], 0.8), pos, neg, cfg=4.0, steps=2, capture=ref_cap)
    err, effect = _rel_err(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])
    assert effect > 0 and err <= 1e-3 * effect


def test_bf16_model(env):
    stored, clip = env["checkpoint"]("sd15", dtype=torch.bfloat16)   # default init: sharper attention amplifies bf16 rounding chaotically
    mp = stored.clone()
    mp.set_model_compute_dtype(torch.bfloat16)     # on CPU ComfyUI would otherwise compute bf16 weights in fp32
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    base = env["sample"](mp, pos, neg)
    assert torch.equal(env["sample"](env["apply"](mp, alpha=0.0), pos, neg), base)
    seen = []
    attn = next(iter(_cross_attention_modules(mp.model.diffusion_model).values()))
    hook = attn.to_k.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, inp[0].shape[1])))
    try:
        got = env["sample"](env["apply"](mp, alpha=0.8), pos, neg)
    finally:
        hook.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype, _ in seen)   # the negative is cast to the query dtype
    want = env["sample"](_reference_model(mp, neg[0][0], 0.8), pos, neg)
    assert torch.isfinite(got).all()
    err, effect = _rel_err(got, want, base)
    assert effect > 1e-2 * base.abs().max().item()
    assert err <= 0.1 * effect, (err, effect)       # bf16 between layers: looser, still far below the effect


@pytest.mark.parametrize("backend", ["pytorch", "sub_quad", "split"])
def test_each_comfy_attention_backend(env, backend):
    """ComfyUI's CPU default is sub-quadratic attention; GPUs use pytorch/xformers/sage. Both Z+ and Z- go
    through whichever kernel is selected (here through the public optimized_attention_override)."""
    import comfy.ldm.modules.attention as attention
    kernel = attention.get_attention_function(backend)
    used = []

    def override(func, *args, **kwargs):
        used.append(args[1].shape[1])        # key length: 77 for prompt and negative, image tokens for self-attention
        return kernel(*args, **kwargs)
    stock, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    mp = stock.clone()
    mp.model_options["transformer_options"]["optimized_attention_override"] = override
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    base = env["sample"](mp, pos, neg)
    assert torch.equal(env["sample"](env["apply"](mp, alpha=0.0), pos, neg), base)
    used.clear()
    got = env["sample"](env["apply"](mp, alpha=0.8), pos, neg)
    assert used.count(77) >= 2 * 16          # prompt cross-attention and the negative's, on every layer
    want = env["sample"](_reference_model(mp, neg[0][0], 0.8), pos, neg)
    err, effect = _rel_err(got, want, base)
    assert effect > 0 and err <= 1e-3 * effect, (err, effect)


# ----------------------------------------------------------------------------- composition

def test_chains_an_attn2_replace_installed_before(env):
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    fired = {}

    def prior_for(key):
        def prior(q, k, v, extra):              # IPAdapter-like: changes Z+ and must keep firing
            fired[key] = fired.get(key, 0) + 1
            return _explicit_attention(q, k, v * 0.5 + 0.1, extra["n_heads"]).to(q.dtype)
        return prior

    pre = mp.clone()
    keys = list(_cross_attention_modules(mp.model.diffusion_model))
    for i, key in enumerate(keys):
        if i % 2:   # half keyed (block, id, index), half by the (block, id) fallback
            pre.set_model_attn2_replace(prior_for(key), *key)
        else:
            pre.set_model_attn2_replace(prior_for(key[:2]), key[0], key[1])
    before = env["sample"](pre, pos, neg)
    got = env["sample"](env["apply"](pre, alpha=0.8), pos, neg)
    assert len(fired) == len(keys) or len({k[:2] for k in keys}) <= len(fired)
    fired.clear()

    def prior_any(q, k, v, extra):
        return _explicit_attention(q, k, v * 0.5 + 0.1, extra["n_heads"]).to(q.dtype)
    want = env["sample"](_reference_model(mp, neg[0][0], 0.8, prior=prior_any), pos, neg)
    err, effect = _rel_err(got, want, before)
    assert effect > 0 and err <= 1e-3 * effect


def test_weight_patches_reach_the_negative_projection(env):
    """LoRA and other weight patches apply to to_k/to_v at sample time, so the negative sees them."""
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    mods = _cross_attention_modules(mp.model.diffusion_model)
    names = {id(m): n for n, m in mp.model.named_modules()}
    lora = mp.clone()
    weights, originals = {}, {}
    g = torch.Generator().manual_seed(5)   # a moderate delta: large ones make the random net chaotic
    for key, attn in mods.items():
        wk, wv = attn.to_k.weight.detach().clone(), attn.to_v.weight.detach().clone()
        dk = torch.randn(wk.shape, generator=g) * wk.std() * 0.3
        dv = torch.randn(wv.shape, generator=g) * wv.std() * 0.3
        lora.add_patches({names[id(attn)] + ".to_k.weight": (dk,), names[id(attn)] + ".to_v.weight": (dv,)})
        weights[key] = (wk + dk, wv + dv)
        originals[key] = (wk, wv)
    patched = env["apply"](lora, alpha=0.8)          # the node runs before LoRA weights exist anywhere
    base = env["sample"](lora, pos, neg)
    got = env["sample"](patched, pos, neg)
    want = env["sample"](_reference_model(lora, neg[0][0], 0.8, weights=weights), pos, neg)
    err, effect = _rel_err(got, want, base)
    assert effect > 0 and err <= 1e-3 * effect
    # and the check can fail: a reference that ignores the patch is far off
    wrong = env["sample"](_reference_model(lora, neg[0][0], 0.8, weights=originals), pos, neg)
    assert (got - wrong).abs().max() > 100 * err


def test_input_model_untouched_and_graph_branches_isolated(env):
    mp, clip = env["checkpoint"]("sd15")
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    opts_before = repr(mp.model_options)
    wrappers_before = repr(mp.wrappers)
    plain_before = env["sample"](mp, pos, neg)
    steered = env["sample"](env["apply"](mp, alpha=1.0), pos, neg)
    plain_after = env["sample"](mp, pos, neg)
    assert torch.equal(plain_before, plain_after)
    assert not torch.equal(steered, plain_after)
    assert repr(mp.model_options) == opts_before and repr(mp.wrappers) == wrappers_before
    assert "attn2" not in mp.model_options["transformer_options"].get("patches_replace", {})


# ----------------------------------------------------------------------------- where the negative comes from

def test_sampler_negative_equals_wired_negative(env):
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg, other = (env["encode"](clip, t) for t in ("a photo of a cat", "a dog", "a tree"))
    from_sampler = env["sample"](env["apply"](mp, alpha=0.8), pos, neg)
    wired = env["sample"](env["apply"](mp, alpha=0.8, negative=neg, use_sampler_negative=False), pos, other)
    assert torch.equal(from_sampler, wired)
    # wired wins over the sampler's negative when both exist
    wired_both = env["sample"](env["apply"](mp, alpha=0.8, negative=neg, use_sampler_negative=True), pos, other)
    assert torch.equal(wired_both, wired)


def test_combined_negative_is_averaged(env):
    import nodes
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg_a, neg_b = (env["encode"](clip, t) for t in ("a photo of a cat", "a dog", LONG))
    both = nodes.ConditioningCombine().combine(neg_a, neg_b)[0]
    base = env["sample"](mp, pos, both)
    got = env["sample"](env["apply"](mp, alpha=0.8), pos, both)
    want = env["sample"](_reference_model(mp, [(neg_a[0][0], 0.5), (neg_b[0][0], 0.5)], 0.8), pos, both)
    err, effect = _rel_err(got, want, base)
    assert effect > 0 and err <= 1e-3 * effect, (err, effect)


@pytest.mark.parametrize("wired", [False, True])
def test_timestep_range_on_the_negative_is_honoured(env, wired):
    """A negative limited to the first 30% of the schedule steers step 1 of 2 and not step 2."""
    import nodes
    mp, clip = env["checkpoint"]("sd15")
    pos = env["encode"](clip, "a photo of a cat")
    neg = nodes.ConditioningSetTimestepRange().set_range(env["encode"](clip, LONG), 0.0, 0.3)[0]
    m = env["apply"](mp, alpha=0.8, negative=neg) if wired else env["apply"](mp, alpha=0.8)
    counter = _ToKCounter(mp)
    try:
        env["sample"](m, pos, neg if not wired else env["encode"](clip, ""), steps=2)
    finally:
        counter.close()
    for key, lengths in counter.calls.items():
        assert lengths == [77, 154, 77], (key, lengths)   # step 1: prompt + negative; step 2: prompt only


def test_sampler_negative_is_used_at_cfg_1(env):
    """At cfg 1 ComfyUI never runs the negative through the model; NASA still steers away from it."""
    mp, clip = env["checkpoint"]("sd15")
    pos, neg, other = (env["encode"](clip, t) for t in ("a photo of a cat", "a dog", "a tree"))
    m = env["apply"](mp, alpha=1.0)
    assert torch.equal(env["sample"](mp, pos, neg), env["sample"](mp, pos, other))   # CFG ignores it
    assert not torch.equal(env["sample"](m, pos, neg), env["sample"](m, pos, other))  # NASA does not


def test_carried_negative_wins_and_each_prompt_gets_its_own(env):
    import nodes
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    enc = lambda t: env["encode"](clip, t)  # noqa: E731
    pos_a, pos_b = enc("a photo of a cat"), enc("a red car")
    neg_a, neg_b, model_neg = enc("a dog"), enc(LONG), enc(" ".join(["bad"] * 180))
    assert model_neg[0][0].shape[1] == 231
    both = nodes.ConditioningCombine().combine(env["carry"](pos_a, neg_a), env["carry"](pos_b, neg_b))[0]
    m = env["apply"](mp, alpha=0.8, negative=model_neg)
    counter, fwd = _ToKCounter(mp), support.Forwards(mp)
    try:
        env["sample"](m, both, enc(""), cfg=3.0)
    finally:
        counter.close()
        fwd.close()
    assert fwd.n == 1                       # two positive prompts + uncond: still one batched pass
    for key, lengths in counter.calls.items():
        assert 231 not in lengths, key      # the model-level negative lost to both carried ones
        assert lengths.count(154) == 1 and lengths.count(77) == 2, (key, lengths)  # context + neg_a, neg_b
    # a carried negative steers exactly like the same negative given to the node
    single = env["sample"](env["apply"](mp, alpha=0.8, negative=model_neg), env["carry"](pos_a, neg_a), neg_a)
    same = env["sample"](env["apply"](mp, alpha=0.8, negative=neg_a), pos_a, neg_a)
    assert torch.equal(single, same)


def test_carried_alpha_override(env):
    mp, clip = env["checkpoint"]("sd15", weight_scale=3.0)
    pos, neg = env["encode"](clip, "a photo of a cat"), env["encode"](clip, "a dog")
    m = env["apply"](mp, alpha=1.0)
    assert torch.equal(env["sample"](m, env["carry"](pos, neg, alpha=0.0), neg), env["sample"](mp, pos, neg))
    assert torch.equal(env["sample"](m, env["carry"](pos, neg, alpha=0.3), neg),
                       env["sample"](env["apply"](mp, alpha=0.3), pos, neg))


# ----------------------------------------------------------------------------- bad input

def test_carried_negative_from_another_encoder(env):
    _, clip = env["checkpoint"]("sd15")
    _, xl_clip = env["checkpoint"]("sdxl")
    with pytest.raises(ValueError, match="NASA Negative Conditioning: 'negative' is .* different text encoders"):
        env["carry"](env["encode"](clip, "a cat"), env["encode"](xl_clip, "a dog"))


def test_unsupported_family_names_family_and_supported(env):
    """AuraFlow is a model ComfyUI loads but no NASA adapter knows."""
    rm = env["rm"]
    aura = rm.build_diffusion_model("AuraFlow", {"cond_seq_dim": 32, "dim": 64, "n_layers": 2, "n_double_layers": 1,
                                                 "n_heads": 2, "global_conddim": 64, "max_seq": 64})
    with pytest.raises(ValueError) as e:
        env["apply"](aura)
    msg = str(e.value)
    assert "Apply NASA Attention" in msg and "'AuraFlow'" in msg and "SD1.5" in msg and "FLUX.1" in msg


def test_no_negative_and_sampler_negative_off(env):
    mp, _ = env["checkpoint"]("sd15")
    with pytest.raises(ValueError, match="Apply NASA Attention: no negative .* use_sampler_negative is off"):
        env["apply"](mp, negative=None, use_sampler_negative=False)


def test_empty_negative_conditioning(env):
    mp, clip = env["checkpoint"]("sd15")
    with pytest.raises(ValueError, match="Apply NASA Attention: 'negative' is empty"):
        env["apply"](mp, negative=[])
    with pytest.raises(ValueError, match="NASA Negative Conditioning: 'negative' is empty"):
        env["carry"](env["encode"](clip, "a cat"), [])


def test_negative_with_a_batch_of_prompts(env):
    mp, clip = env["checkpoint"]("sd15")
    pos, neg = env["encode"](clip, "a cat"), env["encode"](clip, "a dog")
    two = [[torch.cat([neg[0][0], neg[0][0]]), dict(neg[0][1])]]
    with pytest.raises(ValueError, match="Apply NASA Attention: 'negative' holds a batch of 2 prompts"):
        env["apply"](mp, negative=two)
    with pytest.raises(ValueError, match="NASA Negative Conditioning: 'negative' holds a batch of 2"):
        env["carry"](pos, two)
    with pytest.raises(ValueError, match="Apply NASA Attention: the sampler's negative holds a batch of 2"):
        env["sample"](env["apply"](mp), pos, two, batch=2)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha(env, alpha):
    mp, clip = env["checkpoint"]("sd15")
    with pytest.raises(ValueError, match="Apply NASA Attention: alpha"):
        env["apply"](mp, alpha=alpha)
    with pytest.raises(ValueError, match="NASA Negative Conditioning: alpha"):
        c = env["encode"](clip, "a cat")
        env["carry"](c, c, alpha=alpha if alpha == alpha else float("nan"))


def test_non_finite_conditioning(env):
    mp, clip = env["checkpoint"]("sd15")
    pos, neg = env["encode"](clip, "a cat"), env["encode"](clip, "a dog")
    bad = [[neg[0][0].clone(), dict(neg[0][1])]]
    bad[0][0][0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="Apply NASA Attention: 'negative' contains 1 non-finite"):
        env["apply"](mp, negative=bad)
    with pytest.raises(ValueError, match="NASA Negative Conditioning: 'negative' contains"):
        env["carry"](pos, bad)
    with pytest.raises(ValueError, match="Apply NASA Attention: the sampler's negative contains"):
        env["sample"](env["apply"](mp), pos, bad)
