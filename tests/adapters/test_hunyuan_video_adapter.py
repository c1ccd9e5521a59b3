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
* alpha = 0 is bit-identical; text-query rows of the first block are untouched; uncond rows at cfg > 1
  are untouched; cfg 1 runs one pass per step; batch rows at different timesteps each get their own;
* a 1-step run steers every block; an adapter that reads the forward's arguments from the wrong slots raises
  instead of sampling without the negative; HunyuanVideo 1.5, HunyuanImage 2.1 and MeanFlow models are refused.

The random-weight builder leaves RMSNorm scales (the q/k norms) at 0, which makes every query and key zero
(uniform attention); the model here gets scales drawn around 1 so that attention patterns show.
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_test_support as support

POS_LEN = 24
NEG_LEN = 40           # distinct from the positive's tokens, so hooks can tell them apart
FRAMES = 2             # latent frames of 8x8: 2 * 4 * 4 = 32 video tokens
VIDEO_TOKENS = FRAMES * 16


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    nasa_run = comfyui.mod("adapters.run")
    hunyuan = comfyui.mod("adapters.hunyuan_video")
    cache = {}

    def model(dtype=torch.float32):
        if dtype not in cache:
            mp = rm.build_dit_model("hunyuan_video", dtype=dtype, seed=0)
            support.sharpen_rms_norms(mp.model.diffusion_model)
            cache[dtype] = mp
        return cache[dtype]

    apply = support.apply_nasa

    return dict(rm=rm, nasa_run=nasa_run, hunyuan=hunyuan, model=model, apply=apply,
                config=rm.DIT_FAMILIES["hunyuan_video"][1])


def _conds(config, seed=0, pos_len=POS_LEN, neg_len=NEG_LEN, width=None):
    g = torch.Generator().manual_seed(seed)
    width = width or config["context_in_dim"]
    pos = [[torch.randn(1, pos_len, width, generator=g), {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=g)}]]
    neg = [[torch.randn(1, neg_len, width, generator=g), {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=g)}]]
    return pos, neg


def _sample(model, config, pos, neg, cfg=1.0, steps=1, batch=1, capture=None):
    return support.sample(model, torch.zeros(batch, config["in_channels"], FRAMES, 8, 8), pos, neg, cfg, steps, capture)


def _direct(env, mp, inputs, alpha, **conditioning):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all
    positive). ``conditioning``: attention_mask, ref_latent, guiding_frame_index as ComfyUI passes them."""
    x, t, context, y, guidance, negative = inputs
    m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    nasa_run = env["nasa_run"]
    run = nasa_run.NasaRun(nasa_run.negative_prompt([(negative, {})], alpha), {}, "test",
                            layers=env["hunyuan"].FAMILY.layers(m.model))
    options = dict(m.model_options["transformer_options"])
    # as the sampler does (comfy.sampler_helpers): the patcher's wrappers travel in transformer_options
    options.update({nasa_run.RUN_KEY: run, "cond_or_uncond": [0], "wrappers": m.wrappers})
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
               text_first=False):
    """HunyuanVideo forward with NASA, written from the paper's formula and the published HunyuanVideo structure,
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
        a[:, steer] -= alpha * _attn(q[:, :, steer], nk, nv)
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
        a[:, steer] -= alpha * _attn(q[:, :, steer], nk, nv)
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


def _check_against_reference(env, alpha=1.0, tol=1e-3, **conditioning):
    mp = env["model"]()
    inputs = _inputs(env["config"])
    dm = mp.model.diffusion_model
    direct = {"attention_mask": conditioning.get("txt_mask"), "ref_latent": conditioning.get("ref_latent"),
              "guiding_frame_index": conditioning.get("guiding_frame_index")}
    conditioning["text_first"] = _model_order(env)
    got = _direct(env, mp, inputs, alpha, **direct)
    with torch.no_grad():
        want = _reference(dm, inputs, alpha, **conditioning)
        base = _reference(dm, inputs, 0.0, **conditioning)
    effect = (want - base).abs().max().item()
    err = (got - want).abs().max().item()
    assert effect > 1e-2 * base.abs().max().item(), "NASA's effect is too small to test against"
    assert err <= tol * effect, (err, effect)
    return got


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    _check_against_reference(env)


def test_positive_text_mask_stays_on_the_positive(env):
    """A padded positive (attention_mask zeros on its last tokens) is masked in its token refiner and as keys of
    the joint attention, as the model does; the negative (no padding) is refined and attended to unmasked."""
    mask = torch.ones(1, POS_LEN, dtype=torch.long)
    mask[:, -POS_LEN // 3:] = 0
    _check_against_reference(env, txt_mask=mask)


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
    pos, neg = _conds(env["config"])
    lengths, handles = {}, []
    hooked = [("refiner", 0, dm.txt_in.input_embedder)]
    hooked += [("double", i, b.txt_attn.qkv) for i, b in enumerate(dm.double_blocks)]
    hooked += [("single", i, b.linear1) for i, b in enumerate(dm.single_blocks)]
    for name, i, module in hooked:
        handles.append(module.register_forward_hook(
            lambda mod, inp, out, key=(name, i): lengths.setdefault(key, []).append(inp[0].shape[1])))
    passes = []
    handles.append(dm.register_forward_pre_hook(lambda *a: passes.append(1)))
    try:
        _sample(env["apply"](mp, alpha=0.5), env["config"], pos, neg, cfg=1.0, steps=2)
    finally:
        for h in handles:
            h.remove()
    assert len(passes) == 2                                  # cfg 1: one pass per step, no negative batch
    assert len(lengths) == 1 + len(dm.double_blocks) + len(dm.single_blocks)
    for (name, i), seen in lengths.items():
        if name == "single":                                 # joint [video; text] once, negative once
            assert sorted(seen) == sorted([POS_LEN + VIDEO_TOKENS, NEG_LEN] * 2), (name, i, seen)
        else:                                                # text stream: positive once, negative once
            assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (name, i, seen)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_alpha_zero_is_bit_identical(env, cfg):
    mp = env["model"]()
    pos, neg = _conds(env["config"])
    base = _sample(mp, env["config"], pos, neg, cfg=cfg, steps=2)
    got = _sample(env["apply"](mp, alpha=0.0), env["config"], pos, neg, cfg=cfg, steps=2)
    assert torch.equal(base, got)
    assert not torch.equal(base, _sample(env["apply"](mp, alpha=0.5), env["config"], pos, neg, cfg=cfg, steps=2))


def test_negative_stream_equals_a_real_forward_on_the_negative(env):
    """Capture what enters double blocks 0 and 1's text norm: NASA's negative stream (token refiner output, then
    after block 0) vs the text stream of an unpatched forward whose prompt is the negative (same video, timestep,
    guidance and pooled vector)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env["config"])
    x, t, context, y, guidance, negative = inputs
    seen = {0: [], 1: []}
    hs = [dm.double_blocks[i].txt_norm1.register_forward_hook(lambda mod, inp, out, i=i: seen[i].append(inp[0].clone()))
          for i in (0, 1)]
    try:
        _direct(env, mp, inputs, 1.0)
        stream = {i: [s for s in seen[i] if s.shape[1] == NEG_LEN] for i in seen}
        seen[0].clear()
        seen[1].clear()
        with torch.no_grad():
            dm(x, t, negative, y=y, guidance=guidance, transformer_options={})
        real = {i: [s for s in seen[i] if s.shape[1] == NEG_LEN] for i in seen}
    finally:
        for h in hs:
            h.remove()
    for i in (0, 1):
        assert len(stream[i]) == 1 and len(real[i]) == 1
        torch.testing.assert_close(stream[i][0], real[i][0], rtol=1e-5, atol=1e-5)


def test_only_video_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of txt_attn.proj)
    is bit-identical with and without NASA; the video tokens' (input of img_attn.proj) is not."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env["config"])
    seen = {}
    blk = dm.double_blocks[0]
    hs = [blk.txt_attn.proj.register_forward_hook(lambda m, i, o: seen.setdefault("txt", []).append(i[0].clone())),
          blk.img_attn.proj.register_forward_hook(lambda m, i, o: seen.setdefault("img", []).append(i[0].clone()))]
    try:
        _direct(env, mp, inputs, 0.0)
        _direct(env, mp, inputs, 1.0)
    finally:
        for h in hs:
            h.remove()
    txt = [s for s in seen["txt"] if s.shape[1] == POS_LEN]
    assert len(txt) == 2 and torch.equal(txt[0], txt[1])
    assert len(seen["img"]) == 2 and not torch.equal(seen["img"][0], seen["img"][1])


def test_cfg_above_one_leaves_uncond_rows_untouched(env):
    mp = env["model"]()
    pos, neg = _conds(env["config"])
    plain, steered = [], []
    _sample(mp, env["config"], pos, neg, cfg=3.0, capture=plain)
    _sample(env["apply"](mp, alpha=1.0), env["config"], pos, neg, cfg=3.0, capture=steered)
    assert torch.equal(plain[0][1], steered[0][1])            # uncond prediction
    assert not torch.equal(plain[0][0], steered[0][0])        # cond prediction steered


def test_batch_rows_at_different_timesteps_each_refine_the_negative_at_their_own(env):
    """Batch 2 with timesteps 700 and 300: each row equals its batch-1 forward, so the negative is embedded by the
    token refiner (which is timestep-modulated) and modulated per row."""
    mp = env["model"]()
    x, t, context, y, guidance, negative = _inputs(env["config"], batch=2)
    t = torch.tensor([700.0, 300.0])
    both = _direct(env, mp, (x, t, context, y, guidance, negative), 1.0)
    for i in range(2):
        r = slice(i, i + 1)
        one = _direct(env, mp, (x[r], t[r], context[r], y[r], guidance[r], negative), 1.0)
        torch.testing.assert_close(both[r], one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_output(env, dtype):
    mp = env["model"](dtype).clone()
    if dtype == torch.bfloat16:
        mp.set_model_compute_dtype(torch.bfloat16)          # on CPU ComfyUI would otherwise compute in fp32
    pos, neg = _conds(env["config"])
    out = _sample(env["apply"](mp, alpha=0.5), env["config"], pos, neg, steps=2)
    assert torch.isfinite(out).all()


def test_wrong_width_negative_names_node_family_and_fix(env):
    mp = env["model"]()
    _, clip_like = _conds(env["config"], width=env["config"]["context_in_dim"] + 16)
    with pytest.raises(ValueError, match=r"Apply NASA Attention: 'negative' is \d+ wide but this HunyuanVideo .* "
                                         r"expects \d+\. .* encode it with the same text encoder as the positive prompt"):
        env["apply"](mp, negative=clip_like)


def test_second_nasa_node_replaces_the_first(env):
    mp = env["model"]()
    inputs = _inputs(env["config"])
    once = _direct(env, mp, inputs, 1.0)
    twice = _direct(env, env["apply"](mp, negative=[[inputs[-1], {}]], alpha=0.3), inputs, 1.0)
    assert torch.equal(once, twice)


def _not_supported(env, comfyui, mp, family):
    """``mp`` is not claimed: the node refuses it with the unsupported-family error."""
    adapters = comfyui.mod("adapters")
    assert not env["hunyuan"].matches(mp)
    with pytest.raises(adapters.UnsupportedModelError, match=f"model family '{family}' is not supported"):
        adapters.find_adapter(mp)
    with pytest.raises(adapters.UnsupportedModelError, match=f"model family '{family}' is not supported"):
        env["apply"](mp)


def test_hunyuan_image_21_is_not_claimed(env, comfyui):
    """HunyuanImage 2.1 shares the diffusion-model class but not the text path (ByT5 glyph tokens, 2D patches):
    this adapter does not claim it, so the node reports the family as unsupported instead of steering wrongly."""
    config = dict(env["config"], vec_in_dim=None, patch_size=[1, 1], axes_dim=[8, 8], guidance_embed=False)
    assert env["hunyuan"].matches(env["model"]())
    _not_supported(env, comfyui, env["rm"].build_diffusion_model("HunyuanImage21", config), "HunyuanImage21")


def test_hunyuan_video_15_is_not_claimed(env, comfyui):
    """HunyuanVideo 1.5 runs the same diffusion-model class (ComfyUI's HunyuanVideo15 model subclasses its
    HunyuanVideo model) with CLIP-vision tokens and a condition-type embedding in its text sequence: not claimed.
    Neither is a model of ComfyUI's plain HunyuanVideo class built with either of those: the match reads the
    model's structure, not only its class."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "HunyuanVideo15"):
        support.skip_missing_family("HunyuanVideo 1.5", "HunyuanVideo15")
    v15 = dict(env["config"], vision_in_dim=24, use_cond_type_embedding=True, meanflow_sum=True, patch_size=[1, 1, 1])
    _not_supported(env, comfyui, env["rm"].build_diffusion_model("HunyuanVideo15", v15), "HunyuanVideo15")
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


def test_one_step_run_steers_every_block(env):
    """Canary: a 1-step NASA run steers every double and single block (a ComfyUI change that bypasses NASA in some
    blocks shows here, even where the output still moves)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env["config"])
    m = env["apply"](mp, alpha=0.5)
    _sample(m, env["config"], pos, neg, steps=1)
    assert support.steered_layers(m) == support.all_layers(env["hunyuan"].FAMILY, m)
    assert len(support.steered_layers(m)) == len(dm.double_blocks) + len(dm.single_blocks) == 4


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
    pos, neg = _conds(env["config"])
    monkeypatch.setattr(binding, "signature_of", shifted)
    with pytest.raises(RuntimeError, match="NASA steered no layer of this HunyuanVideo .* the negative prompt was "
                                           "NOT honoured"):
        _sample(env["apply"](mp, alpha=1.0), env["config"], pos, neg, steps=1)
    monkeypatch.undo()
    m = env["apply"](mp, alpha=1.0)
    _sample(m, env["config"], pos, neg, steps=1)
    assert len(support.steered_layers(m)) == 4
