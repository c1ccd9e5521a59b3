"""NASA on ComfyUI's LongCat-Image (``comfy.supported_models.LongCatImage`` on the ``Flux`` class; random weights).

Held against code written here, independent of the pack:
* a float64-attention LongCat-Image forward with the negative stream and NASA written out (``_reference``): FLUX.1's
  blocks, no pooled vector or guidance, text RoPE ids (0, i, i) for the prompt and for the negative (each of its
  own length), the image's ids shifted past the positive's text as ``model_base.LongCatImage`` shifts them
  (rope_options), rotary written out (support.reference_rotary);
* the same reference with the negative's text at FLUX.1's zero positions is far off (the rule the adapter must get
  right, and this test would see it missed);
* the negative stream after double block 0 equals the text stream of an unpatched forward whose prompt is the
  negative (the image where the model put it for this run);
* text-query rows and reference-image rows (LongCat-Image-Edit) are untouched, the image's rows are steered;
* strict matching against FLUX.1, FLUX.2 and Ovis on the same class.

The generic checks run in test_contract.py on the "longcat_image" case.
"""
from __future__ import annotations

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = 20, 27


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing("longcat_image")
    return dict(cases.family_env(comfyui, "longcat_image", longcat="adapters.longcat_image", flux="adapters.flux",
                                 flux2="adapters.flux2", core="nasa_core"),
                adapters=comfyui.mod("adapters"))


def _rope_options(text_len):
    """What model_base.LongCatImage._apply_model puts into transformer_options: the image past the text."""
    return {"rope_options": {"shift_t": 1.0, "shift_y": float(text_len), "shift_x": float(text_len)}}


def _direct(env, mp, x, t, context, negative, alpha, ref_latents=None, method=None):
    """``method``: nasa_core.Nag / Vsf at strength ``alpha`` (None: NASA through the node)."""
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["longcat"].FAMILY, method=method)
    options.update(_rope_options(context.shape[1]))
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, ref_latents=ref_latents, transformer_options=options)


def _inputs(config, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 8, 8, generator=g)
    context = torch.randn(1, POS_LEN, config["context_in_dim"], generator=g)
    negative = torch.randn(1, NEG_LEN, config["context_in_dim"], generator=g)
    return x, torch.full((1,), 0.7), context, negative


# ----------------------------------------------------------------------------- independent reference

def _text_ids(n, counted=True):
    ids = torch.zeros(1, n, 3, dtype=torch.float64)
    if counted:
        ids[..., 1] = ids[..., 2] = torch.arange(n, dtype=torch.float64)
    return ids


def _image_ids(h, w, shift):
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    return torch.stack((torch.ones(h, w, dtype=torch.float64), rows + shift, cols + shift), -1).reshape(1, h * w, 3)


def _mod(x, m):
    return x * (1 + m.scale) + m.shift


def _reference(dm, config, x, t, context, negative, alpha, neg_counted=True, method=None):
    """LongCat-Image forward with NASA (``method`` ("nag", tau, blend) or ("vsf", bias): that method at strength
    ``alpha``, support.steered_written_out) from the paper's formula and FLUX.1's published block structure, on the
    model's weights; attention and rotary in float64."""
    from comfy.ldm.flux.layers import timestep_embedding
    H, D, axes = config["num_heads"], config["hidden_size"], config["axes_dim"]
    b, _, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    img = x.reshape(b, 16, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, 64)
    T = context.shape[1]
    ids = torch.cat((_text_ids(T), _image_ids(h, w, T)), 1)
    neg_ids = _text_ids(negative.shape[1], neg_counted)

    def rot(t_, pos):
        return support.reference_rotary(t_, pos, axes, config["theta"])

    def heads(y):
        return y.unflatten(-1, (3, H, -1)).unbind(2)

    def attn(q, k, v):
        return support.reference_attention(q, k, v)

    def steered(a, q, k, v, nk, nv):
        """The image rows of ``a`` steered; (B, L, H, D) projections, ``k``/``v`` all the joint keys/values."""
        a[:, steer] = support.steered_written_out(method, a[:, steer], *(t_.transpose(1, 2) for t_ in (
            q[:, steer], k, v, nk, nv)), alpha)
    vec = dm.time_in(timestep_embedding(t, 256))
    img, txt, neg = dm.img_in(img), dm.txt_in(context), dm.txt_in(negative)
    steer = slice(T, None)
    for blk in dm.double_blocks:
        im1, im2 = blk.img_mod(vec)
        tm1, tm2 = blk.txt_mod(vec)

        def qkv(a, norm1, h_, m):
            q, k, v = heads(a.qkv(_mod(norm1(h_), m)))
            return a.norm.query_norm(q), a.norm.key_norm(k), v
        iq, ik, iv = qkv(blk.img_attn, blk.img_norm1, img, im1)
        tq, tk, tv = qkv(blk.txt_attn, blk.txt_norm1, txt, tm1)
        nq, nk, nv = qkv(blk.txt_attn, blk.txt_norm1, neg, tm1)
        q, k, v = rot(torch.cat((tq, iq), 1), ids), rot(torch.cat((tk, ik), 1), ids), torch.cat((tv, iv), 1).double()
        nq, nk = rot(nq, neg_ids), rot(nk, neg_ids)
        a = attn(q, k, v)
        steered(a, q, k, v, nk, nv)
        na = attn(nq, torch.cat((nk, k[:, T:]), 1), torch.cat((nv.double(), v[:, T:]), 1))

        def out(at, mlp, norm2, h_, o, m1, m2):
            h_ = h_ + m1.gate * at.proj(o.float())
            return h_ + m2.gate * mlp(_mod(norm2(h_), m2))
        img = out(blk.img_attn, blk.img_mlp, blk.img_norm2, img, a[:, T:], im1, im2)
        txt = out(blk.txt_attn, blk.txt_mlp, blk.txt_norm2, txt, a[:, :T], tm1, tm2)
        neg = out(blk.txt_attn, blk.txt_mlp, blk.txt_norm2, neg, na, tm1, tm2)
    h_ = torch.cat((txt, img), 1)
    gelu = torch.nn.GELU(approximate="tanh")
    mh = int(D * config["mlp_ratio"])
    for blk in dm.single_blocks:
        m, _ = blk.modulation(vec)

        def lin1(y):
            qkv_, mlp = blk.linear1(_mod(blk.pre_norm(y), m)).split([3 * D, mh], -1)
            q, k, v = heads(qkv_)
            return blk.norm.query_norm(q), blk.norm.key_norm(k), v, mlp
        q, k, v, mlp = lin1(h_)
        nq, nk, nv, nmlp = lin1(neg)
        q, k, nq, nk = rot(q, ids), rot(k, ids), rot(nq, neg_ids), rot(nk, neg_ids)
        a = attn(q, k, v.double())
        steered(a, q, k, v, nk, nv)
        na = attn(nq, torch.cat((nk, k[:, T:]), 1), torch.cat((nv.double(), v[:, T:].double()), 1))
        h_ = h_ + m.gate * blk.linear2(torch.cat((a.float(), gelu(mlp)), 2))
        neg = neg + m.gate * blk.linear2(torch.cat((na.float(), gelu(nmlp)), 2))
    out = dm.final_layer(h_[:, T:], vec)
    return out.reshape(b, h, w, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 16, hh, ww)


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference_and_text_positions_matter(env):
    mp, config = env["model"](), env["config"]
    args = _inputs(config)
    got = _direct(env, mp, *args, 1.0)
    dm = mp.model.diffusion_model
    with torch.no_grad():
        want = _reference(dm, config, *args, 1.0)
        base = _reference(dm, config, *args, 0.0)
        zero_ids = _reference(dm, config, *args, 1.0, neg_counted=False)
    support.check_close(got, want, base)
    assert (got - zero_ids).abs().max() > 10 * (got - want).abs().max()


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's image rows (the negative's text at its own counted RoPE positions);
    VSF's softmax over the block's text and image keys and the negative stream's. At zero strength the output is
    the unpatched model's, bit for bit."""
    obj, off = support.method_objects(env["core"], method)
    mp, config = env["model"](), env["config"]
    args = _inputs(config)
    dm = mp.model.diffusion_model
    got = _direct(env, mp, *args, obj.strength, method=obj)
    with torch.no_grad():
        want = _reference(dm, config, *args, obj.strength, method=method)
        base = _reference(dm, config, *args, 0.0)
        plain = dm(*args[:3], transformer_options=_rope_options(POS_LEN))
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, *args, off.strength, method=off), plain)


def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(env["config"])
    with support.Inputs(nasa=dm.double_blocks[1].txt_norm1) as seen:
        _direct(env, mp, x, t, context, negative, 1.0)
    with support.Inputs(plain=dm.double_blocks[1].txt_norm1) as real, torch.no_grad():
        dm(x, t, negative, transformer_options=_rope_options(POS_LEN))
    support.same_stream(seen["nasa"], real["plain"], NEG_LEN)


def test_only_the_generated_image_rows_are_steered(env):
    """Double block 0 with a reference latent (LongCat-Image-Edit): the text tokens' and the reference tokens'
    attention outputs are bit-identical with and without NASA; the generated image's are not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    args = _inputs(env["config"])
    ref = [torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(9))]
    n_img = (8 // 2) * (8 // 2)
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, *args, 0.0, ref_latents=ref)
        _direct(env, mp, *args, 1.0, ref_latents=ref)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN],
                                   [s[:, :n_img] for s in seen["img"]])
    refs = [s[:, n_img:] for s in seen["img"]]
    assert refs[0].shape[1] == 4 * 3 and torch.equal(refs[0], refs[1])


def test_strict_matching_between_flux_families(env):
    """FLUX.1's and FLUX.2's adapters refuse LongCat-Image; LongCat's refuses FLUX.1, FLUX.2, Ovis (FLUX.1's
    config with yak MLPs and a text norm) and a LongCat config with FLUX.1's zero text positions."""
    rm = env["rm"]
    longcat = env["model"]()
    assert env["adapters"].find_adapter(longcat) is env["longcat"].FAMILY
    assert not env["flux"].matches(longcat) and not env["flux2"].matches(longcat)
    assert not env["longcat"].matches(cases.model(rm, "flux"))
    assert not env["longcat"].matches(cases.model(rm, "flux2"))      # ComfyUI has FLUX.2 wherever it has LongCat
    ovis = rm.build_diffusion_model("FluxSchnell", {**rm.DIT_FAMILIES["flux"][1], "vec_in_dim": None, "yak_mlp": True,
                                                    "txt_norm": True, "txt_ids_dims": [1, 2]}, seed=0)
    assert not env["longcat"].matches(ovis)
    with pytest.raises(env["adapters"].UnsupportedModelError):
        support.apply_nasa(ovis, alpha=0.5)
    zero = rm.build_diffusion_model("LongCatImage", {**env["config"], "txt_ids_dims": []}, seed=0)
    assert not env["longcat"].matches(zero)
