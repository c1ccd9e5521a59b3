"""NASA on ComfyUI's own LTXVModel (LTX-Video), tiny random weights.

Held against code written here, independent of the pack:
* hooks on every block's attn2.to_k count the negative's projection: once per block per sampling run (steps
  2+ reuse it); the negative goes through caption_projection once per run;
* a reference attn2 written out in float64 (RMS norms, projections, the prompt's attention mask, softmax,
  the negative restricted to its unpadded tokens) replaces each block's attn2 through a torch forward hook:
  NASA's output equals it at cfg 1, on the cond rows at cfg > 1 and in bf16; cfg 1 runs one pass per step;
* the negative's padding tokens (attention_mask 0) are ignored, as the model ignores the prompt's;
* guide-frame tokens (keyframe_idxs, from ComfyUI's own LTXVAddGuide code) are not steered;
* NASA steers the text cross-attention call however many self-attention calls the block makes: two or three
  with a guide attention mask (LTXVAddGuide at strength != 1), none with spatio-temporal guidance's
  value-passthrough self-attention; with as many video as prompt tokens the prompt's mask tells the calls apart;
* LTX-2 (audio-video) is left to adapters/ltx2.py; LTXV models with LTX-2.3's cross-attention AdaLN are refused.

The generic checks (alpha 0, finite, cfg > 1 uncond rows, batches, widths, a second node, the canary) run in
test_contract.py.

The random-weight builder leaves RMSNorm weights at 0 (its init knows LayerNorm/GroupNorm only), which
would make every attention uniform; the models here get random RMSNorm weights in [0.5, 2) (family_cases.py).
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, POS_VALID, NEG_LEN, NEG_VALID = 16, 11, 20, 13     # T5 pads prompts; the masks mark the real tokens


@pytest.fixture(scope="module")
def env(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_weights.models")

    def model(dtype=torch.float32):
        return cases.model(rm, "ltxv", dtype)

    node_carry = nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"]
    apply = support.apply_nasa

    def carry(cond, neg):
        return node_carry.execute(conditioning=cond, negative=neg, alpha=-1.0).result[0]

    return SimpleNamespace(model=model, apply=apply, carry=carry, width=rm.DIT_FAMILIES["ltxv"][1]["caption_channels"])


def _prompt(env, length, valid, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, :valid] = 1
    return [[torch.randn(1, length, env.width, generator=g), {"attention_mask": mask}]]


def _conds(env, seed=0, neg_len=NEG_LEN, neg_valid=NEG_VALID):
    return _prompt(env, POS_LEN, POS_VALID, seed), _prompt(env, neg_len, neg_valid, seed + 1)


def _sample(mp, pos, neg, cfg=1.0, steps=1, batch=1, frames=2, size=4, capture=None, latent=None, noise_mask=None):
    latent = torch.zeros(batch, 128, frames, size, size) if latent is None else latent
    return support.sample(mp, latent, pos, neg, cfg, steps, capture, noise_mask=noise_mask)


def _add_guide(mp, pos, neg, strength, frames=2, size=4, seed=5):
    """LTXVAddGuide at frame 0 through ComfyUI's own code (comfy_extras.nodes_lt), a random latent standing for
    the VAE-encoded guide image: keyframe_idxs on both prompts, the guide frame appended to the latent with its
    noise mask, and, where this ComfyUI tracks guides for attention control, the guide's attention entry.
    Returns (pos, neg, latent, noise_mask)."""
    import comfy_extras.nodes_lt as lt
    latent = torch.zeros(1, 128, frames, size, size)
    guide = torch.randn(1, 128, 1, size, size, generator=torch.Generator().manual_seed(seed))
    noise_mask = lt.get_noise_mask({"samples": latent})
    scale_factors = mp.model.diffusion_model.vae_scale_factors
    pos, neg, latent, noise_mask = lt.LTXVAddGuide.append_keyframe(pos, neg, 0, latent, noise_mask, guide, strength,
                                                                   scale_factors)
    track = getattr(lt, "_append_guide_attention_entry", None)
    if track is not None:
        pos, neg = track(pos, neg, guide[0, 0].numel(), list(guide.shape[2:]), strength=strength)
    return pos, neg, latent, noise_mask


def _attention_calls(mp, *args, **kwargs):
    """(query tokens, key tokens) of every attention call of one plain sampling run of ``mp`` (an attention
    override counting them, as any node may install one)."""
    calls = []
    m = mp.clone()
    options = m.model_options.setdefault("transformer_options", {})

    def count(func, *a, **kw):
        calls.append((a[0].shape[1], a[1].shape[1]))
        return func(*a, **kw)
    options["optimized_attention_override"] = count
    _sample(m, *args, **kwargs)
    return calls


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


def _reference(mp, negative, alpha, video_tokens=None, method=None):
    """Every block's attn2 of ``mp`` computes NASA (or ``method``, written as support.steered_written_out takes it)
    written out in float64 while the returned hooks are open (a ``with`` block).
    ``negative`` is a conditioning entry [tensor, {"attention_mask": ...}]; only its real tokens count.
    ``video_tokens``: only the first that many query tokens are steered (the rest are guide frames)."""
    dm = mp.model.diffusion_model
    text, opts = negative
    if "attention_mask" in opts:
        text = text[:, opts["attention_mask"][0].bool()]
    hooks = []
    for block in dm.transformer_blocks:
        attn = block.attn2

        def hook(module, args, kwargs, output, attn=attn):
            x, context, mask = args[0], kwargs["context"], kwargs.get("mask")
            heads = attn.heads
            q = _rms(_lin(x, attn.to_q), attn.q_norm)
            k, v = _rms(_lin(context, attn.to_k), attn.k_norm), _lin(context, attn.to_v)
            z = _attention(q, k, v, heads, mask)
            cp = dm.caption_projection
            emb = _lin(F.gelu(_lin(text, cp.linear_1), approximate="tanh"), cp.linear_2)
            k_neg, v_neg = _rms(_lin(emb, attn.to_k), attn.k_norm), _lin(emb, attn.to_v)
            chunks = kwargs["transformer_options"]["cond_or_uncond"]
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind == 0:
                    rows = slice(c * per, (c + 1) * per)
                    tok = slice(0, video_tokens)
                    row_mask = None if mask is None else mask[rows] if mask.shape[0] > 1 else mask
                    z[rows, tok] = support.steered_written_out(
                        method, z[rows, tok], *(support.split_heads(t.expand(per, -1, -1), heads) for t in (
                            q[rows, tok], k[rows], v[rows], k_neg, v_neg)), alpha, row_mask)
            return _lin(z, attn.to_out[0]).to(x.dtype)
        hooks.append((attn, hook))
    return support.Replacing(hooks)


def _reference_sample(mp, negative, alpha, *args, video_tokens=None, method=None, **kwargs):
    with _reference(mp, negative, alpha, video_tokens, method):
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


def test_steered_output_equals_independent_reference(env):
    mp = env.model()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg, steps=2)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, steps=2)
    support.check_close(got, _reference_sample(mp, neg[0], 0.8, pos, neg, steps=2), base)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, comfyui, method):
    """NAG and VSF on every block's text cross-attention (VSF's softmax over the prompt's real tokens, by its mask,
    and the negative's) equal the methods written out in the test; switched off, the output is the unpatched
    model's, bit for bit."""
    core, apply_nasa = comfyui.mod("nasa_core"), comfyui.mod("adapters").apply_nasa
    obj, off = support.method_objects(core, method)
    mp = env.model()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg, steps=2)
    got = _sample(apply_nasa(mp, alpha=obj.strength, method=obj), pos, neg, steps=2)
    support.check_close(got, _reference_sample(mp, neg[0], obj.strength, pos, neg, steps=2, method=method), base)
    assert torch.equal(_sample(apply_nasa(mp, alpha=off.strength, method=off), pos, neg, steps=2), base)


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


def test_cfg_above_one_cond_rows_equal_the_reference(env):
    """cfg 4, cond and uncond in one batched pass (their masks differ): the first step's cond prediction equals
    the reference's (which steers the cond rows only)."""
    mp = env.model()
    pos, neg = _conds(env, neg_len=POS_LEN, neg_valid=7)     # same length: cond and uncond share one batched pass
    base_cap, nasa_cap, ref_cap = [], [], []
    _sample(mp, pos, neg, cfg=4.0, steps=2, capture=base_cap)
    _sample(env.apply(mp, alpha=0.8), pos, neg, cfg=4.0, steps=2, capture=nasa_cap)
    _reference_sample(mp, neg[0], 0.8, pos, neg, cfg=4.0, steps=2, capture=ref_cap)
    support.check_close(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])


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
    pos, neg, latent, noise_mask = _add_guide(mp, pos, neg, strength=1.0)
    outs = []
    attn2 = mp.model.diffusion_model.transformer_blocks[0].attn2
    h = attn2.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        _sample(mp, pos, neg, latent=latent, noise_mask=noise_mask)
        _sample(env.apply(mp, alpha=1.0), pos, neg, latent=latent, noise_mask=noise_mask)
    finally:
        h.remove()
    plain, nasa = outs
    assert plain.shape[1] == 3 * 16
    assert torch.equal(nasa[:, -guide:], plain[:, -guide:])
    assert ((nasa[:, :-guide] - plain[:, :-guide]).abs().amax(-1) > 0).all()


def test_guide_attention_mask_self_attention_calls(env):
    """LTXVAddGuide at strength 0.5: where ComfyUI attenuates guide attention, attn1 gets a GuideAttentionMask and
    splits its queries into one call per token group (video, tracked guide), each over all 48 keys, before attn2's
    call. NASA steers exactly the text call (all 48 queries over the prompt's keys), only on the video's tokens,
    and equals the reference. There, also the three-way split (:func:`_untracked_guide_tokens_case`)."""
    mp = env.model()
    pos, neg = _conds(env)
    pos, neg, latent, noise_mask = _add_guide(mp, pos, neg, strength=0.5)
    n, video, layers = 48, 32, len(mp.model.diffusion_model.transformer_blocks)
    from comfy.ldm.lightricks import model as ltxv_model
    guide_mask_class = getattr(ltxv_model, "GuideAttentionMask", None)
    masks = []
    h = mp.model.diffusion_model.transformer_blocks[0].attn1.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw.get("mask")), with_kwargs=True)
    try:
        calls = _attention_calls(mp, pos, neg, latent=latent, noise_mask=noise_mask)
    finally:
        h.remove()
    self_calls = [c for c in calls if c[1] == n]
    assert [c for c in calls if c[1] != n] == [(n, POS_LEN)] * layers           # the text calls
    if guide_mask_class is not None:                    # this ComfyUI builds the guide attention mask
        assert all(isinstance(m, guide_mask_class) for m in masks) and masks
        assert self_calls == [(video, n), (n - video, n)] * layers
    else:
        assert self_calls == [(n, n)] * layers
    base = _sample(mp, pos, neg, latent=latent, noise_mask=noise_mask)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, latent=latent, noise_mask=noise_mask)
    want = _reference_sample(mp, neg[0], 0.8, pos, neg, latent=latent, noise_mask=noise_mask, video_tokens=video)
    support.check_close(got, want, base)
    if guide_mask_class is not None:
        _untracked_guide_tokens_case(env, guide_mask_class)


def _untracked_guide_tokens_case(env, mask_class):
    """A GuideAttentionMask tracking only part of the guide tokens (a guide's pixel mask covering fewer tokens
    than survive) makes attn1 split its queries three ways: video, tracked guide tokens, the rest. The mask is
    ComfyUI's own class, handed to the blocks by a "dit" replace installed before NASA (ComfyUI builds it in the
    model's forward); NASA steers exactly attn2's call and equals the reference."""
    mp = env.model()
    pos, neg = _conds(env)
    pos, neg, latent, noise_mask = _add_guide(mp, pos, neg, strength=1.0)
    n, video, tracked, layers = 48, 32, 8, len(mp.model.diffusion_model.transformer_blocks)
    masked = mp.clone()

    def with_mask(args, extra):
        mask = mask_class(n, video, tracked, torch.full((1, tracked), 0.5))
        return extra["original_block"]({**args, "self_attention_mask": mask})
    for i in range(layers):
        masked.set_model_patch_replace(with_mask, "dit", "double_block", i)
    calls = _attention_calls(masked, pos, neg, latent=latent, noise_mask=noise_mask)
    assert calls == [(video, n), (tracked, n), (n - video - tracked, n), (n, POS_LEN)] * layers
    base = _sample(masked, pos, neg, latent=latent, noise_mask=noise_mask)
    assert not torch.equal(base, _sample(mp, pos, neg, latent=latent, noise_mask=noise_mask))    # the mask acts
    got = _sample(env.apply(masked, alpha=0.8), pos, neg, latent=latent, noise_mask=noise_mask)
    want = _reference_sample(masked, neg[0], 0.8, pos, neg, latent=latent, noise_mask=noise_mask, video_tokens=video)
    support.check_close(got, want, base)


def _honours_stg_option(attn) -> bool:
    """Whether this ComfyUI's LTXV self-attention skips attention under transformer_options["stg_skip_self_attn"]."""
    calls = []
    options = {"stg_skip_self_attn": True,
               "optimized_attention_override": lambda func, *a, **kw: calls.append(1) or func(*a, **kw)}
    with torch.no_grad():
        attn(torch.zeros(1, 4, attn.to_q.in_features), transformer_options=options)
    return not calls


def _with_stg(mp, how):
    """A clone of ``mp`` with spatio-temporal guidance's perturbation on every block, installed before NASA as a
    "dit" replace: each block's self-attention returns its values (no attention call). ``how``: "option"
    through ComfyUI's own stg_skip_self_attn; "passthrough": attn1 swapped for that passthrough for the call,
    as nodes outside ComfyUI perturb it."""
    m = mp.clone()
    blocks = mp.model.diffusion_model.transformer_blocks

    def passthrough(attn, x, context=None, mask=None, pe=None, transformer_options=None, **kwargs):
        return attn.to_out(attn.to_v(x))

    def make(i):
        def stg_block(args, extra):
            if how == "option":
                options = {**args["transformer_options"], "stg_skip_self_attn": True}
                return extra["original_block"]({**args, "transformer_options": options})
            attn = blocks[i].attn1
            attn.forward = functools.partial(passthrough, attn)
            try:
                return extra["original_block"](args)
            finally:
                del attn.forward
        return stg_block
    for i in range(len(blocks)):
        m.set_model_patch_replace(make(i), "dit", "double_block", i)
    return m


def test_stg_self_attention_without_attention_calls(env):
    """Spatio-temporal guidance's perturbed pass: attn1 makes no attention call, so attn2's is the block's only
    one. NASA still steers exactly it (through the STG replace installed before it) and equals the reference;
    through ComfyUI's own stg_skip_self_attn where its LTXV attention honours it, and as an outside node does."""
    mp = env.model()
    pos, neg = _conds(env)
    layers = len(mp.model.diffusion_model.transformer_blocks)
    ways = ["passthrough"] + (["option"] if _honours_stg_option(mp.model.diffusion_model.transformer_blocks[0].attn1)
                              else [])
    for how in ways:
        stg = _with_stg(mp, how)
        assert _attention_calls(stg, pos, neg) == [(32, POS_LEN)] * layers, how
        base = _sample(stg, pos, neg)
        got = _sample(env.apply(stg, alpha=0.8), pos, neg)
        support.check_close(got, _reference_sample(stg, neg[0], 0.8, pos, neg), base)
        assert (base - _sample(mp, pos, neg)).abs().max() > 1e-2 * base.abs().max(), how    # STG changed the run


def test_as_many_video_as_prompt_tokens(env, comfyui):
    """One 4x4 latent frame has as many tokens as the prompt (16): attn1 and attn2 calls have the same shapes, and
    the prompt's mask (the object the block passes attn2) tells them apart; NASA equals the reference. Called
    without a prompt mask (ComfyUI's sampler always passes LTXV one) the two cannot be told apart, and NASA
    refuses instead of guessing."""
    mp = env.model()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg, frames=1)
    got = _sample(env.apply(mp, alpha=0.8), pos, neg, frames=1)
    support.check_close(got, _reference_sample(mp, neg[0], 0.8, pos, neg, frames=1), base)

    nasa_run = comfyui.mod("adapters.run")
    m = env.apply(mp, alpha=0.8, negative=neg, use_sampler_negative=False)
    run = nasa_run.NasaRun(nasa_run.negative_prompt([(neg[0][0], neg[0][1])], 0.8), {}, "test")
    options = {**m.model_options["transformer_options"], nasa_run.RUN_KEY: run, "cond_or_uncond": [0],
               "wrappers": m.wrappers}      # as the sampler passes them (comfy.sampler_helpers)
    dm = m.model.diffusion_model
    with torch.no_grad():
        for frames in (2, 1):
            x, context = torch.randn(1, 128, frames, 4, 4), pos[0][0]
            if frames == 2:         # 32 video tokens: no ambiguity, it steers
                dm(x, torch.tensor([0.5]), context, None, transformer_options=dict(options))
                continue
            with pytest.raises(RuntimeError, match="cannot tell the block's text cross-attention from its "
                                                   "self-attention"):
                dm(x, torch.tensor([0.5]), context, None, transformer_options=dict(options))
    assert run.steered == {("blocks", 0), ("blocks", 1)}


def test_ltx2_is_not_claimed(env, comfyui):
    """LTX-2 (audio-video: LTXAVModel subclasses LTXVModel, ComfyUI's LTXAV config subclasses LTXV) is not this
    adapter's (adapters/ltx2.py claims it), and an LTXV model built with LTX-2.3's cross-attention AdaLN (its attn2
    runs on modulated text) is refused."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "LTXAV"):
        support.skip_missing_family("LTX-2", "LTXAV")
    adapters = comfyui.mod("adapters")
    rm = comfyui.mod("runner.random_weights.models")
    ltx2 = rm.build_diffusion_model("LTXAV", dict(
        image_model="ltxav", in_channels=128, audio_in_channels=128, cross_attention_dim=32,
        audio_cross_attention_dim=32, attention_head_dim=16, audio_attention_head_dim=16, num_attention_heads=2,
        audio_num_attention_heads=2, caption_channels=72, num_layers=2))
    adaln = rm.build_diffusion_model("LTXV", dict(rm.DIT_FAMILIES["ltxv"][1], cross_attention_adaln=True))
    assert type(adaln.model).__name__ == "LTXV" and adaln.model.diffusion_model.cross_attention_adaln
    assert comfyui.mod("adapters.ltxv").matches(env.model())
    assert not comfyui.mod("adapters.ltxv").matches(ltx2)
    assert adapters.find_adapter(ltx2) is comfyui.mod("adapters.ltx2").FAMILY
    assert not comfyui.mod("adapters.ltxv").matches(adaln)
    with pytest.raises(adapters.UnsupportedModelError, match="model family 'LTXV' is not supported"):
        env.apply(adaln)


# ----------------------------------------------------------------------------- the node's input, bad input

def test_input_model_untouched(env):
    mp = env.model()
    pos, neg = _conds(env)
    opts_before, wrappers_before = repr(mp.model_options), repr(mp.wrappers)
    plain_before = _sample(mp, pos, neg)
    steered = _sample(env.apply(mp), pos, neg)
    assert torch.equal(_sample(mp, pos, neg), plain_before) and not torch.equal(steered, plain_before)
    assert repr(mp.model_options) == opts_before and repr(mp.wrappers) == wrappers_before


def test_mask_of_another_length_is_refused(env):
    mp = env.model()
    pos, neg = _conds(env)
    bad = [[neg[0][0], {"attention_mask": torch.ones(1, NEG_LEN + 3, dtype=torch.long)}]]
    with pytest.raises(ValueError, match="Apply NASA Attention: the negative's attention_mask covers 23 tokens "
                                         "but the negative has 20"):
        _sample(env.apply(mp, negative=bad), pos, neg)
