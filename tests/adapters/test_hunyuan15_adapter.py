"""NASA on HunyuanVideo 1.5 and HunyuanImage 2.1: ComfyUI's HunyuanVideo class with its newer text paths (random
weights, tiny configs: family_cases.py "hunyuan_video15" and "hunyuan_image21").

Held against code written here, independent of the pack:
* a float64-attention forward with the negative stream and NASA written out (``_reference``): the text side built
  as the published models build it ([vision; glyph; text] with condition-type vectors 2, 1, 0 for HunyuanVideo 1.5,
  [text; glyph] for HunyuanImage 2.1, all at RoPE position zero), MeanFlow's second timestep in the modulation
  vector, the negative's main text through the token refiner (+ the text's type-0 vector), its stream attending to
  its own tokens and the image, the image's query rows steered;
* the negative's condition-type vector is the main text's (a reference giving it none, or the glyph type, is off);
* the stream entering double blocks 0 and 1 equals the text stream of a plain forward on the negative's text alone;
* the positive's whole text side (text, glyph and vision rows) is untouched, its image rows are steered;
* the glyph and vision mappers never see the negative, and a negative carrying glyph / vision tokens steers exactly
  as one without them (the documented rule: the negative is its main text);
* the super-resolution and refiner variants are claimed and fully steered; neighbours and variants NASA does not
  understand are refused.

The generic checks (alpha 0, cfg > 1 uncond rows, batch rows, widths, a second node, the canary) run in
test_contract.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

NAMES = ("hunyuan_video15", "hunyuan_image21")
GLYPHS, VISION = 6, 5            # glyph (ByT5) and vision tokens of the positive
SIGMAS = (1.0, 0.7, 0.4, 0.0)    # the sampler's schedule; this forward at 0.7: MeanFlow's second time is 0.4


@pytest.fixture(scope="module", params=NAMES)
def env(comfyui, request):
    cases.skip_if_missing(request.param)
    module = cases.CASES[request.param].adapter
    return dict(cases.family_env(comfyui, request.param, family=module, hunyuan="adapters.hunyuan_video",
                                 adapters="adapters", core="nasa_core"),
                name=request.param, video=request.param == "hunyuan_video15")


def _lengths(env):
    case = cases.CASES[env["name"]]
    return case.pos_len, case.neg_len


def _inputs(env, seed=3, batch=1):
    """x (with I2V's concatenated channels for HunyuanVideo 1.5), timestep, text, glyph tokens, vision tokens
    (HunyuanVideo 1.5), guidance (HunyuanImage 2.1), the negative's text."""
    config, (pos, neg) = env["config"], _lengths(env)
    g = torch.Generator().manual_seed(seed)
    spatial = cases.CASES[env["name"]].latent[2:]
    x = torch.randn(batch, config["in_channels"], *spatial, generator=g)
    context = torch.randn(batch, pos, config["context_in_dim"], generator=g)
    byt5 = torch.randn(batch, GLYPHS, 1472, generator=g)
    clip = torch.randn(batch, VISION, config["vision_in_dim"], generator=g) if env["video"] else None
    guidance = torch.full((batch,), 4.0) if config["guidance_embed"] else None
    negative = torch.randn(1, neg, config["context_in_dim"], generator=g)
    return dict(x=x, t=torch.full((batch,), 700.0), context=context, byt5=byt5, clip=clip, guidance=guidance,
                negative=negative)


def _schedule(options):
    """What the sampler puts into transformer_options for MeanFlow's second timestep (sigmas, sample_sigmas)."""
    return dict(options, sigmas=torch.tensor([SIGMAS[1]]), sample_sigmas=torch.tensor(SIGMAS))


def _direct(env, mp, inputs, alpha, method=None):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (rows all positive);
    ``method``: nasa_core.Nag / Vsf as apply_nasa takes it."""
    negative = [[inputs["negative"], {}]]
    if method is None:
        m = env["apply"](mp, negative=negative, alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=negative, alpha=alpha, method=method)
    options = _schedule(support.nasa_options(m, inputs["negative"], alpha, env["nasa_run"], env["family"].FAMILY,
                                             method=method))
    with torch.no_grad():
        return m.model.diffusion_model(inputs["x"], inputs["t"], inputs["context"], txt_byt5=inputs["byt5"],
                                       clip_fea=inputs["clip"], guidance=inputs["guidance"],
                                       transformer_options=options)


def _plain(dm, inputs, **changes):
    """An unpatched forward (``changes``: other text, no glyph / vision tokens)."""
    i = dict(inputs, **changes)
    with torch.no_grad():
        return dm(i["x"], i["t"], i["context"], txt_byt5=i["byt5"], clip_fea=i["clip"], guidance=i["guidance"],
                  transformer_options=_schedule({}))


# ----------------------------------------------------------------------------- independent reference

def _rope(x, pe):
    x_ = x.double().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0].double() * x_[..., 0] + pe[..., 1].double() * x_[..., 1]).reshape(x.shape)


def _attn(q, k, v):
    """(B, H, L, D) float64 -> (B, L, H*D): softmax written out."""
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    o = torch.softmax(s, dim=-1) @ v.double()
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _heads(t, heads):
    return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def _mod(x, m):
    return x * (1 + m.scale) + m.shift


def _positions(x):
    """Patch positions of a (B, C, T, H, W) or (B, C, H, W) latent cut into 1x1(x1) patches, row-major."""
    axes = [torch.arange(n) for n in x.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, len(axes)).float()
    return grid.expand(x.shape[0], -1, -1)


def _reference(dm, inputs, alpha, neg_type=0, method=None):
    """The model's forward with NASA (``method``: NAG or VSF instead, written as support.steered_written_out takes
    it), written from the paper's formula and the published structure, with the model's weights; attention in
    float64. ``neg_type``: the condition-type vector added to the negative's text (None: none), where the model
    has the embedding."""
    from comfy.ldm.flux.layers import timestep_embedding
    from einops import rearrange
    x, t, context, negative = inputs["x"], inputs["t"], inputs["context"], inputs["negative"]
    b, p = x.shape[0], dm.params
    img, ids = dm.img_in(x), _positions(x)
    N = img.shape[1]

    vec = dm.time_in(timestep_embedding(t, 256, time_factor=1.0))
    if dm.time_r_in is not None:                  # MeanFlow: the next sigma of the schedule, summed or averaged
        r = dm.time_r_in(timestep_embedding(torch.tensor([SIGMAS[2]]), 256, time_factor=1000.0))
        vec = vec + r if getattr(p, "meanflow_sum", False) else (vec + r) / 2
    if inputs["guidance"] is not None:
        vec = vec + dm.guidance_in(timestep_embedding(inputs["guidance"], 256))
    vec = vec[:, None]

    cond_type = getattr(dm, "cond_type_embedding", None)

    def typed(tokens, kind):
        return tokens if cond_type is None or kind is None else tokens + cond_type.weight[kind]
    txt = typed(dm.txt_in(context, t, None), 0)
    glyph = typed(dm.byt5_in(inputs["byt5"]), 1)
    txt = torch.cat((glyph, txt) if cond_type is not None else (txt, glyph), 1)   # glyphs first in 1.5
    if inputs["clip"] is not None:
        txt = torch.cat((typed(dm.vision_in(inputs["clip"]), 2), txt), 1)
    neg = typed(dm.txt_in(negative, t, None), neg_type)
    T = txt.shape[1]
    pe = dm.pe_embedder(torch.cat((ids, torch.zeros(b, T, ids.shape[-1])), 1))
    pe_neg = dm.pe_embedder(torch.zeros(b, neg.shape[1], ids.shape[-1]))
    H = dm.num_heads
    for blk in dm.double_blocks:
        im1, im2 = blk.img_mod(vec)
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
        a = _attn(q, k, v)
        a[:, :N] = support.steered_written_out(method, a[:, :N], q[:, :, :N], k, v, nk, nv, alpha)
        na = _attn(nq, torch.cat((nk, k[:, :, :N]), 2), torch.cat((nv.double(), v[:, :, :N]), 2))
        img = img + im1.gate * blk.img_attn.proj(a[:, :N].float())
        img = img + im2.gate * blk.img_mlp(_mod(blk.img_norm2(img), im2))
        txt = txt + tm1.gate * blk.txt_attn.proj(a[:, N:].float())
        txt = txt + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(txt), tm2))
        neg = neg + tm1.gate * blk.txt_attn.proj(na.float())
        neg = neg + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(neg), tm2))
    hs = torch.cat((img, txt), 1)
    for blk in dm.single_blocks:
        m, _ = blk.modulation(vec)

        def lin1(h_):
            qkv_, mlp = torch.split(blk.linear1(_mod(blk.pre_norm(h_), m)), [3 * blk.hidden_size, blk.mlp_hidden_dim], -1)
            q, k, v = _heads(qkv_, H)
            q, k = blk.norm(q, k, v)
            return q, k, v, mlp
        q, k, v, mlp = lin1(hs)
        nq, nk, nv, nmlp = lin1(neg)
        q, k, nq, nk = _rope(q, pe), _rope(k, pe), _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v)
        a[:, :N] = support.steered_written_out(method, a[:, :N], q[:, :, :N], k, v, nk, nv, alpha)
        na = _attn(nq, torch.cat((nk, k[:, :, :N]), 2), torch.cat((nv.double(), v[:, :, :N].double()), 2))
        hs = hs + m.gate * blk.linear2(torch.cat((a.float(), blk.mlp_act(mlp)), 2))
        neg = neg + m.gate * blk.linear2(torch.cat((na.float(), blk.mlp_act(nmlp)), 2))
    out = dm.final_layer(hs[:, :N], vec)           # 1x1(x1) patches: one token per latent position
    if x.ndim == 5:
        return rearrange(out, "b (t h w) c -> b c t h w", t=x.shape[2], h=x.shape[3], w=x.shape[4])
    return rearrange(out, "b (h w) c -> b c h w", h=x.shape[2], w=x.shape[3])


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    mp = env["model"]()
    inputs = _inputs(env)
    got = _direct(env, mp, inputs, 1.0)
    with torch.no_grad():
        want = _reference(mp.model.diffusion_model, inputs, 1.0)
        base = _reference(mp.model.diffusion_model, inputs, 0.0)
    support.check_close(got, want, base)
    assert torch.allclose(_plain(mp.model.diffusion_model, inputs), base, atol=1e-4, rtol=1e-4)   # the reference


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's image rows (double and single blocks; VSF's softmax over the block's
    image keys, its whole text side - text, glyph and vision tokens - and the negative stream's) equal the methods
    written out on the reference; at zero strength (NAG scale 1, VSF scale 0) the output is the unpatched
    model's, bit for bit."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env)
    obj, off = support.method_objects(env["core"], method)
    got = _direct(env, mp, inputs, obj.strength, method=obj)
    with torch.no_grad():
        want = _reference(dm, inputs, obj.strength, method=method)
        base = _reference(dm, inputs, 0.0)
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, inputs, off.strength, method=off), _plain(dm, inputs))


def test_the_negative_text_takes_the_text_condition_type(env):
    """HunyuanVideo 1.5 adds a condition-type vector to each kind of text token; the negative's tokens take the
    main text's (type 0), as a forward on the negative's text would give them: references adding none, or the
    glyph type's, are measurably off NASA's result. HunyuanImage 2.1 has no such embedding."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    if not env["video"]:
        assert getattr(dm, "cond_type_embedding", None) is None
        return
    inputs = _inputs(env)
    got = _direct(env, mp, inputs, 1.0)
    with torch.no_grad():
        right = _reference(dm, inputs, 1.0)
        for other in (None, 1):
            wrong = _reference(dm, inputs, 1.0, neg_type=other)
            assert (got - wrong).abs().max() > 100 * (got - right).abs().max(), other


def test_negative_stream_equals_a_real_forward_on_the_negative_text(env):
    """What enters double blocks 0 and 1's text norm: NASA's negative stream vs the text stream of an unpatched
    forward whose prompt is the negative's text alone (no glyph, no vision tokens; same latent and timestep)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    inputs = _inputs(env)
    norms = {f"double{i}": dm.double_blocks[i].txt_norm1 for i in (0, 1)}
    with support.Inputs(**norms) as seen:
        _direct(env, mp, inputs, 1.0)
    with support.Inputs(**norms) as real:
        _plain(dm, inputs, context=inputs["negative"], byt5=None, clip=None)
    for name in norms:
        support.same_stream(seen[name], real[name], _lengths(env)[1])


def test_only_image_queries_are_steered(env):
    """Double block 0: the positive's whole text side - main text, glyph and vision tokens - keeps its attention
    output bit-identical under NASA (input of txt_attn.proj); the image's changes (input of img_attn.proj)."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    inputs = _inputs(env)
    text_side = _lengths(env)[0] + GLYPHS + (VISION if env["video"] else 0)
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, inputs, 0.0)
        _direct(env, mp, inputs, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == text_side], seen["img"])


def test_glyph_and_vision_mappers_never_see_the_negative(env):
    """Sampling at cfg 1 (one pass per step, the negative only as NASA's stream): the token refiner embeds the
    negative once per forward, every block projects it once; the glyph and vision mappers see the positive's tokens
    only."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos_len, neg_len = _lengths(env)
    pos, neg = cases.conds(env["rm"], env["name"])
    glyphs = pos[0][1]["conditioning_byt5small"].shape[1]
    modules = {("refiner", 0): dm.txt_in.input_embedder, ("glyph", 0): dm.byt5_in.fc1, **support.text_projections(dm)}
    if env["video"]:
        modules[("vision", 0)] = dm.vision_in.proj[1]
    with support.Lengths(modules) as lengths, support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), env["name"], pos, neg, 1.0, 2)
    assert passes.n == 2
    text_side = pos_len + glyphs + (VISION if env["video"] else 0)
    for (name, i), seen in lengths.calls.items():
        want = {"refiner": [pos_len, neg_len], "glyph": [glyphs], "vision": [VISION],
                "double": [neg_len, text_side], "single": [neg_len, text_side + cases.latent(env["name"])[0, 0].numel()]}
        assert sorted(seen) == sorted(want[name] * 2), (name, i, seen)


def test_the_negatives_glyph_and_vision_tokens_are_not_used(env):
    """The negative is its main text: a negative conditioning that also carries glyph tokens (and vision tokens)
    steers bit-identically to the same text without them."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], env["name"])
    g = torch.Generator().manual_seed(11)
    extras = {"conditioning_byt5small": torch.randn(1, 9, 1472, generator=g)}
    if env["video"]:
        extras["clip_vision_output"] = pos[0][1]["clip_vision_output"]
    text_only = [[neg[0][0], {}]]
    with_extras = [[neg[0][0], extras]]
    a = cases.sample(env["apply"](mp, negative=text_only, alpha=1.0), env["name"], pos, neg)
    b = cases.sample(env["apply"](mp, negative=with_extras, alpha=1.0), env["name"], pos, neg)
    plain = cases.sample(mp, env["name"], pos, neg)
    assert torch.equal(a, b) and not torch.equal(a, plain)


# ----------------------------------------------------------------------------- variants and refusals

def test_super_resolution_and_refiner_variants_are_claimed_and_fully_steered(env, comfyui):
    """HunyuanVideo 1.5's super-resolution model (more concatenated channels, MeanFlow on) and HunyuanImage 2.1's
    refiner (3D patches of one frame, the base image concatenated, no glyph mapper, MeanFlow off): the same text
    path, claimed by the same family, every block steered in a one-step run (their contract cases run the rest)."""
    name = "hunyuan_video15_sr" if env["video"] else "hunyuan_image21_refiner"
    cases.skip_if_missing(name)
    mp = cases.model(env["rm"], name)
    assert comfyui.mod("adapters").find_adapter(mp) is env["family"].FAMILY
    pos, neg = cases.conds(env["rm"], name)
    m = env["apply"](mp, alpha=1.0)
    steered = cases.sample(m, name, pos, neg)
    assert support.steered_layers(m) == cases.CASES[name].layers(mp.model.diffusion_model)
    assert not torch.equal(steered, cases.sample(mp, name, pos, neg))


def _refused(comfyui, mp, config_class):
    adapters = comfyui.mod("adapters")
    with pytest.raises(adapters.UnsupportedModelError, match=f"model family '{config_class}' is not supported"):
        adapters.find_adapter(mp)


def test_neighbours_claim_each_its_own(env, comfyui):
    """HunyuanVideo 1.0's adapter does not claim these models, and these families do not claim HunyuanVideo 1.0
    (a pooled vector, its own classes) nor each other's models."""
    adapters = comfyui.mod("adapters")
    mp = env["model"]()
    assert not env["hunyuan"].matches(mp) and adapters.find_adapter(mp) is env["family"].FAMILY
    hv1 = cases.model(env["rm"], "hunyuan_video")
    assert not env["family"].matches(hv1) and adapters.find_adapter(hv1) is env["hunyuan"].FAMILY
    other = NAMES[1] if env["video"] else NAMES[0]
    import comfy.supported_models
    if hasattr(comfy.supported_models, cases.CASES[other].config_class):
        assert not env["family"].matches(cases.model(env["rm"], other))


def test_variants_nasa_does_not_understand_are_refused(env, comfyui):
    """Models of these classes with text parts the family's negative embedding does not reproduce: HunyuanVideo
    1.5 without its condition-type embedding, or with a pooled vector; HunyuanImage 2.1 with a condition-type
    embedding or vision tokens (where ComfyUI has them), or with a pooled vector."""
    import dataclasses
    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams
    config_class = cases.CASES[env["name"]].config_class
    has_1_5 = "use_cond_type_embedding" in {f.name for f in dataclasses.fields(HunyuanVideoParams)}
    if env["video"]:
        changes = [dict(use_cond_type_embedding=False), dict(vec_in_dim=32)]
    else:
        changes = [dict(vec_in_dim=32)] + ([dict(use_cond_type_embedding=True), dict(vision_in_dim=24)] if has_1_5
                                           else [])
    for change in changes:
        _refused(comfyui, env["rm"].build_diffusion_model(config_class, {**env["config"], **change}), config_class)
