"""NASA on ComfyUI's own LTXAVModel (LTX-2, audio + video), tiny random weights, sampled on a NestedTensor latent
(video + audio) as LTXVConcatAVLatent builds it.

Held against code written here, independent of the pack:
* a reference written out in float64 replaces each block's ``attn2`` (video queries) and ``audio_attn2`` (audio
  queries) through torch forward hooks: RMS norms, projections, the prompt's mask, softmax, and
  Z+ - alpha * softmax(Q K-^T / sqrt(d)) V- on the cond rows, then ``to_out``; K-, V- from the negative embedded for
  that stream: ComfyUI's own connectors (``preprocess_text_embeds``), the split written out here, then the stream's
  PixArt caption projection written out (linear, tanh-GELU, linear). NASA's sampled output equals it at cfg 1, on
  the cond rows at cfg > 1, and with the block selections ``video`` (the audio's text attention left plain) and
  ``audio`` (the video's left plain);
* the negative each stream's text attention projects equals what that layer's ``to_k`` receives in a plain
  forward whose prompt is the negative (the same text path as the prompt's);
* the audio<->video cross-attentions and both self-attentions are untouched: each call's output equals the module
  run again, without any attention override, on the same inputs;
* reference audio tokens (ID-LoRA's ``ref_audio``, prepended to the audio) and guide frames (LTXVAddGuide's
  keyframe_idxs, appended to the video; at strength < 1 with ComfyUI's guide attention mask) are attended to and
  not steered; a video-only LTX-2 run steers the video; under ComfyUI's STG (self-attention as a value
  passthrough, no attention call) the text calls are steered as usual;
* a masked NASA Negative is refused (LTX-2's audio has no image region);
* LTX-2.3-style models (cross-attention AdaLN, connector-side caption projection, gated attention) are refused,
  and LTX-Video's adapter refuses LTX-2 while this one refuses LTX-Video.

The generic checks (alpha 0, finite, cfg > 1 uncond rows, batches, widths, a second node, the canary over both
block groups) run in test_contract.py on the ``ltx2`` case of family_cases.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

NAME = "ltx2"


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing(NAME)
    return cases.family_env(comfyui, NAME, ltx2="adapters.ltx2", ltxv="adapters.ltxv", adapters="adapters")


def _conds(env, **kw):
    return cases.conds(env["rm"], NAME, **kw)


def _sample(mp, pos, neg, cfg=1.0, steps=2, capture=None, latent=None, noise_mask=None):
    latent = cases.latent(NAME) if latent is None else latent
    return support.flat(support.sample(mp, latent, pos, neg, cfg, steps, capture, noise_mask=noise_mask))


def _add_guide(mp, pos, neg, strength, seed=5):
    """LTXVAddGuide at frame 0 through ComfyUI's own code (comfy_extras.nodes_lt) on the video latent, a random
    latent standing for the VAE-encoded guide image, then the audio latent joined as LTXVConcatAVLatent joins it:
    keyframe_idxs (and, where ComfyUI tracks guides for attention control, the guide's attention entry) on both
    prompts, the guide frame appended to the video with its noise mask. Returns (pos, neg, latent, noise_mask)."""
    import comfy_extras.nodes_lt as lt
    video, audio = cases.latent(NAME).unbind()
    guide = torch.randn(1, 128, 1, *video.shape[3:], generator=torch.Generator().manual_seed(seed))
    noise_mask = lt.get_noise_mask({"samples": video})
    pos, neg, video, noise_mask = lt.LTXVAddGuide.append_keyframe(pos, neg, 0, video, noise_mask, guide, strength,
                                                                  mp.model.diffusion_model.vae_scale_factors)
    track = getattr(lt, "_append_guide_attention_entry", None)
    if track is not None:
        pos, neg = track(pos, neg, guide[0, 0].numel(), list(guide.shape[2:]), strength=strength)
    joined = lt.LTXVConcatAVLatent.execute({"samples": video, "noise_mask": noise_mask}, {"samples": audio}).result[0]
    return pos, neg, joined["samples"], joined["noise_mask"]


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


def _pixart(x, proj):
    return _lin(F.gelu(_lin(x, proj.linear_1), approximate="tanh"), proj.linear_2)


def _embedded(dm, text):
    """(video, audio) embeddings of raw text: ComfyUI's connectors, then the split and projections written out."""
    both = dm.preprocess_text_embeds(text.float(), unprocessed=True)
    c = dm.caption_channels
    return _pixart(both[..., :c], dm.caption_projection), _pixart(both[..., c:], dm.audio_caption_projection)


def _reference(mp, negative, alpha, streams=("video", "audio"), audio_skip=0, video_tokens=None, method=None):
    """Every block's attn2 (``"video"``) and audio_attn2 (``"audio"``) named in ``streams`` computes NASA (or
    ``method``, written as support.steered_written_out takes it) written out in float64 while the returned hooks are
    open; the others run as ComfyUI wrote them. ``negative``: the raw negative tensor. ``audio_skip``: leading audio
    tokens not steered (reference audio); ``video_tokens``: only the first that many video tokens are steered (the
    rest are guide frames)."""
    dm = mp.model.diffusion_model
    emb = dict(zip(("video", "audio"), _embedded(dm, negative)))
    hooks = []
    for block in dm.transformer_blocks:
        for stream, attn in (("video", block.attn2), ("audio", block.audio_attn2)):
            if stream not in streams:
                continue

            def hook(module, args, kwargs, output, attn=attn, stream=stream):
                x, context, mask = args[0], kwargs["context"], kwargs.get("mask")
                heads = attn.heads
                q = _rms(_lin(x, attn.to_q), attn.q_norm)
                k, v = _rms(_lin(context, attn.to_k), attn.k_norm), _lin(context, attn.to_v)
                z = _attention(q, k, v, heads, mask)
                k_neg, v_neg = _rms(_lin(emb[stream], attn.to_k), attn.k_norm), _lin(emb[stream], attn.to_v)
                chunks = kwargs["transformer_options"]["cond_or_uncond"]
                per = x.shape[0] // len(chunks)
                tok = slice(audio_skip, None) if stream == "audio" else slice(0, video_tokens)
                for c, kind in enumerate(chunks):
                    if kind == 0:
                        rows = slice(c * per, (c + 1) * per)
                        row_mask = None if mask is None else mask[rows] if mask.shape[0] > 1 else mask
                        z[rows, tok] = support.steered_written_out(
                            method, z[rows, tok], *(support.split_heads(t.expand(per, -1, -1), heads) for t in (
                                q[rows, tok], k[rows], v[rows], k_neg, v_neg)), alpha, row_mask)
                return _lin(z, attn.to_out[0]).to(x.dtype)
            hooks.append((attn, hook))
    return support.Replacing(hooks)


def _reference_sample(mp, negative, alpha, *args, streams=("video", "audio"), audio_skip=0, video_tokens=None,
                      method=None, **kwargs):
    with _reference(mp, negative, alpha, streams, audio_skip, video_tokens, method):
        return _sample(mp, *args, **kwargs)


# ----------------------------------------------------------------------------- the formula, per stream

def test_steered_output_equals_independent_reference(env):
    mp = env["model"]()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg)
    got = _sample(env["apply"](mp, alpha=0.8), pos, neg)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg), base)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, comfyui, method):
    """NAG and VSF on every block's video and audio text cross-attention (VSF's softmax over the prompt's keys of
    that stream and the negative's) equal the methods written out in the test; switched off, the output is the
    unpatched model's, bit for bit."""
    core = comfyui.mod("nasa_core")
    obj, off = support.method_objects(core, method)
    mp = env["model"]()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg)
    got = _sample(env["adapters"].apply_nasa(mp, alpha=obj.strength, method=obj), pos, neg)
    support.check_close(got, _reference_sample(mp, neg[0][0], obj.strength, pos, neg, method=method), base)
    assert torch.equal(_sample(env["adapters"].apply_nasa(mp, alpha=off.strength, method=off), pos, neg), base)


def test_cfg_above_one_cond_rows_equal_the_reference(env):
    mp = env["model"]()
    pos, neg = _conds(env)
    base_cap, nasa_cap, ref_cap = [], [], []
    _sample(mp, pos, neg, cfg=4.0, capture=base_cap)
    _sample(env["apply"](mp, alpha=0.8), pos, neg, cfg=4.0, capture=nasa_cap)
    _reference_sample(mp, neg[0][0], 0.8, pos, neg, cfg=4.0, capture=ref_cap)
    support.check_close(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])
    assert torch.equal(nasa_cap[0][1], base_cap[0][1])       # the uncond prediction is not steered


@pytest.mark.parametrize("blocks,streams", [("video", ("video",)), ("audio", ("audio",)),
                                            ("video, audio*0", ("video",)), ("audio, video:0-1*0", ("audio",))])
def test_one_stream_selections_equal_the_reference_of_that_stream(env, blocks, streams):
    """The Advanced node's block selection picks a stream: ``video`` steers every block's attn2 and leaves every
    audio_attn2 as ComfyUI computes it, ``audio`` the other way round."""
    mp = env["model"]()
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg)
    m = support.apply_nasa_advanced(mp, alpha=0.8, blocks=blocks)
    got = _sample(m, pos, neg)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg, streams=streams), base)
    n = len(mp.model.diffusion_model.transformer_blocks)
    assert support.steered_layers(m) == frozenset((streams[0], i) for i in range(n))


def test_prompts_the_encoder_already_ran_the_connectors_on_are_steered_alike(env):
    """ComfyUI's LTX-2 text encoder runs the connectors itself for checkpoints whose connectors it loads (its compat
    mode): the prompt is then the connectors' video and audio outputs side by side (2 x caption_channels wide),
    without ``unprocessed_ltxav_embeds``, and LTXAV.extra_conds passes it as it is. The negative is embedded the
    same way: processed prompts give NASA's output of the unprocessed ones, and are accepted at that width."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)

    def processed(conds):
        (t, opts), = conds
        assert opts.get("unprocessed_ltxav_embeds") is True
        with torch.no_grad():
            t = dm.preprocess_text_embeds(t, unprocessed=True)
        return [[t, {k: v for k, v in opts.items() if k != "unprocessed_ltxav_embeds"}]]
    p_pos, p_neg = processed(pos), processed(neg)
    assert p_neg[0][0].shape[-1] == 2 * dm.caption_channels
    m = env["apply"](mp, alpha=0.8)
    got, want = _sample(m, p_pos, p_neg), _sample(m, pos, neg)
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got, _sample(mp, p_pos, p_neg), rtol=0, atol=1e-3)


def test_a_zero_multiplier_alone_selects_nothing(env):
    """``audio*0`` alone is a selection in which every named layer has multiplier 0 and every unnamed one is left
    out: nothing is steered (the model runs plain). Video only is ``video`` (or ``video, audio*0``)."""
    mp = env["model"]()
    pos, neg = _conds(env)
    m = support.apply_nasa_advanced(mp, alpha=0.8, blocks="audio*0")
    assert torch.equal(_sample(m, pos, neg), _sample(mp, pos, neg))
    assert support.steered_layers(m) == frozenset()


# ----------------------------------------------------------------------------- the text path, the untouched calls

def test_negative_takes_each_streams_text_path_as_a_prompt_does(env):
    """What attn2.to_k and audio_attn2.to_k receive for the negative equals what they receive in a plain forward
    whose prompt is the negative: the connectors, the split and each stream's caption projection."""
    mp = env["model"]()
    pos, neg = _conds(env)
    block = mp.model.diffusion_model.transformer_blocks[0]
    embedded = cases.CASES[NAME].neg_len + 52      # the connectors' registers pad 1100 tokens to 1152 (9 x 128)
    for to_k in (block.attn2.to_k, block.audio_attn2.to_k):
        with support.Inputs(k=to_k) as nasa:
            _sample(env["apply"](mp, alpha=0.5), pos, neg, steps=1)
        with support.Inputs(k=to_k) as plain:
            _sample(mp, neg, pos, steps=1)
        support.same_stream(nasa["k"], plain["k"], embedded)


def test_audio_video_and_self_attention_untouched(env):
    """Every call of attn1, audio_attn1, audio_to_video_attn and video_to_audio_attn under NASA returns what the
    module computes on the same inputs without any attention override (NASA's or another)."""
    mp = env["model"]()
    pos, neg = _conds(env)
    dm = mp.model.diffusion_model
    checked = []
    busy = []

    def hook(module, args, kwargs, output):
        if busy:
            return None
        opts = {k: v for k, v in kwargs.get("transformer_options", {}).items()
                if k != "optimized_attention_override" and not k.startswith("nasa")}
        busy.append(1)
        try:
            again = module(*args, **{**kwargs, "transformer_options": opts})
        finally:
            busy.pop()
        assert torch.equal(again, output), module
        checked.append(module)
        return None
    modules = [m for b in dm.transformer_blocks
               for m in (b.attn1, b.audio_attn1, b.audio_to_video_attn, b.video_to_audio_attn)]
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        m = env["apply"](mp, alpha=1.0)
        _sample(m, pos, neg, cfg=4.0, steps=1)
    finally:
        for h in handles:
            h.remove()
    assert set(map(id, checked)) == set(map(id, modules))
    assert support.steered_layers(m) == cases.CASES[NAME].layers(dm)


def test_reference_audio_tokens_are_not_steered(env):
    """ID-LoRA's reference audio (``ref_audio`` tokens, prepended to the audio stream at timestep 0) is
    conditioning: the reference steers only the audio tokens after it."""
    mp = env["model"]()
    pos, neg = _conds(env)
    ref = {"tokens": torch.randn(1, 3, 128, generator=torch.Generator().manual_seed(9))}
    pos = [[t, {**o, "ref_audio": ref}] for t, o in pos]
    neg = [[t, {**o, "ref_audio": ref}] for t, o in neg]
    base = _sample(mp, pos, neg)
    got = _sample(env["apply"](mp, alpha=0.8), pos, neg)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg, audio_skip=3), base)
    wrong = _reference_sample(mp, neg[0][0], 0.8, pos, neg, audio_skip=0)
    assert (got - wrong).abs().max() > 1e-3 * (wrong - base).abs().max()


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_guide_frame_tokens_are_not_steered(env, strength):
    """Tokens of guide frames LTXVAddGuide appends to the video (keyframe_idxs) are conditioning: the reference
    steers only the video's own 32 tokens; at strength 0.5 ComfyUI attenuates guide attention with a guide
    attention mask (several self-attention calls), and the text calls are found all the same."""
    mp = env["model"]()
    pos, neg, latent, noise_mask = _add_guide(mp, *_conds(env), strength=strength)
    base = _sample(mp, pos, neg, latent=latent, noise_mask=noise_mask)
    got = _sample(env["apply"](mp, alpha=0.8), pos, neg, latent=latent, noise_mask=noise_mask)
    want = _reference_sample(mp, neg[0][0], 0.8, pos, neg, latent=latent, noise_mask=noise_mask, video_tokens=32)
    support.check_close(got, want, base)
    wrong = _reference_sample(mp, neg[0][0], 0.8, pos, neg, latent=latent, noise_mask=noise_mask)
    assert (got - wrong).abs().max() > 1e-3 * (wrong - base).abs().max()


def test_spatio_temporal_guidance_blocks_are_steered_as_usual(env):
    """ComfyUI's STG (``stg_self_attn_blocks``) turns block 0's video and audio self-attention into a value
    passthrough (no attention call): its text calls are steered as the reference steers them."""
    mp = env["model"]().clone()
    mp.model_options.setdefault("transformer_options", {})["stg_self_attn_blocks"] = (0,)
    pos, neg = _conds(env)
    base = _sample(mp, pos, neg)
    assert not torch.equal(base, _sample(env["model"](), pos, neg))      # this ComfyUI honours it
    got = _sample(env["apply"](mp, alpha=0.8), pos, neg)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg), base)


def test_video_only_latent_steers_the_video(env):
    """An LTX-2 run on a video latent alone (no audio stream: ComfyUI runs no audio call) steers every attn2."""
    mp = env["model"]()
    pos, neg = _conds(env)
    video = cases.latent(NAME).unbind()[0]
    base = _sample(mp, pos, neg, latent=video)
    m = env["apply"](mp, alpha=0.8)
    got = _sample(m, pos, neg, latent=video)
    support.check_close(got, _reference_sample(mp, neg[0][0], 0.8, pos, neg, latent=video), base)
    n = len(mp.model.diffusion_model.transformer_blocks)
    assert support.steered_layers(m) == frozenset(("video", i) for i in range(n))


# ----------------------------------------------------------------------------- refusals

def test_a_masked_negative_is_refused_naming_the_node_and_the_fix(env):
    import nodes
    mp = env["model"]()
    pos, neg = _conds(env)
    negs = nodes.NODE_CLASS_MAPPINGS["NASANegative"].execute(negative=neg, alpha=-1.0, mask=torch.ones(4, 4),
                                                             negatives=None).result[0]
    m = support.apply_nasa_advanced(mp, negatives=negs, use_sampler_negative=False)
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): a NASA Negative with a mask cannot "
                                         r"steer LTX-2.*Remove the mask"):
        _sample(m, pos, neg)


@pytest.mark.parametrize("change", [dict(cross_attention_adaln=True), dict(caption_proj_before_connector=True),
                                    dict(apply_gated_attention=True)], ids=["adaln", "proj_first", "gated"])
def test_ltx23_style_models_are_refused(env, change):
    """LTX-2.3's text path (the text modulated per timestep before to_k, projections before the connectors, gated
    heads) is not LTX-2's: refused as not supported, by this adapter and by LTX-Video's."""
    config = {**env["config"], **change}
    if change.get("caption_proj_before_connector"):
        config.update(caption_channels=32)
    mp = env["rm"].build_diffusion_model("LTXAV", config)
    assert not env["ltx2"].matches(mp) and not env["ltxv"].matches(mp)
    with pytest.raises(env["adapters"].UnsupportedModelError, match="model family 'LTXAV' is not supported"):
        env["apply"](mp)


def test_ltx2_and_ltx_video_claim_only_their_own(env):
    mp = env["model"]()
    assert env["adapters"].find_adapter(mp) is env["ltx2"].FAMILY
    assert not env["ltxv"].matches(mp)
    ltxv = cases.model(env["rm"], "ltxv")
    assert not env["ltx2"].matches(ltxv)
    assert env["adapters"].find_adapter(ltxv) is env["ltxv"].FAMILY
