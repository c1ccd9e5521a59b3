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
  experts each steer with their own node.

The generic checks (alpha 0, finite, cfg > 1 uncond rows, batches, widths, a second node, the canary) run on
Wan 2.1 T2V / I2V and Wan 2.2 TI2V in test_contract.py.

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


def _reference(mp, negative, alpha, weights=None, guard=None):
    """Every block's cross_attn of ``mp`` computes NASA written out in float64 while the returned
    hooks are open (a ``with`` block).

    ``weights`` maps parameter names (of the diffusion model) to the tensors the negative's path uses
    instead of the live ones (to model a patch the reference must or must not see). ``guard`` = (mode, tau):
    the stability guard on each steered token of the text attention (norms over all channels)."""
    dm = mp.model.diffusion_model
    w = weights or {}
    hooks = []
    for i, block in enumerate(dm.blocks):
        attn = block.cross_attn
        kname, vname = f"blocks.{i}.cross_attn.k.weight", f"blocks.{i}.cross_attn.v.weight"

        def hook(module, args, kwargs, output, attn=attn, kname=kname, vname=vname):
            x, context = args[0], args[1]
            heads = attn.num_heads
            image = hasattr(attn, "k_img")                  # WanI2VCrossAttention: [image tokens; text tokens]
            n_img = kwargs.get("context_img_len") if image else None
            text = context if n_img is None else context[:, n_img:]
            q = _rms(_lin(x, attn.q), attn.norm_q)
            z = _attention(q, _rms(_lin(text, attn.k), attn.norm_k), _lin(text, attn.v), heads)
            emb = _embed(dm, negative, w)
            k_neg = _rms(_lin(emb, attn.k, w.get(kname)), attn.norm_k)
            v_neg = _lin(emb, attn.v, w.get(vname))
            chunks = kwargs["transformer_options"]["cond_or_uncond"]
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind == 0:
                    rows = slice(c * per, (c + 1) * per)
                    pos = z[rows].clone()
                    z[rows] = z[rows] - alpha * _attention(q[rows], k_neg, v_neg, heads)
                    if guard is not None:
                        pn, zn = pos.norm(dim=-1, keepdim=True), z[rows].norm(dim=-1, keepdim=True)
                        limit = pn if guard[0] == "rescale" else torch.minimum(zn, guard[1] * pn)
                        z[rows] = z[rows] * limit / zn
            if image:       # the image term, unsteered (without CLIP-vision input ComfyUI uses the whole context)
                img = context if n_img is None else context[:, :n_img]
                z = z + _attention(q, _rms(_lin(img, attn.k_img), attn.norm_k_img), _lin(img, attn.v_img), heads)
            return _lin(z, attn.o).to(x.dtype)
        hooks.append((attn, hook))
    return support.Replacing(hooks)


def _reference_sample(mp, negative, alpha, *args, weights=None, guard=None, **kwargs):
    with _reference(mp, negative, alpha, weights, guard):
        return _sample(mp, *args, **kwargs)


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


def test_wan_variants_with_other_forwards_are_refused(env):
    """VACE (and camera, S2V, HuMo, Animate) subclass WanModel with a different forward: not silently steered."""
    vace = env.rm.build_diffusion_model("WAN21_Vace", {**env.config("wan21_t2v"), "model_type": "vace",
                                                       "vace_layers": 1, "vace_in_dim": 96})
    with pytest.raises(ValueError, match="Apply NASA Attention: model family 'WAN21_Vace' is not supported"):
        env.apply(vace)
