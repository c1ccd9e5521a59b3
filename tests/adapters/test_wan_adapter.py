"""NASA on ComfyUI's own WanModel (Wan 2.1 T2V / I2V, Wan 2.2 TI2V 5B, Wan 2.2 A14B's two experts), tiny random weights.

Held against code written here, independent of the pack:
* hooks on every block's cross_attn.k count the negative's projection: once per block per sampling run (steps
  2+ reuse it); the negative goes through text_embedding once per run, unpadded, exactly as the positive does;
* a reference cross-attention written out in float64 (RMS norms, projections, softmax, the image term of
  I2V) replaces each block's cross_attn through a torch forward hook: NASA's output equals it at cfg 1, on the
  cond rows at cfg > 1, in bf16, with the stability guard, through each attention kernel and under block
  replaces installed before it; cfg 1 runs one pass per step;
* the I2V image term (k_img / v_img) never sees the negative; conditioning tokens (reference_latent,
  time_dim_concat frames) are not steered;
* LoRA-style weight patches (CausVid, self-forcing) reach the negative's projections; Wan 2.2 A14B's two
  experts each steer with their own node;
* the variants on WanModel (VACE, Fun Control, Fun Camera, FlowRVS, S2V, Animate, Animate 2, HuMo, SCAIL,
  WanDancer, the causal model) equal the reference on the video's tokens with their conditioning given, and what
  they add is never steered: VACE's blocks (their first hint bit-identical), audio / music / face attention (never
  the negative), reference, motion and pose tokens, Animate 2's pose branch and reference slot (bit-identical);
  the causal model under ComfyUI's AR video sampler equals the reference applied to every chunk and step.

The generic checks (alpha 0, finite, cfg > 1 uncond rows, batches, widths, a second node, the canary) run on
Wan 2.1 T2V / I2V, Wan 2.2 TI2V and every variant's case in test_contract.py.

ComfyUI's Wan uses RMS norms on q and k; the random-weight builder leaves RMSNorm weights at 0 (its init
knows LayerNorm/GroupNorm only), which would make every attention uniform and blind to the formula. The
models here get random RMSNorm weights in [0.5, 2) so that the softmax is not trivial (family_cases.py).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN, CLIP_TOKENS = 16, 20, 5     # distinct lengths, so hooks can tell the prompts apart


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")

    def model(family="wan21_t2v", dtype=torch.float32, seed=0, **overrides):
        return cases.model(rm, family, dtype, seed, **overrides)

    apply = support.apply_nasa

    return SimpleNamespace(rm=rm, model=model, apply=apply, config=lambda f: rm.DIT_FAMILIES[f][1])


def _conds(env, family, seed=0, pos_len=POS_LEN, neg_len=NEG_LEN):
    """Random text-encoder outputs of the family's text width; I2V also gets CLIP-vision tokens."""
    return cases.conds(env.rm, family, pos_len, neg_len, seed=seed)


def _sample(mp, pos, neg, cfg=1.0, steps=1, batch=1, frames=2, size=8, capture=None, noise=None, latent=None,
            start_step=None, last_step=None, total_steps=None):
    channels = mp.model.latent_format.latent_channels
    latent = torch.zeros(batch, channels, frames, size, size) if latent is None else latent
    return support.sample(mp, latent, pos, neg, cfg, total_steps or steps, capture, noise=noise,
                          start_step=start_step, last_step=last_step)


# ----------------------------------------------------------------------------- independent reference

def _lin(x, layer, weight=None):
    w = layer.weight if weight is None else weight
    return F.linear(x.double(), w.double(), None if layer.bias is None else layer.bias.double())


def _rms(x, norm):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def _attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, float64; q (B, Lq, H*D), k/v (B or 1, Lk, H*D)."""
    b, lq, c = q.shape
    d = c // heads
    qh = q.reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, lq, c)


def _embed(dm, text, weights=None):
    """Wan's text_embedding written out: Linear, tanh-GELU, Linear."""
    w = weights or {}
    h = F.gelu(_lin(text, dm.text_embedding[0], w.get("text_embedding.0.weight")), approximate="tanh")
    return _lin(h, dm.text_embedding[2], w.get("text_embedding.2.weight"))


def _reference(mp, negative, alpha, weights=None, guard=None, tokens=slice(None), queries=None, method=None):
    """Every block's cross_attn of ``mp`` computes NASA written out in float64 while the returned
    hooks are open (a ``with`` block); ``tokens``: the query tokens steered (the video's; all by default);
    ``queries``: only calls with that many queries are steered (Animate 2's pose branch calls the same modules).

    ``weights`` maps parameter names (of the diffusion model) to the tensors the negative's path uses
    instead of the live ones (to model a patch the reference must or must not see). ``guard`` = (mode, tau):
    the stability guard on each steered token of the text attention (norms over all channels). ``method``:
    ("nag", tau, blend) or ("vsf", bias), written out in support at strength ``alpha``."""
    dm = mp.model.diffusion_model
    w = weights or {}
    hooks = []
    for i, block in enumerate(dm.blocks):
        attn = block.cross_attn
        kname, vname = f"blocks.{i}.cross_attn.k.weight", f"blocks.{i}.cross_attn.v.weight"

        def hook(module, args, kwargs, output, attn=attn, kname=kname, vname=vname):
            x, context = args[0], args[1]
            if queries is not None and x.shape[1] != queries:
                return None                                 # ComfyUI's own output
            heads = attn.num_heads
            image = hasattr(attn, "k_img")                  # WanI2VCrossAttention: [image tokens; text tokens]
            n_img = kwargs.get("context_img_len") if image else None
            text = context if n_img is None else context[:, n_img:]
            q = _rms(_lin(x, attn.q), attn.norm_q)
            k_pos, v_pos = _rms(_lin(text, attn.k), attn.norm_k), _lin(text, attn.v)
            z = _attention(q, k_pos, v_pos, heads)
            emb = _embed(dm, negative, w)
            k_neg = _rms(_lin(emb, attn.k, w.get(kname)), attn.norm_k)
            v_neg = _lin(emb, attn.v, w.get(vname))
            chunks = kwargs["transformer_options"].get("cond_or_uncond", [0])   # none: the AR sampler (cfg 1)
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind == 0:
                    rows = slice(c * per, (c + 1) * per)
                    pos = z[rows, tokens].clone()
                    z_neg = _attention(q[rows, tokens], k_neg, v_neg, heads)
                    if method is None:
                        z[rows, tokens] = z[rows, tokens] - alpha * z_neg
                    elif method[0] == "nag":
                        z[rows, tokens] = support.nag_written_out(pos, z_neg, alpha, *method[1:]).to(z.dtype)
                    else:
                        z[rows, tokens] = support.vsf_written_out(q[rows, tokens], k_pos[rows], v_pos[rows], k_neg,
                                                                  v_neg, heads, alpha, method[1]).to(z.dtype)
                    if guard is not None:
                        pn, zn = pos.norm(dim=-1, keepdim=True), z[rows, tokens].norm(dim=-1, keepdim=True)
                        limit = pn if guard[0] == "rescale" else torch.minimum(zn, guard[1] * pn)
                        z[rows, tokens] = z[rows, tokens] * limit / zn
            if image:       # the image term, unsteered (without CLIP-vision input ComfyUI uses the whole context)
                img = context if n_img is None else context[:, :n_img]
                z = z + _attention(q, _rms(_lin(img, attn.k_img), attn.norm_k_img), _lin(img, attn.v_img), heads)
            return _lin(z, attn.o).to(x.dtype)
        hooks.append((attn, hook))
    return support.Replacing(hooks)


def _reference_sample(mp, negative, alpha, *args, weights=None, guard=None, **kwargs):
    with _reference(mp, negative, alpha, weights, guard):
        return _sample(mp, *args, **kwargs)


def _case_reference_sample(mp, name, negative, alpha, *args, tokens=slice(None), queries=None, **kwargs):
    """A family case's sampling run (its latent and scheduler) under the reference."""
    with _reference(mp, negative, alpha, tokens=tokens, queries=queries):
        return cases.sample(mp, name, *args, **kwargs)


FAMILIES = ["wan21_t2v", "wan21_i2v", "wan22_t2v"]


# ----------------------------------------------------------------------------- coverage

@pytest.mark.parametrize("family", FAMILIES)
def test_every_text_cross_attention_steered_exactly_once_per_forward(env, family):
    mp = env.model(family)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, family)
    m = env.apply(mp, alpha=0.5)
    text_k = support.Lengths([b.cross_attn.k for b in dm.blocks])
    self_k = support.Lengths([b.self_attn.k for b in dm.blocks])
    embed = support.Lengths([dm.text_embedding])
    image_k = support.Lengths([b.cross_attn.k_img for b in dm.blocks]) if family == "wan21_i2v" else None
    fwd = support.Forwards(mp)
    try:
        _sample(m, pos, neg, cfg=1.0, steps=2)
    finally:
        for c in (text_k, self_k, embed, fwd, image_k):
            if c is not None:
                c.close()
    assert fwd.n == 2                                               # cfg 1: one model pass per step
    for i, lengths in text_k.calls.items():                        # per forward the prompt once; the negative once
        assert support.once_per_run(lengths, POS_LEN, NEG_LEN, 2), (i, lengths)     # the negative: step 2 reuses it
    assert support.once_per_run(embed.calls[0], POS_LEN, NEG_LEN, 2)   # embedded once per run, nothing padded
    assert all(NEG_LEN not in lengths for lengths in self_k.calls.values())
    if image_k is not None:                                         # I2V: the image term never sees the negative
        assert all(lengths == [CLIP_TOKENS] * 2 for lengths in image_k.calls.values()), image_k.calls


def test_negative_is_embedded_exactly_as_the_model_embeds_a_prompt(env):
    """NASA's text_embedding output for the negative equals the model's own embedding of that prompt."""
    mp = env.model()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, "wan21_t2v")
    seen = []
    h = dm.text_embedding.register_forward_hook(lambda mod, i, o: seen.append(o.clone()))
    try:
        _sample(env.apply(mp), pos, neg)
        nasa = [t for t in seen if t.shape[1] == NEG_LEN]
        seen.clear()
        _sample(mp, neg, pos)                                       # the negative as an ordinary prompt
        plain = [t for t in seen if t.shape[1] == NEG_LEN]
    finally:
        h.remove()
    assert len(nasa) == len(plain) == 1 and torch.equal(nasa[0], plain[0])


@pytest.mark.parametrize("family,overrides", [(f, {}) for f in FAMILIES] + [("wan21_t2v", {"in_dim": 36})],
                         ids=FAMILIES + ["wan22_i2v_a14b_expert"])
def test_steered_output_equals_independent_reference(env, family, overrides):
    """Wan 2.2 A14B I2V experts load as WAN21_T2V with 36 input channels (image by concatenation)."""
    mp = env.model(family, **overrides)
    pos, neg = _conds(env, family)
    base = _sample(mp, pos, neg, steps=2)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, steps=2)
    want = _reference_sample(mp, neg[0][0], 0.8, pos, neg, steps=2)
    support.check_close(got, want, base)


@pytest.mark.parametrize("guard", [("rescale", 1.0), ("clip", 0.3)])
def test_guard_equals_reference(env, comfyui, guard):
    """The stability guard on Wan's text cross-attention (before the unsteered image term), at cfg 4."""
    apply_nasa, core = comfyui.mod("adapters").apply_nasa, comfyui.mod("nasa_core")
    mp = env.model("wan21_i2v")
    pos, neg = _conds(env, "wan21_i2v")
    plain = _sample(apply_nasa(mp, alpha=0.8), pos, neg, cfg=4.0)
    got = _sample(apply_nasa(mp, alpha=0.8, guard=core.Guard(*guard)), pos, neg, cfg=4.0)
    want = _reference_sample(mp, neg[0][0], 0.8, pos, neg, guard=guard, cfg=4.0)
    support.check_close(got, want, plain)
    assert torch.equal(_sample(apply_nasa(mp, alpha=0.8, guard=core.Guard("off")), pos, neg, cfg=4.0), plain)


@pytest.mark.parametrize("method", [("nag", 2.0, 0.5), ("vsf", 0.1)])
def test_nag_and_vsf_equal_their_references(env, comfyui, method):
    """NAG and VSF on Wan's text cross-attention (I2V: before the unsteered image term) at cfg 4 equal the methods
    written out in the test; at zero strength the output is the unpatched model's, bit for bit."""
    apply_nasa, core = comfyui.mod("adapters").apply_nasa, comfyui.mod("nasa_core")
    mp = env.model("wan21_i2v")
    pos, neg = _conds(env, "wan21_i2v")
    plain = _sample(mp, pos, neg, cfg=4.0)
    obj = core.Nag(scale=3.0, tau=method[1], alpha=method[2]) if method[0] == "nag" else core.Vsf(2.0, method[1])
    got = _sample(apply_nasa(mp, alpha=obj.strength, method=obj), pos, neg, cfg=4.0)
    with _reference(mp, neg[0][0], obj.strength, method=method):
        want = _sample(mp, pos, neg, cfg=4.0)
    support.check_close(got, want, plain)
    off = core.Nag(scale=1.0) if method[0] == "nag" else core.Vsf(scale=0.0)
    assert torch.equal(_sample(apply_nasa(mp, alpha=off.strength, method=off), pos, neg, cfg=4.0), plain)


def test_i2v_without_clip_vision_input(env):
    """Wan I2V sampled without CLIP-vision output: ComfyUI's I2V cross-attention then uses the whole context
    for its image term as well; NASA still steers the text term only and matches the reference."""
    mp = env.model("wan21_i2v")
    pos, neg = _conds(env, "wan21_i2v")
    for c in (pos, neg):
        c[0][1] = {}
    base = _sample(mp, pos, neg)
    support.check_close(_sample(env.apply(mp, alpha=0.8), pos, neg), _reference_sample(mp, neg[0][0], 0.8, pos, neg), base)


@pytest.mark.parametrize("family", ["wan21_t2v", "wan21_i2v"])
def test_cfg_above_one_cond_rows_equal_the_reference(env, family):
    """cfg 4, cond and uncond in one batched pass: the first step's cond prediction equals the reference's (which
    steers the cond rows only)."""
    mp = env.model(family)
    pos, neg = _conds(env, family, neg_len=POS_LEN)       # same length: cond and uncond share one batched pass
    base_cap, nasa_cap, ref_cap = [], [], []
    _sample(mp, pos, neg, cfg=4.0, steps=2, capture=base_cap)
    _sample(env.apply(mp, alpha=0.8), pos, neg, cfg=4.0, steps=2, capture=nasa_cap)
    _reference_sample(mp, neg[0][0], 0.8, pos, neg, cfg=4.0, steps=2, capture=ref_cap)
    support.check_close(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])


@pytest.mark.parametrize("family", ["wan21_t2v", "wan21_i2v"])
def test_bf16_model(env, family):
    stored = env.model(family, dtype=torch.bfloat16)
    mp = stored.clone()
    mp.set_model_compute_dtype(torch.bfloat16)     # on CPU ComfyUI would otherwise compute bf16 weights in fp32
    pos, neg = _conds(env, family)
    seen = []
    h = mp.model.diffusion_model.blocks[0].cross_attn.k.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        base = _sample(mp, pos, neg)
        assert torch.equal(_sample(env.apply(mp, alpha=0.0), pos, neg), base)
        got = _sample(env.apply(mp, alpha=0.8), pos, neg)
    finally:
        h.remove()
    assert set(seen) == {torch.bfloat16}                # the model really computed in bf16, negative included
    assert torch.isfinite(got).all()
    want = _reference_sample(mp, neg[0][0], 0.8, pos, neg)
    support.check_close(got, want, base, tol=0.1)             # bf16 between layers: looser, still far below the effect


@pytest.mark.parametrize("backend", ["pytorch", "sub_quad", "split"])
def test_attention_override_installed_before_computes_both_terms(env, backend):
    """An optimized_attention_override set before NASA (an attention-kernel patch node) keeps running every
    attention call, and NASA's negative attention goes through it too."""
    import comfy.ldm.modules.attention as attention
    kernel = attention.get_attention_function(backend)
    keys = []

    def override(func, *args, **kwargs):
        keys.append(args[1].shape[1])
        return kernel(*args, **kwargs)
    mp = env.model().clone()
    mp.model_options["transformer_options"]["optimized_attention_override"] = override
    pos, neg = _conds(env, "wan21_t2v")
    base = _sample(mp, pos, neg)
    keys.clear()
    got = _sample(env.apply(mp, alpha=0.8), pos, neg)
    assert keys.count(NEG_LEN) == len(mp.model.diffusion_model.blocks) and keys.count(POS_LEN) == keys.count(NEG_LEN)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg), base)


def test_block_replaces_installed_before_keep_running(env):
    """A "dit" block replace installed before NASA still runs (block 0: it rescales the block's output) or
    may skip its block (block 1: nothing to steer there, no error); NASA steers what runs, exactly."""
    fired = []

    def rescale(args, extra):
        fired.append(1)
        return {"img": extra["original_block"](args)["img"] * 0.9}

    def skip(args, extra):
        return {"img": args["img"]}
    pre = env.model().clone()
    pre.set_model_patch_replace(rescale, "dit", "double_block", 0)
    pre.set_model_patch_replace(skip, "dit", "double_block", 1)
    pos, neg = _conds(env, "wan21_t2v")
    base = _sample(pre, pos, neg)
    fired.clear()
    text_k = support.Lengths([b.cross_attn.k for b in pre.model.diffusion_model.blocks])
    try:
        got = _sample(env.apply(pre, alpha=0.8), pos, neg)
    finally:
        text_k.close()
    assert fired == [1] and text_k.calls == {0: [POS_LEN, NEG_LEN], 1: []}
    support.check_close(got, _reference_sample(pre, neg[0][0], 0.8, pos, neg), base)


# ----------------------------------------------------------------------------- what is not steered

def test_conditioning_tokens_are_not_steered(env):
    """reference_latent tokens (before the video) and time_dim_concat frames (after it) are conditioning:
    the first block's cross-attention output of those tokens is bit-identical with NASA; the video's is not."""
    mp = env.model(in_dim_ref_conv=16)
    pos, neg = _conds(env, "wan21_t2v")
    g = torch.Generator().manual_seed(3)
    extra = {"reference_latents": [torch.randn(1, 16, 1, 8, 8, generator=g)],
             "time_dim_concat": torch.randn(1, 16, 1, 8, 8, generator=g)}
    pos = [[pos[0][0], {**pos[0][1], **extra}]]
    outs = []
    h = mp.model.diffusion_model.blocks[0].cross_attn.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        _sample(mp, pos, neg, frames=2)
        _sample(env.apply(mp, alpha=1.0), pos, neg, frames=2)
    finally:
        h.remove()
    plain, nasa = outs
    n_ref, n_video = 4 * 4, 2 * 4 * 4                  # 8x8 latents, 2x2 patches; the video has 2 frames
    assert plain.shape[1] == n_ref + n_video + 4 * 4
    assert torch.equal(nasa[:, :n_ref], plain[:, :n_ref])
    assert torch.equal(nasa[:, n_ref + n_video:], plain[:, n_ref + n_video:])
    assert ((nasa[:, n_ref:n_ref + n_video] - plain[:, n_ref:n_ref + n_video]).abs().amax(-1) > 0).all()


# ----------------------------------------------------------------------------- LoRAs, Wan 2.2 experts

def test_lora_weight_patches_reach_the_negative(env):
    """CausVid / self-forcing LoRAs are weight patches: the negative's text_embedding, k and v see them."""
    mp = env.model()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, "wan21_t2v")
    lora = mp.clone()
    names = ["text_embedding.0.weight", "text_embedding.2.weight"]
    names += [f"blocks.{i}.cross_attn.{p}.weight" for i in range(len(dm.blocks)) for p in ("k", "v")]
    patched, original = {}, {}
    g = torch.Generator().manual_seed(5)
    for name in names:
        w = dm.get_parameter(name).detach().clone()
        delta = torch.randn(w.shape, generator=g) * w.std() * 0.3
        lora.add_patches({"diffusion_model." + name: (delta,)})
        patched[name], original[name] = w + delta, w
    steered = env.apply(lora, alpha=0.8)                 # the node runs before the patched weights exist
    base = _sample(lora, pos, neg)
    got = _sample(steered, pos, neg)
    want = _reference_sample(lora, neg[0][0], 0.8, pos, neg, weights=patched)
    support.check_close(got, want, base)
    wrong = _reference_sample(lora, neg[0][0], 0.8, pos, neg, weights=original)
    assert (got - wrong).abs().max() > 100 * (got - want).abs().max()     # the check can fail


def test_wan22_two_experts_each_with_its_own_node(env):
    """Wan 2.2 A14B: a high-noise and a low-noise expert (two Wan 2.1-layout models), each behind its own
    Apply NASA Attention, sampled as two KSamplerAdvanced stages; each stage equals its reference and each
    expert projects the negative only during its own steps."""
    high, low = env.model(seed=0), env.model(seed=1)
    pos, neg = _conds(env, "wan21_t2v")
    high_nasa, low_nasa = env.apply(high, alpha=0.8), env.apply(low, alpha=0.8)
    zeros = torch.zeros(1, 16, 2, 8, 8)

    def two_stages(first, second, ref_first=None, ref_second=None):
        def stage(m, ref, **kw):
            if ref is None:
                return _sample(m, pos, neg, total_steps=4, **kw)
            return _reference_sample(m, neg[0][0], 0.8, pos, neg, total_steps=4, **kw)
        mid = stage(first, ref_first, start_step=0, last_step=2)
        return mid, stage(second, ref_second, latent=mid, noise=zeros, start_step=2, last_step=4)

    counters = [support.Lengths([b.cross_attn.k for b in m.model.diffusion_model.blocks]) for m in (high, low)]
    try:
        got_mid, got = two_stages(high_nasa, low_nasa)
    finally:
        for c in counters:
            c.close()
    for c in counters:                   # two steps each: the prompt per forward, the negative once per expert's run
        assert all(support.once_per_run(lengths, POS_LEN, NEG_LEN, 2) for lengths in c.calls.values()), c.calls
    base_mid, base = two_stages(high, low)
    want_mid, want = two_stages(high, low, ref_first=True, ref_second=True)
    support.check_close(got_mid, want_mid, base_mid)
    support.check_close(got, want, base)
    # each expert's node does its part: NASA on the high-noise expert only is a different result
    only_high = two_stages(high_nasa, low)[1]
    assert (only_high - got).abs().max() > 100 * (got - want).abs().max()


# ----------------------------------------------------------------------------- the node's input, bad input

def test_input_model_untouched(env):
    mp = env.model()
    pos, neg = _conds(env, "wan21_t2v")
    opts_before, wrappers_before = repr(mp.model_options), repr(mp.wrappers)
    plain_before = _sample(mp, pos, neg)
    steered = _sample(env.apply(mp), pos, neg)
    assert torch.equal(_sample(mp, pos, neg), plain_before) and not torch.equal(steered, plain_before)
    assert repr(mp.model_options) == opts_before and repr(mp.wrappers) == wrappers_before
    assert "dit" not in mp.model_options["transformer_options"].get("patches_replace", {})


def test_sampler_negative_equals_wired_negative(env):
    mp = env.model()
    pos, neg = _conds(env, "wan21_t2v")
    _, other = _conds(env, "wan21_t2v", seed=7)
    wired = _sample(env.apply(mp, alpha=0.8, negative=neg, use_sampler_negative=False), pos, other)
    assert torch.equal(_sample(env.apply(mp, alpha=0.8), pos, neg), wired)


def test_wan_variants_with_other_blocks_or_forwards_are_refused(env):
    """A causal model built as I2V (its cached cross-attention path drops the image term: another call sequence)
    and a VACE model without VACE blocks (ComfyUI's forward could not run it) are not silently steered."""
    import comfy.supported_models as sm
    tiny = env.config("wan21_t2v")
    for config_class, changes in (("WAN21_CausalAR_T2V", {"model_type": "i2v", "in_dim": 36}),
                                  ("WAN21_Vace", {"model_type": "vace"})):
        if not hasattr(sm, config_class):
            continue        # 0.3.64 has no causal model
        model = env.rm.build_diffusion_model(config_class, {**tiny, **changes})
        with pytest.raises(ValueError, match=f"Apply NASA Attention: model family '{config_class}' is not supported"):
            env.apply(model)


# ----------------------------------------------------------------------------- the Wan variants

VARIANTS = ["wan21_fun_control", "wan21_flowrvs", "wan21_vace", "wan21_camera", "wan22_camera", "wan22_s2v",
            "wan22_animate", "wan21_humo", "wan21_scail", "wan21_scail2", "wan22_wandancer", "wan_animate2"]
N_VIDEO = 2 * 4 * 4          # the cases' video: 2 frames of 8x8 latents in 2x2 patches
N_REF = 4 * 4                # a reference frame


def _video(name) -> slice:
    """The video's tokens in the case's sequence: first, except after SCAIL's reference frame and Animate 2's
    reference slot (frame 0 of its 3-frame latent)."""
    start = N_REF if name.startswith("wan21_scail") or name == "wan_animate2" else 0
    return slice(start, start + N_VIDEO)


def _variant(env, name):
    cases.skip_if_missing(name)
    mp = cases.model(env.rm, name)
    return mp, *cases.conds(env.rm, name)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_steered_output_equals_independent_reference(env, name):
    """Every variant, with its conditioning (VACE control frames, camera, audio, reference and motion frames,
    pose): NASA equals the reference, which steers the main blocks' text cross-attention of the video tokens and
    nothing else (the VACE blocks, S2V's audio injector, Animate's face adapter, HuMo's audio cross-attention run
    unhooked, as ComfyUI wrote them)."""
    mp, pos, neg = _variant(env, name)
    base = cases.sample(mp, name, pos, neg, steps=2)
    got = cases.sample(env.apply(mp, alpha=0.8), name, pos, neg, steps=2)
    queries = 3 * N_REF if name == "wan_animate2" else None      # not its pose branch's (2 frames)
    want = _case_reference_sample(mp, name, neg[0][0], 0.8, pos, neg, steps=2, tokens=_video(name), queries=queries)
    support.check_close(got, want, base)


def test_animate2_pose_branch_and_reference_slot_are_not_steered(env):
    """Animate 2: the pose branch (its own pass through every block, on the pose frames with the prompt as its text)
    is bit-identical with NASA - the keys and values the video attends to are ComfyUI's; in the first block's
    cross-attention the reference slot's tokens (frame 0) are too, the video's are steered. Per block the negative
    is projected once, the prompt in each of the 2 forwards by both halves."""
    mp, pos, neg = _variant(env, "wan_animate2")
    dm = mp.model.diffusion_model
    pose_out, gen_out = [], []
    text_k = support.Lengths([b.cross_attn.k for b in dm.blocks])
    hooks = [dm.blocks[i].cross_attn.register_forward_hook(
        lambda m, args, o, i=i: (pose_out if args[0].shape[1] == 2 * N_REF else gen_out).append((i, o.clone())))
        for i in (0, len(dm.blocks) - 1)]
    try:
        cases.sample(mp, "wan_animate2", pos, neg)
        cases.sample(env.apply(mp, alpha=1.0), "wan_animate2", pos, neg)
    finally:
        for h in hooks:
            h.remove()
        text_k.close()
    assert len(pose_out) == len(gen_out) == 4
    for (i, plain), (j, nasa) in zip(pose_out[:2], pose_out[2:]):      # the pose branch: as without NASA
        assert i == j and torch.equal(plain, nasa)
    (_, plain), (_, nasa) = gen_out[0], gen_out[2]                    # block 0, the generation half
    video = _video("wan_animate2")
    assert plain.shape[1] == video.stop
    assert torch.equal(nasa[:, :video.start], plain[:, :video.start])
    assert ((nasa[:, video] - plain[:, video]).abs().amax(-1) > 0).all()
    for lengths in text_k.calls.values():
        assert lengths.count(NEG_LEN) == 1 and lengths.count(POS_LEN) == 4, text_k.calls


@pytest.mark.parametrize("name", ["wan22_s2v", "wan21_humo", "wan21_scail", "wan21_scail2"])
def test_variant_reference_and_motion_tokens_are_not_steered(env, name):
    """S2V ([video; reference; motion frames]), HuMo ([video; reference]) and SCAIL ([reference; video; pose]):
    the first block's cross-attention output of the tokens around the video is bit-identical with NASA; the
    video's is steered."""
    mp, pos, neg = _variant(env, name)
    outs = []
    h = mp.model.diffusion_model.blocks[0].cross_attn.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        cases.sample(mp, name, pos, neg)
        cases.sample(env.apply(mp, alpha=1.0), name, pos, neg)
    finally:
        h.remove()
    plain, nasa = outs
    # S2V: the reference frame, the motion frames packed 1x (4x4), 2x (1x2x2), 4x (4x1x1); HuMo: the reference;
    # SCAIL: the reference, the pose frame
    extra = {"wan22_s2v": N_REF + 4 * 4 + 2 * 2 + 4, "wan21_humo": N_REF}.get(name, 2 * N_REF)
    video = _video(name)
    assert plain.shape[1] == N_VIDEO + extra, plain.shape
    assert torch.equal(nasa[:, :video.start], plain[:, :video.start])
    assert torch.equal(nasa[:, video.stop:], plain[:, video.stop:])
    assert ((nasa[:, video] - plain[:, video]).abs().amax(-1) > 0).all()


def test_vace_blocks_text_attention_is_not_steered(env):
    """VACE: the vace blocks' queries are the control video's tokens (conditioning): their text cross-attention
    never sees the negative, and the hint of the first vace block (control tokens and the patch embedding of the
    video, before any main block) is bit-identical with NASA, while the main blocks' text attention is steered."""
    mp, pos, neg = _variant(env, "wan21_vace")
    dm = mp.model.diffusion_model
    assert len(dm.vace_blocks) == 2
    vace_k = support.Lengths([b.cross_attn.k for b in dm.vace_blocks])
    main_k = support.Lengths([b.cross_attn.k for b in dm.blocks])
    hints = []
    h = dm.vace_blocks[0].register_forward_hook(lambda m, i, o: hints.append(o[0].clone()))
    try:
        cases.sample(mp, "wan21_vace", pos, neg)
        cases.sample(env.apply(mp, alpha=1.0), "wan21_vace", pos, neg)
    finally:
        h.remove()
        vace_k.close()
        main_k.close()
    assert all(lengths == [POS_LEN] * 2 for lengths in vace_k.calls.values()), vace_k.calls
    assert all(lengths == [POS_LEN, POS_LEN, NEG_LEN] for lengths in main_k.calls.values()), main_k.calls
    assert len(hints) == 2 and torch.equal(hints[0], hints[1])


@pytest.mark.parametrize("name", ["wan21_humo", "wan22_s2v", "wan22_animate", "wan22_wandancer"])
def test_audio_and_face_attention_never_see_the_negative(env, name):
    """HuMo's audio cross-attention (keys: 16 audio tokens a frame), S2V's audio and WanDancer's music injector
    and Animate's face adapter attend to their own tokens only; NASA's negative goes through the main blocks' text
    k only."""
    mp, pos, neg = _variant(env, name)
    dm = mp.model.diffusion_model
    if name == "wan21_humo":
        extra = [b.audio_cross_attn_wrapper.audio_cross_attn.k for b in dm.blocks]
    elif name in ("wan22_s2v", "wan22_wandancer"):
        injector = dm.audio_injector if name == "wan22_s2v" else dm.music_injector
        extra = [m.k for m in injector.injector]
    else:
        extra = [dm.face_adapter.fuser_blocks[0].linear1_kv]
    text = support.Lengths([b.cross_attn.k for b in dm.blocks])
    other = support.Lengths(extra)
    try:
        cases.sample(env.apply(mp, alpha=1.0), name, pos, neg)
    finally:
        text.close()
        other.close()
    assert all(lengths == [POS_LEN, NEG_LEN] for lengths in text.calls.values()), text.calls
    assert all(NEG_LEN not in lengths and POS_LEN not in lengths for lengths in other.calls.values()), other.calls
    if name != "wan22_animate":                  # Animate's face adapter runs only with face video (not here)
        assert any(other.calls.values()), other.calls


def test_humo_without_audio(env):
    """HuMo sampled without audio: its blocks make two attention calls (no audio cross-attention); NASA still
    equals the reference."""
    mp, pos, neg = _variant(env, "wan21_humo")
    for c in (pos, neg):
        c[0][1] = {k: v for k, v in c[0][1].items() if k != "audio_embed"}
    base = cases.sample(mp, "wan21_humo", pos, neg)
    got = cases.sample(env.apply(mp, alpha=0.8), "wan21_humo", pos, neg)
    want = _case_reference_sample(mp, "wan21_humo", neg[0][0], 0.8, pos, neg, tokens=_video("wan21_humo"))
    support.check_close(got, want, base)


# ----------------------------------------------------------------------------- the causal model's AR sampler

class _NeverFilled(dict):
    """A cross-attention cache that never reports itself filled: every call of the block takes its uncached path
    (the same K, V of the same prompt), through cross_attn, which the reference hooks."""

    def get(self, key, default=None):
        return False if key == "is_init" else super().get(key, default)


def _ar_sample(mp, pos, neg, frames_per_block=1, uncached=False, frames=3):
    """ComfyUI's SamplerARVideo sampler (Causal Forcing / Self-Forcing): the video in chunks of
    ``frames_per_block`` frames, two steps each, every chunk's clean frames then written to the KV cache."""
    import comfy.sample
    import comfy.samplers
    dm = mp.model.diffusion_model
    sampler = comfy.samplers.ksampler("ar_video", {"num_frame_per_block": frames_per_block})
    latent = torch.zeros(1, 16, frames, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    if uncached:
        dm.init_crossattn_caches = lambda bs, device, dtype: [_NeverFilled() for _ in dm.blocks]
    try:
        return comfy.sample.sample_custom(mp, noise, 1.0, sampler, torch.tensor([1.0, 0.6, 0.0]), pos, neg, latent,
                                          disable_pbar=True, seed=1)
    finally:
        if uncached:
            del dm.init_crossattn_caches


@pytest.mark.parametrize("frames_per_block", [1, 3])
def test_causal_ar_sampler_steers_every_chunk_like_the_reference(env, frames_per_block):
    """Under the AR sampler (forward_block: blocks past the block replaces, KV caches, the cross-attention cache)
    NASA steers every chunk's text cross-attention, at every step and in the cache-filling pass: the result equals
    the reference applied to every call (the self-attention cache then holds the steered chunks, as in the
    reference), chunk by chunk (1 frame) and for one chunk of all frames."""
    cases.skip_if_missing("wan21_causal")
    mp = cases.model(env.rm, "wan21_causal")
    pos, neg = _conds(env, "wan21_t2v")
    text_k = support.Lengths([b.cross_attn.k for b in mp.model.diffusion_model.blocks])
    nasa = env.apply(mp, alpha=0.8)
    try:
        got = _ar_sample(nasa, pos, neg, frames_per_block)
    finally:
        text_k.close()
    # per block: the negative once in the run (NASA's reuse); the prompt in the first call only (its attention and
    # ComfyUI's cross-attention cache, which every later call reads)
    assert all(lengths.count(NEG_LEN) == 1 and set(lengths) == {POS_LEN, NEG_LEN} and len(lengths) <= 3
               for lengths in text_k.calls.values()), text_k.calls
    assert support.steered_layers(nasa) == cases.CASES["wan21_causal"].layers(mp.model.diffusion_model)
    base = _ar_sample(mp, pos, neg, frames_per_block)
    with _reference(mp, neg[0][0], 0.8):
        want = _ar_sample(mp, pos, neg, frames_per_block, uncached=True)
    support.check_close(got, want, base)
    assert torch.equal(_ar_sample(nasa, pos, neg, frames_per_block, uncached=True), got)  # cache: same result


def test_s2v_where_blocks_get_no_options_is_an_error(env):
    """ComfyUI 0.3.64's S2V forward gives its blocks no transformer_options (nothing reaches their attention):
    NASA raises, naming the node and the fix, instead of returning an unsteered video."""
    import comfy.supported_models as sm
    if not hasattr(sm, "WAN22_S2V"):
        support.skip_missing_family("wan22_s2v", "WAN22_S2V")
    if cases.CASES["wan22_s2v"].requires()[0]:
        support.skip_missing_family("wan22_s2v without transformer_options", "an S2V forward without them")
    mp = cases.model(env.rm, "wan22_s2v")
    pos, neg = cases.conds(env.rm, "wan22_s2v")
    with pytest.raises(RuntimeError, match="Apply NASA Attention: this ComfyUI's WanModel_S2V ran its blocks without "
                                           "their transformer_options.*Update ComfyUI"):
        cases.sample(env.apply(mp, alpha=0.8), "wan22_s2v", pos, neg)
