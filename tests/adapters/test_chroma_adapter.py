"""NASA-I on ComfyUI's own Chroma and Chroma Radiance classes (random weights, tiny configs).

Held against code written here, independent of the pack:
* a float64-attention Chroma forward with the negative stream and NASA written out (``_reference``),
  its per-block modulation sliced from the distilled guidance layer's output by the published layout,
* hooks counting each block's text-stream projection of the negative (one per block per forward),
* the negative stream after double block 0 equals the text stream of a plain forward on the negative,
* text-query rows of the first block are untouched; cfg 1 runs one pass per step; a positive attention mask
  stays on the positive; the Chroma adapter, not FLUX's, claims both models.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batch rows at different timesteps, widths,
a second node, the canary) run on both models in test_contract.py.

The random-weight builder leaves RMSNorm scales at 0, which makes every query and key of these models
zero (uniform attention) and Chroma Radiance's output zero; the models here get scales drawn around 1
so that attention patterns, and so the choice of projections and keys, show in the outputs (family_cases.py).
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = cases.CASES["chroma"].pos_len, cases.CASES["chroma"].neg_len   # distinct: hooks tell them apart
FAMILIES = ("chroma", "chroma_radiance")


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    nasa_run = comfyui.mod("adapters.run")
    chroma = comfyui.mod("adapters.chroma")

    def model(family="chroma", dtype=torch.float32):
        return cases.model(rm, family, dtype)

    apply = support.apply_nasa

    return dict(rm=rm, nasa_run=nasa_run, chroma=chroma, model=model, apply=apply,
                apply_nasa=comfyui.mod("adapters").apply_nasa, core=comfyui.mod("nasa_core"),
                config=lambda family="chroma": rm.DIT_FAMILIES[family][1])


def _direct(env, mp, x, t, context, guidance, negative, alpha, attention_mask=None, method=None):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all positive);
    ``method``: nasa_core.Nag / Vsf as apply_nasa takes it (None: NASA, through the node)."""
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["apply_nasa"](mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["chroma"].FAMILY, method=method)
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, guidance, transformer_options=options,
                                       attention_mask=attention_mask)


# ----------------------------------------------------------------------------- independent reference

def _rope(x, pe):
    x_ = x.double().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0].double() * x_[..., 0] + pe[..., 1].double() * x_[..., 1]).reshape(x.shape)


def _attn(q, k, v, mask=None):
    """(B, H, L, D) float64 -> (B, L, H*D): softmax written out; ``mask`` an additive (B, Lq, Lk) bias."""
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + mask.double()[:, None]
    o = torch.softmax(s, dim=-1) @ v.double()
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _heads(t, heads):
    return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def _mod(x, m):
    shift, scale, _ = m
    return x * (1 + scale) + shift


def _modulations(dm, t, guidance, batch):
    """Chroma's modulation table: the distilled guidance layer on [timestep(16), guidance(16), index(32)] for 344
    indices. Layout: single blocks 3 each, then double-image 6 each, then double-text 6 each, final (shift, scale)."""
    from comfy.ldm.flux.layers import timestep_embedding
    n = 344
    tg = torch.cat((timestep_embedding(t, 16), timestep_embedding(guidance, 16)), 1)[:, None].expand(batch, n, 32)
    index = timestep_embedding(torch.arange(n), 32)[None].expand(batch, n, 32)
    table = dm.distilled_guidance_layer(torch.cat((tg, index), -1))
    S, D = len(dm.single_blocks), len(dm.double_blocks)

    def at(i):
        return table[:, i:i + 1], table[:, i + 1:i + 2], table[:, i + 2:i + 3]   # shift, scale, gate
    single = [at(3 * i) for i in range(S)]
    double = [((at(3 * S + 6 * i), at(3 * S + 6 * i + 3)), (at(3 * S + 6 * D + 6 * i), at(3 * S + 6 * D + 6 * i + 3)))
              for i in range(D)]
    return single, double, (table[:, -2:-1], table[:, -1:])


def _reference(dm, x, t, context, guidance, negative, alpha, mask=None, method=None):
    """Chroma / Chroma Radiance forward with NASA (``method``: NAG or VSF instead, written as
    support.steered_written_out takes it), written from the paper's formula and Chroma's published block
    structure, using the model's weights; attention in float64. ``mask``: the positive's additive attention bias."""
    from comfy.ldm.chroma_radiance.model import ChromaRadiance
    from einops import rearrange
    b, p = x.shape[0], dm.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    radiance = isinstance(dm, ChromaRadiance)
    img = dm.img_in(x if radiance else rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=p, pw=p))
    ids = torch.zeros(h, w, 3)
    ids[..., 1], ids[..., 2] = torch.arange(h)[:, None].float(), torch.arange(w)[None].float()
    T = context.shape[1]
    pe = dm.pe_embedder(torch.cat((torch.zeros(b, T, 3), ids.reshape(1, h * w, 3).expand(b, -1, -1)), 1))
    pe_neg = dm.pe_embedder(torch.zeros(b, negative.shape[1], 3))
    single_mods, double_mods, final_mod = _modulations(dm, t, guidance, b)
    rows_mask = None if mask is None else mask[:, None, T:]      # the image rows' logit bias, (B, 1, N, T + N)
    txt, neg = dm.txt_in(context), dm.txt_in(negative).expand(b, -1, -1)
    H = dm.num_heads
    for blk, ((im1, im2), (tm1, tm2)) in zip(dm.double_blocks, double_mods):
        def qkv(attn, norm, h_, m):
            q, k, v = _heads(attn.qkv(_mod(norm(h_), m)), H)
            q, k = attn.norm(q, k, v)
            return q, k, v
        iq, ik, iv = qkv(blk.img_attn, blk.img_norm1, img, im1)
        tq, tk, tv = qkv(blk.txt_attn, blk.txt_norm1, txt, tm1)
        nq, nk, nv = qkv(blk.txt_attn, blk.txt_norm1, neg, tm1)
        q, k = _rope(torch.cat((tq, iq), 2), pe), _rope(torch.cat((tk, ik), 2), pe)
        v = torch.cat((tv, iv), 2).double()
        nq, nk = _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v, mask)
        a[:, T:] = support.steered_written_out(method, a[:, T:], q[:, :, T:], k, v, nk, nv, alpha, rows_mask)
        na = _attn(nq, torch.cat((nk, k[:, :, T:]), 2), torch.cat((nv.double(), v[:, :, T:]), 2))
        ta, ia = a[:, :T].float(), a[:, T:].float()
        img = img + im1[2] * blk.img_attn.proj(ia)
        img = img + im2[2] * blk.img_mlp(_mod(blk.img_norm2(img), im2))
        txt = txt + tm1[2] * blk.txt_attn.proj(ta)
        txt = txt + tm2[2] * blk.txt_mlp(_mod(blk.txt_norm2(txt), tm2))
        neg = neg + tm1[2] * blk.txt_attn.proj(na.float())
        neg = neg + tm2[2] * blk.txt_mlp(_mod(blk.txt_norm2(neg), tm2))
    hs = torch.cat((txt, img), 1)
    for blk, m in zip(dm.single_blocks, single_mods):
        def lin1(h_):
            qkv_, mlp = torch.split(blk.linear1(_mod(blk.pre_norm(h_), m)), [3 * blk.hidden_size, blk.mlp_hidden_dim], -1)
            q, k, v = _heads(qkv_, H)
            q, k = blk.norm(q, k, v)
            return q, k, v, mlp
        q, k, v, mlp = lin1(hs)
        nq, nk, nv, nmlp = lin1(neg)
        q, k, nq, nk = _rope(q, pe), _rope(k, pe), _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v, mask)
        a[:, T:] = support.steered_written_out(method, a[:, T:], q[:, :, T:], k, v, nk, nv, alpha, rows_mask)
        na = _attn(nq, torch.cat((nk, k[:, :, T:]), 2), torch.cat((nv.double(), v[:, :, T:].double()), 2))
        hs = hs + m[2] * blk.linear2(torch.cat((a.float(), blk.mlp_act(mlp)), 2))
        neg = neg + m[2] * blk.linear2(torch.cat((na.float(), blk.mlp_act(nmlp)), 2))
    img = hs[:, T:]
    if radiance:
        return dm.forward_nerf(x, img, dm.params)
    out = dm.final_layer(img, vec=final_mod)
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=p, pw=p)


def _inputs(config, seed=3, batch=1):
    """Chroma: 16 latent channels, 8x8 (16 tokens); Radiance: RGB pixels, 4 x 4 patches of 4x4 (16 tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cases.latent(config["image_model"], batch).shape, generator=g)
    context = torch.randn(batch, POS_LEN, config["context_in_dim"], generator=g)
    negative = torch.randn(1, NEG_LEN, config["context_in_dim"], generator=g)
    return x, torch.full((batch,), 0.7), context, torch.zeros(batch), negative


def _check_against_reference(env, family, alpha=1.0, mask=None, tol=1e-3, method=None, written=None):
    """``method``: the pack's nasa_core.Nag / Vsf (at strength ``alpha``), ``written``: the same written out."""
    mp = env["model"](family)
    x, t, context, guidance, negative = _inputs(env["config"](family))
    dm = mp.model.diffusion_model
    got = _direct(env, mp, x, t, context, guidance, negative, alpha, attention_mask=mask, method=method)
    with torch.no_grad():
        want = _reference(dm, x, t, context, guidance, negative, alpha, mask, method=written)
        base = _reference(dm, x, t, context, guidance, negative, 0.0, mask)
    support.check_close(got, want, base, tol)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("family", FAMILIES)
def test_matches_independent_reference(env, family):
    _check_against_reference(env, family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, family, method):
    """NAG and VSF on the joint attention's image rows (double and single blocks; VSF's softmax over the block's
    text and image keys and the negative stream's) equal the methods written out on the reference; at zero
    strength (NAG scale 1, VSF scale 0) the output is the unpatched model's, bit for bit."""
    obj, off = support.method_objects(env["core"], method)
    _check_against_reference(env, family, alpha=obj.strength, method=obj, written=method)
    mp = env["model"](family)
    x, t, context, guidance, negative = _inputs(env["config"](family))
    with torch.no_grad():
        plain = mp.model.diffusion_model(x, t, context, guidance, transformer_options={})
    assert torch.equal(_direct(env, mp, x, t, context, guidance, negative, off.strength, method=off), plain)


def test_positive_attention_mask_stays_on_the_positive(env):
    """A Redux/regional-style additive bias on the positive's [text; image] attention (Chroma's attn_mask) biases the
    positive joint attention only: the negative terms and the negative stream's own attention are unmasked."""
    n = POS_LEN + 16
    mask = torch.zeros(1, n, n)
    mask[:, :, : POS_LEN // 2] = -3.0            # damp the first half of the prompt for every query
    _check_against_reference(env, "chroma", mask=mask)


def test_only_chroma_claims_chroma_models(env, comfyui):
    """Chroma and Chroma Radiance are served by the Chroma adapter; the FLUX adapter (exact Flux class) does not
    match them although Chroma's blocks come from FLUX's."""
    adapters = comfyui.mod("adapters")
    flux = comfyui.mod("adapters.flux")
    for family in FAMILIES:
        mp = env["model"](family)
        assert adapters.find_adapter(mp) is env["chroma"].FAMILY
        assert not flux.matches(mp)
        assert env["chroma"].context_dim(mp) == env["config"](family)["context_in_dim"]
    assert not env["chroma"].matches(env["rm"].build_dit_model("flux"))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_projects_the_negative_once_per_forward(env, family):
    mp = env["model"](family)
    dm = mp.model.diffusion_model
    pos, neg = cases.conds(env["rm"], family)
    with support.Lengths(support.text_projections(dm)) as lengths, support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), family, pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    for (name, i), seen in lengths.calls.items():
        if name == "double":                                 # text stream: positive once, negative once
            assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (name, i, seen)
        else:                                                # joint [text; image] once, negative once
            assert sorted(seen) == [POS_LEN + 16, POS_LEN + 16, NEG_LEN, NEG_LEN], (name, i, seen)


def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env):
    """Capture what enters double block 1's text norm: NASA's negative stream vs the text stream of an unpatched
    forward whose prompt is the negative (same image, timestep and guidance, so the same modulation)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, guidance, negative = _inputs(env["config"]())
    with support.Inputs(nasa=dm.double_blocks[1].txt_norm1) as seen:
        _direct(env, mp, x, t, context, guidance, negative, 1.0)
    with support.Inputs(plain=dm.double_blocks[1].txt_norm1) as real, torch.no_grad():
        dm(x, t, negative, guidance, transformer_options={})
    support.same_stream(seen["nasa"], real["plain"], NEG_LEN)


def test_only_image_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of txt_attn.proj) is bit-identical with and
    without NASA; the image tokens' (input of img_attn.proj) is not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    args = _inputs(env["config"]())
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN], seen["img"])
