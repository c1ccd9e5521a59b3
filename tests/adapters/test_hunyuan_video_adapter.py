"""NASA-I on ComfyUI's own HunyuanVideo class (random weights, tiny config, 1-2 latent frames of 8x8).

Held against code written here, independent of the pack:
* a float64-attention HunyuanVideo forward with the negative stream and NASA written out (``_reference``):
  the negative embedded by the token refiner at the row's timestep without a mask, per-token modulation for
  I2V guiding frames (in single blocks by position in the joint sequence, whose order - [video; text] up to
  ComfyUI 0.3.6x, [text; video] since - is read from what the model computes, see ``_model_order``),
  conditioning tokens (reference latent, guiding frame) attended to but never steered, the positive's text
  mask on the positive's attention only,
* hooks counting each block's (and the token refiner's) projection of the negative: once per forward,
* the negative stream entering double blocks 0 and 1 equals the text stream of a plain forward on the negative,
* text-query rows of the first block are untouched; cfg 1 runs one pass per step;
* an adapter that reads the forward's arguments from the wrong slots raises instead of sampling without the
  negative; HunyuanVideo 1.5 and HunyuanImage 2.1 are left to their own families (test_hunyuan15_adapter.py),
  MeanFlow models and 1.0 models with 1.5's text parts are refused.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batch rows at different timesteps - the
token refiner is timestep-modulated -, widths, a second node, the canary) run in test_contract.py.

The random-weight builder leaves RMSNorm scales (the q/k norms) at 0, which makes every query and key zero
(uniform attention); the model here gets scales drawn around 1 so that attention patterns show (family_cases.py).
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = cases.CASES["hunyuan_video"].pos_len, cases.CASES["hunyuan_video"].neg_len   # distinct, for hooks
FRAMES = 2             # latent frames of 8x8: 2 * 4 * 4 = 32 video tokens
VIDEO_TOKENS = FRAMES * 16


@pytest.fixture(scope="module")
def env(comfyui):
    return cases.family_env(comfyui, "hunyuan_video", hunyuan="adapters.hunyuan_video", adapters="adapters",
                            core="nasa_core")


def _conds(env):
    return cases.conds(env["rm"], "hunyuan_video")


def _sample(model, pos, neg, cfg=1.0, steps=1):
    return cases.sample(model, "hunyuan_video", pos, neg, cfg, steps)


def _direct(env, mp, inputs, alpha, method=None, **conditioning):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all
    positive). ``conditioning``: attention_mask, ref_latent, guiding_frame_index as ComfyUI passes them;
    ``method``: nasa_core.Nag / Vsf as apply_nasa takes it."""
    x, t, context, y, guidance, negative = inputs
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["hunyuan"].FAMILY, method=method)
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, y=y, guidance=guidance, transformer_options=options,
                                       **conditioning)


# ----------------------------------------------------------------------------- independent reference

def _rope(x, pe):
    x_ = x.double().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0].double() * x_[..., 0] + pe[..., 1].double() * x_[..., 1]).reshape(x.shape)


def _attn(q, k, v, key_bias=None):
    """(B, H, L, D) float64 -> (B, L, H*D): softmax written out; ``key_bias`` an additive (B, Lk) bias."""
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_bias is not None:
        s = s + key_bias.double()[:, None, None, :]
    o = torch.softmax(s, dim=-1) @ v.double()
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _heads(t, heads):
    return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def _mod(x, m):
    return x * (1 + m.scale) + m.shift


def _positions(latent):
    """(frame, row, column) of each (1, 2, 2) patch of a (B, C, T, H, W) latent, frame-major."""
    t, h, w = latent.shape[2], latent.shape[3] // 2, latent.shape[4] // 2
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    return grid.reshape(1, t * h * w, 3).float().expand(latent.shape[0], -1, -1).clone()


def _reference(dm, inputs, alpha, txt_mask=None, ref_latent=None, guiding_frame_index=None, steer_conditioning=False,
               text_first=False, method=None):
    """HunyuanVideo forward with NASA (``method``: NAG or VSF instead, written as support.steered_written_out takes
    it), written from the paper's formula and the published HunyuanVideo structure,
    using the model's weights; attention in float64. Modulation is written per token: with a guiding frame, one
    latent frame's worth of tokens uses the vector of the guiding frame's timestep, every other token the sampled
    timestep's. Double blocks and the last layer count image tokens (the guiding frame's are the first), the text
    always takes the sampled timestep's; the single blocks count positions of the joint sequence, as ComfyUI
    does, so there it depends on its order: ``text_first`` ([text; video]) or [video; text], and the negative
    stream's tokens take the positions the text has. Nothing else depends on the order (attention over the
    joint sequence, its RoPE ids and mask carried along with the tokens, is the same in either)."""
    from comfy.ldm.flux.layers import timestep_embedding
    from einops import rearrange
    x, t, context, y, guidance, negative = inputs
    b, T = x.shape[0], context.shape[1]
    img, ids = dm.img_in(x), _positions(x)
    n_ref = 0
    if ref_latent is not None:                       # prepended, at frame -1 and shifted right by the image width
        rids = _positions(ref_latent)
        rids[..., 0] = -1
        rids[..., 2] += x.shape[-1] // 2
        ref = dm.img_in(ref_latent)
        img, ids, n_ref = torch.cat((ref, img), 1), torch.cat((rids, ids), 1), ref.shape[1]
    N = img.shape[1]
    pe = dm.pe_embedder(torch.cat((ids, torch.zeros(b, T, 3)), 1))
    pe_neg = dm.pe_embedder(torch.zeros(b, negative.shape[1], 3))

    cond = dm.vector_in(y) + dm.guidance_in(timestep_embedding(guidance, 256))
    vec = (dm.time_in(timestep_embedding(t, 256, time_factor=1.0)) + cond)[:, None]         # (b, 1, D)
    vec_img = vec.expand(b, N, -1).clone()
    steer_from = n_ref
    if guiding_frame_index is not None:              # the first latent frame is the clean conditioning frame
        frame = (x.shape[-1] // 2) * (x.shape[-2] // 2)
        gvec = dm.time_in(timestep_embedding(torch.full((b,), float(guiding_frame_index)), 256, time_factor=1.0))
        vec_img[:, :frame] = (gvec + cond)[:, None]
        steer_from = frame
    steer = slice(0 if steer_conditioning else steer_from, N)

    bias, key_bias = None, None
    if txt_mask is not None:
        bias = (txt_mask - 1).float() * torch.finfo(torch.float32).max
        key_bias = torch.cat((torch.zeros(b, N), bias), 1)
    rows_bias = None if key_bias is None else key_bias[:, None, None, :]     # as support's (B, H, Lq, Lk) logits
    txt = dm.txt_in(context, t, bias)
    neg = dm.txt_in(negative, t, None)               # the negative through the refiner: same timestep, no padding
    H = dm.num_heads
    for blk in dm.double_blocks:
        im1, im2 = blk.img_mod(vec_img)
        tm1, tm2 = blk.txt_mod(vec)

        def qkv(attn, norm, h_, m):
            q, k, v = _heads(attn.qkv(_mod(norm(h_), m)), H)
            q, k = attn.norm(q, k, v)
            return q, k, v
        iq, ik, iv = qkv(blk.img_attn, blk.img_norm1, img, im1)
        tq, tk, tv = qkv(blk.txt_attn, blk.txt_norm1, txt, tm1)
        nq, nk, nv = qkv(blk.txt_attn, blk.txt_norm1, neg, tm1)
        q, k = _rope(torch.cat((iq, tq), 2), pe), _rope(torch.cat((ik, tk), 2), pe)
        v = torch.cat((iv, tv), 2).double()
        nq, nk = _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v, key_bias)
        a[:, steer] = support.steered_written_out(method, a[:, steer], q[:, :, steer], k, v, nk, nv, alpha, rows_bias)
        na = _attn(nq, torch.cat((nk, k[:, :, :N]), 2), torch.cat((nv.double(), v[:, :, :N]), 2))
        ia, ta = a[:, :N].float(), a[:, N:].float()
        img = img + im1.gate * blk.img_attn.proj(ia)
        img = img + im2.gate * blk.img_mlp(_mod(blk.img_norm2(img), im2))
        txt = txt + tm1.gate * blk.txt_attn.proj(ta)
        txt = txt + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(txt), tm2))
        neg = neg + tm1.gate * blk.txt_attn.proj(na.float())
        neg = neg + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(neg), tm2))
    hs = torch.cat((img, txt), 1)       # this reference's order; the modulation follows the model's positions
    L = neg.shape[1]
    img_pos, txt_pos = (torch.arange(N) + T, torch.arange(T)) if text_first else (torch.arange(N), torch.arange(T) + N)
    neg_pos = txt_pos[0] + torch.arange(L)
    vec_all, vec_neg = vec.expand(b, N + T, -1).clone(), vec.expand(b, L, -1).clone()
    if guiding_frame_index is not None:
        vec_all[:, torch.cat((img_pos, txt_pos)) < frame] = (gvec + cond)[:, None]
        vec_neg[:, neg_pos < frame] = (gvec + cond)[:, None]
    for blk in dm.single_blocks:
        m, _ = blk.modulation(vec_all)
        mn, _ = blk.modulation(vec_neg)

        def lin1(h_, m_):
            qkv_, mlp = torch.split(blk.linear1(_mod(blk.pre_norm(h_), m_)), [3 * blk.hidden_size, blk.mlp_hidden_dim], -1)
            q, k, v = _heads(qkv_, H)
            q, k = blk.norm(q, k, v)
            return q, k, v, mlp
        q, k, v, mlp = lin1(hs, m)
        nq, nk, nv, nmlp = lin1(neg, mn)
        q, k, nq, nk = _rope(q, pe), _rope(k, pe), _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v, key_bias)
        a[:, steer] = support.steered_written_out(method, a[:, steer], q[:, :, steer], k, v, nk, nv, alpha, rows_bias)
        na = _attn(nq, torch.cat((nk, k[:, :, :N]), 2), torch.cat((nv.double(), v[:, :, :N].double()), 2))
        hs = hs + m.gate * blk.linear2(torch.cat((a.float(), blk.mlp_act(mlp)), 2))
        neg = neg + mn.gate * blk.linear2(torch.cat((na.float(), blk.mlp_act(nmlp)), 2))
    out = dm.final_layer(hs[:, :N], vec_img)[:, n_ref:]
    return rearrange(out, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=x.shape[2], h=x.shape[3] // 2,
                     w=x.shape[4] // 2, pt=1, ph=2, pw=2)


def _inputs(config, seed=3, batch=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], FRAMES, 8, 8, generator=g)
    context = torch.randn(batch, POS_LEN, config["context_in_dim"], generator=g)
    y = torch.randn(batch, config["vec_in_dim"], generator=g)
    negative = torch.randn(1, NEG_LEN, config["context_in_dim"], generator=g)
    return x, torch.full((batch,), 700.0), context, y, torch.full((batch,), 6.0), negative


def _model_order(env) -> bool:
    """Whether the model joins [text; video] for its single blocks, read from what it computes: with a guiding
    frame the single blocks modulate by sequence position, and exactly one order's reference (at alpha 0) is the
    model's own forward."""
    if "text_first" not in env:
        dm = env["model"]().model.diffusion_model
        inputs = _inputs(env["config"])
        x, t, context, y, guidance, _ = inputs
        index = torch.tensor([0.0])
        with torch.no_grad():
            plain = dm(x, t, context, y=y, guidance=guidance, guiding_frame_index=index, transformer_options={})
            errors = {order: (plain - _reference(dm, inputs, 0.0, guiding_frame_index=index, text_first=order))
                      .abs().max().item() for order in (True, False)}
        scale = plain.abs().max().item()
        assert min(errors.values()) <= 1e-4 * scale and max(errors.values()) > 1e-2 * scale, errors
        env["text_first"] = min(errors, key=errors.get)
    return env["text_first"]


def _check_against_reference(env, alpha=1.0, tol=1e-3, method=None, written=None, **conditioning):
    """``method``: the pack's nasa_core.Nag / Vsf (at strength ``alpha``), ``written``: the same written out."""
    mp = env["model"]()
    inputs = _inputs(env["config"])
    dm = mp.model.diffusion_model
    direct = {"attention_mask": conditioning.get("txt_mask"), "ref_latent": conditioning.get("ref_latent"),
              "guiding_frame_index": conditioning.get("guiding_frame_index")}
    conditioning["text_first"] = _model_order(env)
    got = _direct(env, mp, inputs, alpha, method=method, **direct)
    with torch.no_grad():
        want = _reference(dm, inputs, alpha, method=written, **conditioning)
        base = _reference(dm, inputs, 0.0, **conditioning)
    support.check_close(got, want, base, tol)
    return got


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    _check_against_reference(env)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's video rows (double and single blocks; VSF's softmax over the block's
    video and text keys and the negative stream's), also with a reference latent's tokens as keys that are not
    steered, equal the methods written out on the reference; at zero strength (NAG scale 1, VSF scale 0) the
    output is the unpatched model's, bit for bit. NAG also with a padded positive's text mask; VSF refuses a
    masked joint attention call (test_vsf_refuses_a_padded_prompt_clearly)."""
    obj, off = support.method_objects(env["core"], method)
    _check_against_reference(env, alpha=obj.strength, method=obj, written=method)
    ref = torch.randn(1, env["config"]["in_channels"], 1, 8, 8, generator=torch.Generator().manual_seed(9))
    _check_against_reference(env, alpha=obj.strength, method=obj, written=method, ref_latent=ref)
    if method[0] == "nag":
        mask = torch.ones(1, POS_LEN, dtype=torch.long)
        mask[:, -POS_LEN // 3:] = 0
        _check_against_reference(env, alpha=obj.strength, method=obj, written=method, txt_mask=mask)
    mp = env["model"]()
    inputs = _inputs(env["config"])
    x, t, context, y, guidance, _ = inputs
    with torch.no_grad():
        plain = mp.model.diffusion_model(x, t, context, y=y, guidance=guidance, transformer_options={})
    assert torch.equal(_direct(env, mp, inputs, off.strength, method=off), plain)


def test_positive_text_mask_stays_on_the_positive(env):
    """A padded positive (attention_mask zeros on its last tokens) is masked in its token refiner and as keys of
    the joint attention, as the model does; the negative (no padding) is refined and attended to unmasked."""
    mask = torch.ones(1, POS_LEN, dtype=torch.long)
    mask[:, -POS_LEN // 3:] = 0
    _check_against_reference(env, txt_mask=mask)


def test_vsf_refuses_a_padded_prompt_clearly(env, comfyui):
    """VSF's one softmax on a joint attention call that carries a mask (a padded prompt's) is refused at the first
    block with an error naming the methods that work, not run without the mask; unpadded, VSF steers."""
    core = comfyui.mod("nasa_core")
    mp = env["model"]()
    x, t, context, y, guidance, negative = _inputs(env["config"])
    mask = torch.ones(1, POS_LEN, dtype=torch.long)
    mask[:, -POS_LEN // 3:] = 0
    vsf = core.Vsf(2.0, 0.1)
    m = comfyui.mod("adapters").apply_nasa(mp, negative=[[negative, {}]], alpha=vsf.strength, method=vsf)
    options = support.nasa_options(m, negative, vsf.strength, env["nasa_run"], env["hunyuan"].FAMILY, method=vsf)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"method VSF on a joint attention call with a mask .* Use "
                                                            r"method 'nasa' or 'nag'"):
        m.model.diffusion_model(x, t, context, y=y, guidance=guidance, attention_mask=mask,
                                transformer_options=dict(options))
    with torch.no_grad():
        steered = m.model.diffusion_model(x, t, context, y=y, guidance=guidance, transformer_options=dict(options))
        plain = mp.model.diffusion_model(x, t, context, y=y, guidance=guidance, transformer_options={})
    assert (steered - plain).abs().max() > 1e-2 * plain.abs().max()


def _conditioning_tokens_check(env, **conditioning):
    mp = env["model"]()
    inputs = _inputs(env["config"])
    got = _check_against_reference(env, **conditioning)
    conditioning["text_first"] = _model_order(env)
    with torch.no_grad():
        wrong = _reference(mp.model.diffusion_model, inputs, 1.0, steer_conditioning=True, **conditioning)
        right = _reference(mp.model.diffusion_model, inputs, 1.0, **conditioning)
    assert (got - wrong).abs().max() > 10 * (got - right).abs().max()


def test_reference_latent_tokens_are_keys_but_not_steered(env):
    """I2V "custom" guidance prepends a reference latent's tokens: they are keys for the negative stream but only
    the generated video's rows are steered (a reference steering them too does not match)."""
    ref = torch.randn(1, env["config"]["in_channels"], 1, 8, 8, generator=torch.Generator().manual_seed(9))
    _conditioning_tokens_check(env, ref_latent=ref)


def test_guiding_frame_is_not_steered_and_text_uses_the_video_modulation(env):
    """I2V "v2 (replace)": the first latent frame is the clean start image (modulated at guiding_frame_index); it
    is not steered, and the negative stream takes the modulation the model gives its text (the sampled
    timestep's in the double blocks; in the single blocks that of the text's sequence positions)."""
    _conditioning_tokens_check(env, guiding_frame_index=torch.tensor([0.0]))     # as ComfyUI's CONDRegular gives it


def test_single_block_modulation_of_the_negative_follows_the_text_positions(env):
    """With a guiding frame the single blocks modulate the first frame's worth of POSITIONS of the joint sequence
    with the guiding frame's vector: text positions where the text comes first. The negative stream must take
    the modulation of the positions the text has; a reference placing the text on the other side is measurably
    off NASA's result (by the order read from the model, ``_model_order``, not from a ComfyUI version)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env["config"])
    index = torch.tensor([0.0])
    got = _direct(env, mp, inputs, 1.0, guiding_frame_index=index)
    with torch.no_grad():
        right = _reference(dm, inputs, 1.0, guiding_frame_index=index, text_first=_model_order(env))
        other = _reference(dm, inputs, 1.0, guiding_frame_index=index, text_first=not _model_order(env))
    assert (got - other).abs().max() > 100 * (got - right).abs().max()


def test_every_block_and_the_token_refiner_project_the_negative_once_per_forward(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)
    modules = {("refiner", 0): dm.txt_in.input_embedder, **support.text_projections(dm)}
    with support.Lengths(modules) as lengths, support.Forwards(mp) as passes:
        _sample(env["apply"](mp, alpha=0.5), pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    for (name, i), seen in lengths.calls.items():
        if name == "single":                                 # joint [video; text] once, negative once
            assert sorted(seen) == sorted([POS_LEN + VIDEO_TOKENS, NEG_LEN] * 2), (name, i, seen)
        else:                                                # text stream: positive once, negative once
            assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (name, i, seen)


def test_negative_stream_equals_a_real_forward_on_the_negative(env):
    """Capture what enters double blocks 0 and 1's text norm: NASA's negative stream (token refiner output, then
    after block 0) vs the text stream of an unpatched forward whose prompt is the negative (same video, timestep,
    guidance and pooled vector)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env["config"])
    x, t, context, y, guidance, negative = inputs
    norms = {f"double{i}": dm.double_blocks[i].txt_norm1 for i in (0, 1)}
    with support.Inputs(**norms) as seen:
        _direct(env, mp, inputs, 1.0)
    with support.Inputs(**norms) as real, torch.no_grad():
        dm(x, t, negative, y=y, guidance=guidance, transformer_options={})
    for name in norms:
        support.same_stream(seen[name], real[name], NEG_LEN)


def test_only_video_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of txt_attn.proj)
    is bit-identical with and without NASA; the video tokens' (input of img_attn.proj) is not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    inputs = _inputs(env["config"])
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, inputs, 0.0)
        _direct(env, mp, inputs, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN], seen["img"])


def _not_supported(env, comfyui, mp, family):
    """``mp`` is not claimed: the node refuses it with the unsupported-family error."""
    adapters = comfyui.mod("adapters")
    assert not env["hunyuan"].matches(mp)
    with pytest.raises(adapters.UnsupportedModelError, match=f"model family '{family}' is not supported"):
        adapters.find_adapter(mp)
    with pytest.raises(adapters.UnsupportedModelError, match=f"model family '{family}' is not supported"):
        env["apply"](mp)


def test_hunyuan_image_21_is_left_to_its_own_family(env, comfyui):
    """HunyuanImage 2.1 shares the diffusion-model class but not the text path (ByT5 glyph tokens, 2D patches):
    this adapter does not claim it; its own family (adapters.hunyuan_image21) does."""
    config = dict(env["config"], vec_in_dim=None, patch_size=[1, 1], axes_dim=[8, 8], guidance_embed=False)
    assert env["hunyuan"].matches(env["model"]())
    mp = env["rm"].build_diffusion_model("HunyuanImage21", config)
    assert not env["hunyuan"].matches(mp)
    assert comfyui.mod("adapters").find_adapter(mp) is comfyui.mod("adapters.hunyuan_image21").FAMILY


def test_hunyuan_video_15_is_left_to_its_own_family(env, comfyui):
    """HunyuanVideo 1.5 runs the same diffusion-model class (ComfyUI's HunyuanVideo15 model subclasses its
    HunyuanVideo model) with CLIP-vision tokens and a condition-type embedding in its text sequence: this adapter
    does not claim it; its own family (adapters.hunyuan_video15) does. A model of ComfyUI's plain HunyuanVideo
    class built with either of those parts is claimed by no family: the match reads the model's structure, not
    only its class."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "HunyuanVideo15"):
        support.skip_missing_family("HunyuanVideo 1.5", "HunyuanVideo15")
    v15 = dict(env["config"], vision_in_dim=24, use_cond_type_embedding=True, meanflow_sum=True, patch_size=[1, 1, 1],
               vec_in_dim=None)
    mp = env["rm"].build_diffusion_model("HunyuanVideo15", v15)
    assert not env["hunyuan"].matches(mp)
    assert comfyui.mod("adapters").find_adapter(mp) is comfyui.mod("adapters.hunyuan_video15").FAMILY
    for structure in (dict(use_cond_type_embedding=True), dict(vision_in_dim=24)):
        mp = env["rm"].build_diffusion_model("HunyuanVideo", {**env["config"], **structure})
        assert type(mp.model).__name__ == "HunyuanVideo"
        _not_supported(env, comfyui, mp, "HunyuanVideo")


def test_meanflow_hunyuan_video_is_not_claimed(env, comfyui):
    """A MeanFlow model of ComfyUI's HunyuanVideo class (a second timestep embedding, ``time_r_in``, as HunyuanVideo
    1.5's step-distilled checkpoints have) is refused although ComfyUI loads it as its HunyuanVideo model."""
    mp = env["rm"].build_diffusion_model("HunyuanVideo", dict(env["config"], meanflow=True))
    assert type(mp.model).__name__ == "HunyuanVideo" and mp.model.diffusion_model.time_r_in is not None
    _not_supported(env, comfyui, mp, "HunyuanVideo")


def test_misread_forward_arguments_raise_instead_of_sampling_unsteered(env, comfyui, monkeypatch):
    """No silent no-op: where NASA's view of HunyuanVideo._forward's signature has one parameter more before
    transformer_options than ComfyUI's (what a positional table of an older release made of the clip_fea ComfyUI
    added), NASA reads no run from the forward's arguments and steers nothing: the sampling run must fail, saying
    the negative was not honoured. The same run with ComfyUI's real signature steers."""
    import inspect
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    binding = comfyui.mod("adapters.binding")
    real = binding.signature_of

    def shifted(func):
        sig = real(func)
        if getattr(func, "__func__", None) is not HunyuanVideo._forward:
            return sig
        params = list(sig.parameters.values())
        at = [p.name for p in params].index("transformer_options")
        added = inspect.Parameter("added_before_transformer_options", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=None)
        return sig.replace(parameters=params[:at] + [added] + params[at:])
    mp = env["model"]()
    pos, neg = _conds(env)
    monkeypatch.setattr(binding, "signature_of", shifted)
    with pytest.raises(RuntimeError, match="NASA steered no layer of this HunyuanVideo .* the negative prompt was "
                                           "NOT honoured"):
        _sample(env["apply"](mp, alpha=1.0), pos, neg, steps=1)
    monkeypatch.undo()
    m = env["apply"](mp, alpha=1.0)
    _sample(m, pos, neg, steps=1)
    assert len(support.steered_layers(m)) == 4
