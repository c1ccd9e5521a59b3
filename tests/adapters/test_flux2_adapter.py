"""NASA on ComfyUI's FLUX.2 (``comfy.supported_models.Flux2`` on the ``Flux`` class; random weights): the tiny
FLUX.2 dev-like config, and a checkpoint at FLUX.2's real head width through ComfyUI's own detection and loader.

Held against code written here, independent of the pack:
* a float64-attention FLUX.2 forward with the negative stream and NASA written out (``_reference``): global
  modulation, text RoPE ids counting the tokens on axis 3, rotary written out (support.reference_rotary), the gated
  SiLU MLPs, the negative left-padded to 512 tokens as ComfyUI pads any FLUX.2 prompt; references appended with the
  "index" method, and with "index_timestep_zero" (reference tokens modulated at timestep 0);
* the same reference with the negative's text ids at zero (FLUX.1's rule) or unpadded is far off: both quirks are
  what the adapter must get right, and this test would see either missed;
* the negative stream after double block 0 equals the text stream of an unpatched forward whose prompt is the
  negative, padded by ComfyUI's own ``Flux2.extra_conds``;
* text-query rows are untouched; reference tokens are attended to and never steered;
* strict matching: FLUX.1's adapter refuses FLUX.2, FLUX.2's refuses FLUX.1 and the other models on the Flux class.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batches, widths, a second node, the canary)
run in test_contract.py on the "flux2" and "klein" cases.
"""
from __future__ import annotations

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

PAD = 512              # model_base.Flux2.extra_conds left-pads text to this many tokens
NEG_LEN = 27           # a short negative: padded to PAD
POS_LEN = 600          # a positive past PAD (unpadded), so hooks tell it from the padded negative


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing("flux2")
    return dict(cases.family_env(comfyui, "flux2", flux2="adapters.flux2", flux="adapters.flux", core="nasa_core"),
                adapters=comfyui.mod("adapters"))


def _direct(env, mp, x, t, context, guidance, negative, alpha, ref_latents=None, ref_method=None, method=None):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (every row positive);
    ``ref_method``: the model's ref_latents_method; ``method``: nasa_core.Nag / Vsf as apply_nasa takes it."""
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["flux2"].FAMILY, method=method)
    kw = {} if ref_method is None else {"ref_latents_method": ref_method}
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, guidance=guidance, ref_latents=ref_latents,
                                       transformer_options=options, **kw)


def _comfy_context(mp, text):
    """What ComfyUI gives the model for a text-encoder output: ``Flux2.extra_conds``' c_crossattn."""
    out = mp.model.extra_conds(cross_attn=text, noise=torch.zeros(1, 128, 8, 8), device="cpu")
    return out["c_crossattn"].cond


# ----------------------------------------------------------------------------- independent reference

def _ids(h, w, index=0.0):
    """Image token positions: (index, row, column, 0)."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    return torch.stack((torch.full((h, w), float(index), dtype=torch.float64), rows, cols,
                        torch.zeros(h, w, dtype=torch.float64)), -1).reshape(1, h * w, 4)


def _text_ids(n, counted=True):
    ids = torch.zeros(1, n, 4, dtype=torch.float64)
    if counted:
        ids[..., 3] = torch.arange(n, dtype=torch.float64)
    return ids


def _tokens(x):
    """(B, C, H, W) latent -> (B, H*W, C) tokens (patch 1)."""
    return x.flatten(2).transpose(1, 2)


class _Per:
    """A modulation whose shift/scale/gate differ per token span: ``spans`` = [(ModulationOut, tokens), ...]."""

    def __init__(self, spans):
        for name in ("shift", "scale", "gate"):
            setattr(self, name, torch.cat([getattr(m, name).expand(-1, n, -1) for m, n in spans], 1))


def _mod(x, m):
    return x * (1 + m.scale) + m.shift


def _gated(x):
    a, b = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(a) * b


def _mlp(mlp, x):
    """FLUX.2's MLP written out: Linear(D, 2M) -> silu(first half) * second half -> Linear(M, D), no biases."""
    return torch.nn.functional.linear(_gated(torch.nn.functional.linear(x, mlp[0].weight)), mlp[2].weight)


def _attn(q, k, v):
    return support.reference_attention(q, k, v)


def _reference(dm, config, x, t, context, guidance, negative, alpha, ref_latents=(), ref_method="index",
               steer_references=False, neg_counted=True, neg_padded=True, method=None):
    """FLUX.2 forward with NASA (``method``: NAG or VSF instead, written as support.steered_written_out takes it),
    from the paper's formula and FLUX.2's published structure, on the model's weights; attention and rotary in
    float64. ``ref_method``: the model's ref_latents_method. ``neg_counted`` / ``neg_padded`` False: the wrong text
    rules (for the test that shows they matter)."""
    from comfy.ldm.flux.layers import timestep_embedding
    H, D = config["num_heads"], config["hidden_size"]
    axes, theta = config["axes_dim"], config["theta"]
    b, _, h, w = x.shape
    img, ids = _tokens(x), _ids(h, w)
    n_img = img.shape[1]
    for i, ref in enumerate(ref_latents):
        img = torch.cat((img, _tokens(ref)), 1)
        ids = torch.cat((ids, _ids(ref.shape[-2], ref.shape[-1], 10.0 * (i + 1))), 1)
    n_ref = img.shape[1] - n_img
    T = context.shape[1]
    ids = torch.cat((_text_ids(T), ids), 1).expand(b, -1, -1)
    if neg_padded and negative.shape[1] < PAD:
        negative = torch.cat((torch.zeros(1, PAD - negative.shape[1], negative.shape[2]), negative), 1)
    neg_ids = _text_ids(negative.shape[1], neg_counted).expand(b, -1, -1)

    def rot(t_, pos):
        return support.reference_rotary(t_, pos, axes, theta)

    def temb(v):
        return timestep_embedding(v, 256)
    vec = dm.time_in(temb(t)) + dm.guidance_in(temb(guidance))
    zero_refs = ref_method == "index_timestep_zero" and n_ref > 0
    vec0 = dm.time_in(temb(t * 0)) + dm.guidance_in(temb(guidance)) if zero_refs else vec
    img = torch.nn.functional.linear(img, dm.img_in.weight)
    txt = torch.nn.functional.linear(context, dm.txt_in.weight)
    neg = torch.nn.functional.linear(negative, dm.txt_in.weight).expand(b, -1, -1)
    steer = slice(T, None) if steer_references else slice(T, T + n_img)

    def steered(pos, *qkvs):     # the steered rows; projections (B, L, H, D/H) as support's (B, H, L, D/H)
        return support.steered_written_out(method, pos, *(t_.transpose(1, 2) for t_ in qkvs), alpha)

    def heads(y):          # (B, L, 3D) -> q, k, v each (B, L, H, D/H)
        return y.unflatten(-1, (3, H, -1)).unbind(2)

    def normed(norm, q, k):
        return norm.query_norm(q), norm.key_norm(k)

    im_t, im_0 = dm.double_stream_modulation_img(vec), dm.double_stream_modulation_img(vec0)
    im1, im2 = (_Per([(a, n_img), (z, n_ref)]) for a, z in zip(im_t, im_0))
    tm1, tm2 = dm.double_stream_modulation_txt(vec)
    for blk in dm.double_blocks:
        def qkv(attn, norm1, h_, m):
            q, k, v = heads(torch.nn.functional.linear(_mod(norm1(h_), m), attn.qkv.weight))
            q, k = normed(attn.norm, q, k)
            return q, k, v
        iq, ik, iv = qkv(blk.img_attn, blk.img_norm1, img, im1)
        tq, tk, tv = qkv(blk.txt_attn, blk.txt_norm1, txt, tm1)
        nq, nk, nv = qkv(blk.txt_attn, blk.txt_norm1, neg, tm1)
        q, k = rot(torch.cat((tq, iq), 1), ids), rot(torch.cat((tk, ik), 1), ids)
        v = torch.cat((tv, iv), 1).double()
        nq, nk = rot(nq, neg_ids), rot(nk, neg_ids)
        a = _attn(q, k, v)
        a[:, steer] = steered(a[:, steer], q[:, steer], k, v, nk, nv)
        na = _attn(nq, torch.cat((nk, k[:, T:]), 1), torch.cat((nv.double(), v[:, T:]), 1))

        def out(attn, mlp, norm2, h_, o, m1, m2):
            h_ = h_ + m1.gate * torch.nn.functional.linear(o.float(), attn.proj.weight)
            return h_ + m2.gate * _mlp(mlp, _mod(norm2(h_), m2))
        img = out(blk.img_attn, blk.img_mlp, blk.img_norm2, img, a[:, T:], im1, im2)
        txt = out(blk.txt_attn, blk.txt_mlp, blk.txt_norm2, txt, a[:, :T], tm1, tm2)
        neg = out(blk.txt_attn, blk.txt_mlp, blk.txt_norm2, neg, na, tm1, tm2)
    sm_t, sm_0 = dm.single_stream_modulation(vec)[0], dm.single_stream_modulation(vec0)[0]
    sm = _Per([(sm_t, T + n_img), (sm_0, n_ref)])
    h_ = torch.cat((txt, img), 1)
    mh = int(D * config["mlp_ratio"])
    for blk in dm.single_blocks:
        def lin1(y, m):
            qkv_, mlp = torch.nn.functional.linear(_mod(blk.pre_norm(y), m), blk.linear1.weight).split([3 * D, 2 * mh], -1)
            q, k, v = heads(qkv_)
            q, k = normed(blk.norm, q, k)
            return q, k, v, mlp
        q, k, v, mlp = lin1(h_, sm)
        nq, nk, nv, nmlp = lin1(neg, sm_t)
        q, k, nq, nk = rot(q, ids), rot(k, ids), rot(nq, neg_ids), rot(nk, neg_ids)
        a = _attn(q, k, v)
        a[:, steer] = steered(a[:, steer], q[:, steer], k, v, nk, nv)
        na = _attn(nq, torch.cat((nk, k[:, T:]), 1), torch.cat((nv.double(), v[:, T:].double()), 1))
        h_ = h_ + sm.gate * torch.nn.functional.linear(torch.cat((a.float(), _gated(mlp)), 2), blk.linear2.weight)
        neg = neg + sm_t.gate * torch.nn.functional.linear(torch.cat((na.float(), _gated(nmlp)), 2),
                                                           blk.linear2.weight)
    out = dm.final_layer(h_[:, T:T + n_img], vec)
    return out.transpose(1, 2).reshape(b, -1, h, w)


def _inputs(config, seed=3, pos_len=20, size=8):
    """Latent, timestep, the positive as ComfyUI gives it to the model (padded to 512), guidance, a short raw
    negative."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, config["in_channels"], size, size, generator=g)
    context = torch.randn(1, pos_len, config["context_in_dim"], generator=g)
    negative = torch.randn(1, NEG_LEN, config["context_in_dim"], generator=g)
    if pos_len < PAD:
        context = torch.cat((torch.zeros(1, PAD - pos_len, context.shape[2]), context), 1)
    return x, torch.full((1,), 0.7), context, torch.full((1,), 4.0), negative


def _refs(config, n=2, seed=9):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, config["in_channels"], 4 + 2 * i, 6, generator=g) for i in range(n)]


def _check(env, mp, config, alpha=1.0, ref_latents=None, ref_method=None, tol=1e-3, method=None, written=None):
    """``method``: the pack's nasa_core.Nag / Vsf (at strength ``alpha``), ``written``: the same written out."""
    args = _inputs(config)
    got = _direct(env, mp, *args, alpha, ref_latents, ref_method, method=method)
    dm = mp.model.diffusion_model
    kw = dict(ref_latents=ref_latents or (), ref_method=ref_method or "index")
    with torch.no_grad():
        want = _reference(dm, config, *args, alpha, method=written, **kw)
        base = _reference(dm, config, *args, 0.0, **kw)
    support.check_close(got, want, base, tol)
    return got, want, args, kw


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference_and_the_text_rules_matter(env):
    """NASA equals the reference; the reference with the negative's text at FLUX.1's zero positions, or not padded
    as ComfyUI pads FLUX.2 text, is at least ten times further off."""
    mp = env["model"]()
    got, want, args, kw = _check(env, mp, env["config"])
    dm = mp.model.diffusion_model
    err = (got - want).abs().max()
    with torch.no_grad():
        for wrong in (dict(neg_counted=False), dict(neg_padded=False)):
            off = _reference(dm, env["config"], *args, 1.0, **kw, **wrong)
            assert (got - off).abs().max() > 10 * err, wrong


@pytest.mark.parametrize("ref_method", ["index", "index_timestep_zero"])
def test_reference_images_are_keys_but_not_steered(env, ref_method):
    """Two reference latents (FLUX.2 edit / Klein references) after the image: NASA equals the reference, which
    steers only the generated image's rows, and not one that steers the references too. "index_timestep_zero"
    modulates the references at timestep 0 (the model gives the single blocks two modulations per row)."""
    mp, config = env["model"](), env["config"]
    refs = _refs(config)
    got, want, args, kw = _check(env, mp, config, ref_latents=refs, ref_method=ref_method)
    with torch.no_grad():
        wrong = _reference(mp.model.diffusion_model, config, *args, 1.0, steer_references=True, **kw)
    assert (got - wrong).abs().max() > 10 * (got - want).abs().max()


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's image rows (double and single blocks; VSF's softmax over the block's
    text and image keys and the negative stream's, all with their RoPE), also with two reference images as keys
    that are not steered, equal the methods written out on the reference; at zero strength (NAG scale 1, VSF
    scale 0) the output is the unpatched model's, bit for bit."""
    mp, config = env["model"](), env["config"]
    obj, off = support.method_objects(env["core"], method)
    _check(env, mp, config, alpha=obj.strength, method=obj, written=method)
    _check(env, mp, config, alpha=obj.strength, ref_latents=_refs(config), method=obj, written=method)
    args = _inputs(config)
    with torch.no_grad():
        plain = mp.model.diffusion_model(*args[:3], guidance=args[3], transformer_options={})
    assert torch.equal(_direct(env, mp, *args, off.strength, method=off), plain)


def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env):
    """What enters double block 1's text norm: NASA's negative stream vs the text stream of an unpatched forward
    whose prompt is the negative as ComfyUI gives it (Flux2.extra_conds pads it to 512 tokens)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, guidance, negative = _inputs(env["config"], pos_len=POS_LEN)
    assert context.shape[1] == POS_LEN
    with support.Inputs(nasa=dm.double_blocks[1].txt_norm1) as seen:
        _direct(env, mp, x, t, context, guidance, negative, 1.0)
    real_context = _comfy_context(mp, negative)
    assert real_context.shape[1] == PAD
    with support.Inputs(plain=dm.double_blocks[1].txt_norm1) as real, torch.no_grad():
        dm(x, t, real_context, guidance=guidance, transformer_options={})
    support.same_stream(seen["nasa"], real["plain"], PAD)


def test_only_image_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of txt_attn.proj) is bit-identical with and
    without NASA; the image tokens' (input of img_attn.proj) is not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    args = _inputs(env["config"], pos_len=POS_LEN)
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN], seen["img"])


def test_strict_matching_between_flux_families(env):
    """FLUX.1's adapter refuses FLUX.2 (and Klein); FLUX.2's refuses FLUX.1, a FLUX.2 config without global
    modulation and a FLUX.2 model under another config class."""
    rm = env["rm"]
    flux2, klein, flux1 = env["model"](), cases.model(rm, "klein"), cases.model(rm, "flux")
    assert env["flux2"].matches(flux2) and env["flux2"].matches(klein)
    assert env["adapters"].find_adapter(klein) is env["flux2"].FAMILY
    assert not env["flux"].matches(flux2) and not env["flux"].matches(klein)
    assert not env["flux2"].matches(flux1)
    assert env["flux2"].model_name(klein) == "FLUX.2 (Flux2)"
    no_global = rm.build_diffusion_model("Flux2", {**env["config"], "global_modulation": False}, seed=0)
    assert not env["flux2"].matches(no_global)
    import comfy.supported_models as sm

    class OtherFlux2(sm.Flux2):
        pass
    other = rm.build_diffusion_model("Flux2", env["config"], seed=0)
    other.model.model_config = OtherFlux2(other.model.model_config.unet_config)
    assert not env["flux2"].matches(other)


# ----------------------------------------------------------------------------- FLUX.2's head width, stock loader

FULL_HEADS = dict(hidden_size=256, num_heads=2, axes_dim=[32, 32, 32, 32], context_in_dim=96,
                  depth=1, depth_single_blocks=1)


def test_real_head_width_checkpoint_loads_through_the_stock_loader(env):
    """A FLUX.2 state dict with FLUX.2's head width (128 = 4 x 32 RoPE axes; 2 heads) and its key layout, loaded
    back through ComfyUI's detection: a Flux2 config NASA claims; alpha 0 is bit-identical, and NASA equals the
    reference there."""
    import comfy.sd
    rm = env["rm"]
    config = {**env["config"], **FULL_HEADS}
    built = rm.build_diffusion_model("Flux2", config, torch.float32, seed=0, scope="flux2_heads")
    sd = built.model.diffusion_model.state_dict()
    del built
    mp = comfy.sd.load_diffusion_model_state_dict(sd)
    assert type(mp.model.model_config).__name__ == "Flux2"
    assert env["adapters"].find_adapter(mp) is env["flux2"].FAMILY
    assert env["flux2"].context_dim(mp) == 96
    support.sharpen_rms_norms(mp.model.diffusion_model)
    _check(env, mp, config, alpha=0.5)
    args = _inputs(config)
    with torch.no_grad():
        plain = mp.model.diffusion_model(*args[:3], guidance=args[3], transformer_options={})
    assert torch.equal(_direct(env, mp, *args, 0.0), plain)
