"""NASA-I on ComfyUI's own SD3 MMDiT class (random weights): SD3.5 Large-like, SD3.5 Medium-like (second image
self-attention in some x blocks), SD3 Medium-like (no qk norm), a context processor, and the stock loader.

Held against code written here, independent of the pack:
* a float64-attention MMDiT forward with the negative stream and NASA written out (``_reference``),
* hooks counting each block's text-stream projection of the negative (one per block per forward) and showing
  the image is never duplicated,
* the negative stream after the first block equals the text stream of a plain forward on the negative,
* text-query rows of the first block and SD3.5M's image-only self-attention are untouched; cfg 1 runs one pass
  per step; a block replace installed before NASA still runs.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batches, widths, a second node, the canary)
run on the SD3.5 Large-like and SD3.5 Medium-like models in test_contract.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN = 154          # two CLIP chunks
NEG_LEN = 231          # distinct from POS_LEN, so hooks can tell them apart; lcm/min = 3: cfg > 1 batches cond+uncond
IMAGE_TOKENS = 16      # 8x8 latent, patch 2


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    nasa_run = comfyui.mod("adapters.run")
    sd3 = comfyui.mod("adapters.sd3")
    core = comfyui.mod("nasa_core")

    def model(family="sd3", dtype=torch.float32, **overrides):
        return cases.model(rm, family, dtype, **overrides)     # random RMS qk norms (family_cases.py)

    apply = support.apply_nasa

    return dict(rm=rm, nasa_run=nasa_run, sd3=sd3, core=core, model=model, apply=apply,
                apply_nasa=comfyui.mod("adapters").apply_nasa)


def _config(env, family="sd3"):
    return env["rm"].DIT_FAMILIES[family][1]


def _widths(config):
    return config["context_embedder_config"]["params"]["in_features"], config["adm_in_channels"]


def _conds(env, family):
    return cases.conds(env["rm"], family, POS_LEN, NEG_LEN)


def _direct(env, mp, x, t, context, y, negative, alpha, method=None):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all positive);
    ``method``: nasa_core.Nag / Vsf at strength ``alpha`` (None: NASA through the node)."""
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["apply_nasa"](mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["sd3"].FAMILY, method=method)
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context.clone(), y=y, transformer_options=options)  # a context processor adds in place


def _inputs(config, seed=3, batch=1, size=8):
    g = torch.Generator().manual_seed(seed)
    context_width, pooled = _widths(config)
    x = torch.randn(batch, 16, size, size, generator=g)
    context = torch.randn(batch, POS_LEN, context_width, generator=g)
    y = torch.randn(batch, pooled, generator=g)
    negative = torch.randn(1, NEG_LEN, context_width, generator=g)
    return x, torch.full((batch,), 700.0), context, y, negative


# ----------------------------------------------------------------------------- independent reference

def _attn(q, k, v):
    """(B, H, L, D) float64 -> (B, L, H*D): softmax written out."""
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    o = p @ v.double()
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _modulate(h, shift, scale):
    return F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def _qk_norm(t, norm):
    if isinstance(norm, torch.nn.Identity):
        return t
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight


def _qkv(attn, h, shift, scale):
    """Modulated LayerNorm, qkv linear, heads (qkv feature layout 3 x heads x head_dim), qk norm -> (B, H, L, D)."""
    b, n, _ = h.shape
    q, k, v = attn.qkv(_modulate(h, shift, scale)).view(b, n, 3, attn.num_heads, -1).unbind(2)
    return [t.transpose(1, 2) for t in (_qk_norm(q, attn.ln_q), _qk_norm(k, attn.ln_k), v)]


def _mlp(block, h, shift, scale, gate):
    m = block.mlp
    return h + gate[:, None] * m.fc2(F.gelu(m.fc1(_modulate(h, shift, scale)), approximate="tanh"))


def _reference(dm, x, t, context, y, negative, alpha, method=None):
    """MMDiT forward with NASA (``method`` ("nag", tau, blend) or ("vsf", bias): that method at strength ``alpha``,
    support.steered_written_out), written from the paper's formula and SD3's published block structure (joint
    sequence [text; image], adaLN-Zero, SD3.5M's extra image self-attention unsteered), using the model's weights;
    attention in float64."""
    from einops import rearrange
    b, hw = x.shape[0], x.shape[-2:]
    img = dm.x_embedder(x) + dm.cropped_pos_embed(hw, device=x.device)
    c = dm.t_embedder(t, dtype=img.dtype) + dm.y_embedder(y)
    if dm.context_processor is not None:
        context, negative = dm.context_processor(context.clone()), dm.context_processor(negative.clone())
    txt, neg = dm.context_embedder(context), dm.context_embedder(negative).expand(b, -1, -1)
    T = txt.shape[1]
    for i, blk in enumerate(dm.joint_blocks):
        cb, xb = blk.context_block, blk.x_block
        last = i == len(dm.joint_blocks) - 1
        cm = cb.adaLN_modulation(c).chunk(2 if last else 6, dim=1)
        xm = xb.adaLN_modulation(c).chunk(9 if xb.x_block_self_attn else 6, dim=1)
        tq, tk, tv = _qkv(cb.attn, txt, cm[0], cm[1])
        nq, nk, nv = _qkv(cb.attn, neg, cm[0], cm[1])
        iq, ik, iv = _qkv(xb.attn, img, xm[0], xm[1])
        q, k, v = (torch.cat(p, 2) for p in ((tq, iq), (tk, ik), (tv, iv)))
        a = _attn(q, k, v)
        a[:, T:] = support.steered_written_out(method, a[:, T:], iq, k, v, nk, nv, alpha)
        new_img = img + xm[2][:, None] * xb.attn.proj(a[:, T:].float())
        if xb.x_block_self_attn:
            new_img = new_img + xm[8][:, None] * xb.attn2.proj(_attn(*_qkv(xb.attn2, img, xm[6], xm[7])).float())
        img = _mlp(xb, new_img, xm[3], xm[4], xm[5])
        if not last:
            na = _attn(nq, torch.cat((nk, ik), 2), torch.cat((nv, iv), 2))
            txt = _mlp(cb, txt + cm[2][:, None] * cb.attn.proj(a[:, :T].float()), cm[3], cm[4], cm[5])
            neg = _mlp(cb, neg + cm[2][:, None] * cb.attn.proj(na.float()), cm[3], cm[4], cm[5])
    fl = dm.final_layer
    shift, scale = fl.adaLN_modulation(c).chunk(2, dim=1)
    out = fl.linear(_modulate(img, shift, scale))
    p = dm.patch_size
    return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=hw[0] // p, w=hw[1] // p, p=p, q=p)


def _check_against_reference(env, mp, config, alpha=1.0, tol=1e-3):
    x, t, context, y, negative = _inputs(config)
    dm = mp.model.diffusion_model
    got = _direct(env, mp, x, t, context, y, negative, alpha)
    with torch.no_grad():
        want = _reference(dm, x, t, context, y, negative, alpha)
        base = _reference(dm, x, t, context, y, negative, 0.0)
    support.check_close(got, want, base, tol)


VARIANTS = {
    "sd35_large": ("sd3", {}),
    "sd35_medium": ("sd35m", {}),
    "sd3_medium_no_qk_norm": ("sd3", {"qk_norm": None}),
    "context_processor": ("sd3", {"context_processor_layers": 1, "context_size": 48}),
}


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_independent_reference(env, variant):
    family, overrides = VARIANTS[variant]
    config = {**_config(env, family), **overrides}
    if "context_size" in overrides:
        assert overrides["context_size"] == _widths(config)[0]
    _check_against_reference(env, env["model"](family, **overrides), config)


@pytest.mark.parametrize("family", ["sd3", "sd35m"])
def test_every_block_projects_the_negative_once_and_the_image_is_not_duplicated(env, family):
    mp = env["model"](family)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, family)
    modules = {"embed": dm.context_embedder}
    for i, blk in enumerate(dm.joint_blocks):
        modules.update({("text", i): blk.context_block.attn.qkv, ("image", i): blk.x_block.attn.qkv})
        if blk.x_block.x_block_self_attn:
            modules[("image self", i)] = blk.x_block.attn2.qkv
    with support.Lengths(modules) as lengths, support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), family, pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    assert sorted(lengths.calls.pop("embed")) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN]
    n_self = sum(blk.x_block.x_block_self_attn for blk in dm.joint_blocks)
    assert n_self == len(_config(env, family)["x_block_self_attn_layers"])
    for (kind, i), seen in lengths.calls.items():
        if kind == "text":                                   # positive once, negative once, every block incl. the last
            assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (kind, i, seen)
        else:                                                # image tokens once per forward
            assert seen == [IMAGE_TOKENS, IMAGE_TOKENS], (kind, i, seen)


@pytest.mark.parametrize("family", ["sd3", "sd35m"])
def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env, family):
    """Capture what enters block 1's context norm1: NASA's negative stream vs the text stream of an unpatched forward
    whose prompt is the negative (same image, same timestep and pooled vector). Later blocks differ on purpose: there
    the image tokens the stream attends to are those of the steered positive forward."""
    mp = env["model"](family)
    dm = mp.model.diffusion_model
    x, t, context, y, negative = _inputs(_config(env, family))
    norm = dm.joint_blocks[1].context_block.norm1
    with support.Inputs(nasa=norm) as seen:
        _direct(env, mp, x, t, context, y, negative, 1.0)
    with support.Inputs(plain=norm) as real, torch.no_grad():
        dm(x, t, negative, y=y, transformer_options={})
    support.same_stream(seen["nasa"], real["plain"], NEG_LEN)


def test_only_image_queries_of_the_joint_call_are_steered(env):
    """In block 0 of the SD3.5M-like model the text tokens' attention output (input of context attn.proj) and the
    image-only self-attention's output (input of x attn2.proj) are bit-identical with and without NASA; the joint
    attention's image tokens (input of x attn.proj) are not."""
    mp = env["model"]("sd35m")
    blk = mp.model.diffusion_model.joint_blocks[0]
    assert blk.x_block.x_block_self_attn
    args = _inputs(_config(env, "sd35m"))
    with support.Inputs(txt=blk.context_block.attn.proj, img=blk.x_block.attn.proj,
                        img_self=blk.x_block.attn2.proj) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN], seen["img"])
    assert len(seen["img_self"]) == 2 and torch.equal(seen["img_self"][0], seen["img_self"][1])


def test_block_replace_installed_before_nasa_still_runs(env):
    """A "dit" double_block replace set before Apply NASA Attention is chained: it runs once per block per forward
    and the steered result is unchanged (this replace just calls the block)."""
    mp = env["model"]()
    calls = []
    prior = mp.clone()
    for i in range(len(mp.model.diffusion_model.joint_blocks)):
        def replace(args, extra, i=i):
            calls.append(i)
            return extra["original_block"](args)
        prior.set_model_patch_replace(replace, "dit", "double_block", i)
    x, t, context, y, negative = _inputs(_config(env))
    want = _direct(env, mp, x, t, context, y, negative, 1.0)
    got = _direct(env, prior, x, t, context, y, negative, 1.0)
    assert calls == list(range(len(mp.model.diffusion_model.joint_blocks)))
    assert torch.equal(want, got)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's image rows of the SD3.5M-like model (its image-only self-attention
    unsteered); VSF's softmax over the block's text and image keys and the negative stream's. At zero strength the
    output is the unpatched model's, bit for bit."""
    obj, off = support.method_objects(env["core"], method)
    mp = env["model"]("sd35m")
    x, t, context, y, negative = _inputs(_config(env, "sd35m"))
    dm = mp.model.diffusion_model
    got = _direct(env, mp, x, t, context, y, negative, obj.strength, method=obj)
    with torch.no_grad():
        want = _reference(dm, x, t, context, y, negative, obj.strength, method=method)
        base = _reference(dm, x, t, context, y, negative, 0.0)
        plain = dm(x, t, context.clone(), y=y, transformer_options={})
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, x, t, context, y, negative, off.strength, method=off), plain)


def test_stock_loader_builds_the_tiny_sd35m_and_nasa_matches_reference(env):
    """The tiny SD3.5M-like state dict goes through ComfyUI's own detection and loader: it is an SD3 model with the
    same x_block_self_attn layers and RMS qk norm, NASA matches the adapter and steers it like the reference."""
    import comfy.sd
    built = env["model"]("sd35m")
    loaded = comfy.sd.load_diffusion_model_state_dict(built.model.diffusion_model.state_dict())
    config = _config(env, "sd35m")
    assert type(loaded.model.model_config).__name__ == "SD3"
    unet_config = loaded.model.model_config.unet_config
    assert unet_config["x_block_self_attn_layers"] == config["x_block_self_attn_layers"]
    assert unet_config["qk_norm"] == "rms" and unet_config["depth"] == config["depth"]
    assert env["sd3"].matches(loaded) and env["sd3"].context_dim(loaded) == _widths(config)[0]
    _check_against_reference(env, loaded, config)
