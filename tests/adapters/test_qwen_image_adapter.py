"""NASA-I on ComfyUI's own Qwen-Image class (random weights, tiny config from runner.random_weights.models).

Held against code written here, independent of the pack:
* a float64-attention Qwen-Image forward with the negative stream and NASA written out (``_reference``),
  with its own RoPE table: text token j of either prompt sits at ``max(h, w) // 2 + j`` (image tokens);
  giving the negative FLUX's zero text positions instead is detectably wrong,
* hooks counting each block's text projection of the negative (one per block per forward),
* the negative stream after block 0 equals the text stream of a plain forward on the negative,
* text-query rows of the first block are untouched; Edit reference latents are not steered; cfg 1 runs one
  pass per step,
* the variants ComfyUI builds on the same class where this ComfyUI has them (Edit-2511: reference tokens
  modulated at timestep 0; Layered: T layers of image tokens and an extra timestep embedding) against the
  same reference; MageFlow (Qwen-Image's blocks in a model of its own) is refused.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows in one batch or separate passes, batches,
widths, a second node, the canary) run in test_contract.py.

The random-weight builder leaves RMSNorm weights at 0 (every query and key would be zero, every
attention uniform, and no RoPE choice would show); the model here gets weights drawn around 1 (family_cases.py).
"""
from __future__ import annotations

import inspect

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = cases.CASES["qwen_image"].pos_len, cases.CASES["qwen_image"].neg_len   # distinct, for hooks
H, W = 8, 12                   # latent size: 4 x 6 image tokens, text positions start at 3


@pytest.fixture(scope="module")
def env(comfyui):
    return cases.family_env(comfyui, "qwen_image", qwen="adapters.qwen_image", core="nasa_core", pack="adapters")


def _width(config):
    return config["joint_attention_dim"]


def _direct(env, mp, x, t, context, negative, alpha, ref_latents=None, method=None):
    """One diffusion-model forward of the NASA clone of ``mp``, NasaRun built by hand (batch rows all positive);
    ``method``: nasa_core.Nag / Vsf at strength ``alpha`` (None: NASA through the node)."""
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["pack"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["qwen"].FAMILY, method=method)
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, ref_latents=ref_latents, transformer_options=options)


# ----------------------------------------------------------------------------- independent reference

_rotate, _attn = support.reference_rotary, support.reference_attention     # float64, written out in support


def _image_ids(b, h_len, w_len, index=0, frames=1):
    """(index or frame, row, column) of each image token; several frames (Layered) are numbered 0..T-1."""
    rows = torch.arange(h_len).view(1, -1, 1).expand(frames, h_len, w_len) - h_len // 2
    cols = torch.arange(w_len).view(1, 1, -1).expand(frames, h_len, w_len) - w_len // 2
    first = torch.arange(frames).view(-1, 1, 1).expand(frames, h_len, w_len) if frames > 1 else torch.full_like(rows, index)
    ids = torch.stack((first, rows, cols), -1).reshape(1, -1, 3)
    return ids.expand(b, -1, -1)


def _text_ids(b, start, n):
    return (start + torch.arange(n)).view(1, n, 1).expand(b, n, 3)


def _mod(x, params):
    """Shift/scale/gate modulation; ``params`` (B, 3D) for every token or (B, L, 3D) per token."""
    shift, scale, gate = (params if params.ndim == 3 else params[:, None]).chunk(3, dim=-1)
    return x * (1 + scale) + shift, gate


def _per_token(params, params0, n, total):
    """(B, total, 3D) modulation: the first ``n`` tokens with ``params``, the rest with ``params0`` (timestep 0)."""
    return torch.cat((params[:, None].expand(-1, n, -1), params0[:, None].expand(-1, total - n, -1)), 1)


def _mlp(x, norm, mlp, params):
    h, gate = _mod(norm(x), params)
    return x + gate * mlp(h)


def _reference(dm, config, x, t, context, negative, alpha, ref_latents=None, steer_references=False,
               negative_text_start=None, ref_timestep_zero=False, steered_tokens=None, method=None):
    """Qwen-Image forward with NASA (``method`` ("nag", tau, blend) or ("vsf", bias): that method at strength
    ``alpha``, support.steered_written_out) from the paper's formula and the published block structure, with the
    model's weights; attention and RoPE in float64. Text RoPE: both prompts start at half the image's
    longer token side (``negative_text_start`` overrides the negative's, to show a wrong choice is caught).
    ``x`` is (B, C, T, H, W): T > 1 frames (Layered) are all generated image tokens, numbered by frame on the
    first RoPE axis. ``ref_timestep_zero`` (Edit-2511): reference tokens are modulated with timestep 0's
    embedding, everything else with the regular one. ``steered_tokens``: steer only that many image tokens (a
    wrong choice the tests show is caught)."""
    axes = config["axes_dims_rope"]
    b, frames, h_len, w_len = x.shape[0], x.shape[2], x.shape[-2] // 2, x.shape[-1] // 2

    def patchify(lat):
        c, f, hh, ww = lat.shape[1], lat.shape[2], lat.shape[-2] // 2, lat.shape[-1] // 2
        return lat.reshape(b, c, f, hh, 2, ww, 2).permute(0, 2, 3, 5, 1, 4, 6).flatten(4).flatten(1, 3)
    img, img_ids = patchify(x), _image_ids(b, h_len, w_len, frames=frames)
    n_img = img.shape[1]
    for i, ref in enumerate(ref_latents or []):
        img = torch.cat((img, patchify(ref)), 1)
        img_ids = torch.cat((img_ids, _image_ids(b, ref.shape[-2] // 2, ref.shape[-1] // 2, index=i + 1)), 1)
    start = max(h_len, w_len) // 2
    T = context.shape[1]
    ids = torch.cat((_text_ids(b, start, T), img_ids), 1)
    neg_ids = _text_ids(b, start if negative_text_start is None else negative_text_start, negative.shape[1])
    temb = dm.time_text_embed(t, img)
    temb0 = dm.time_text_embed(t * 0, img) if ref_timestep_zero else temb
    img = dm.img_in(img)
    txt, neg = dm.txt_in(dm.txt_norm(context)), dm.txt_in(dm.txt_norm(negative)).expand(b, -1, -1)
    steer = slice(T, None) if steer_references else slice(T, T + (steered_tokens or n_img))
    for blk in dm.transformer_blocks:
        a, heads = blk.attn, config["num_attention_heads"]
        im1, im2 = (_per_token(p, p0, n_img, img.shape[1]) for p, p0 in
                    zip(blk.img_mod(temb).chunk(2, dim=-1), blk.img_mod(temb0).chunk(2, dim=-1)))
        tm1, tm2 = blk.txt_mod(temb).chunk(2, dim=-1)

        def split(t_):
            return t_.unflatten(-1, (heads, -1))

        def text_qkv(h_):
            return a.norm_added_q(split(a.add_q_proj(h_))), a.norm_added_k(split(a.add_k_proj(h_))), split(a.add_v_proj(h_))

        hi, gi = _mod(blk.img_norm1(img), im1)
        ht, gt = _mod(blk.txt_norm1(txt), tm1)
        hn, gn = _mod(blk.txt_norm1(neg), tm1)
        iq, ik, iv = a.norm_q(split(a.to_q(hi))), a.norm_k(split(a.to_k(hi))), split(a.to_v(hi))
        (tq, tk, tv), (nq, nk, nv) = text_qkv(ht), text_qkv(hn)
        q, k = _rotate(torch.cat((tq, iq), 1), ids, axes), _rotate(torch.cat((tk, ik), 1), ids, axes)
        v = torch.cat((tv, iv), 1)
        nq, nk = _rotate(nq, neg_ids, axes), _rotate(nk, neg_ids, axes)
        o = _attn(q, k, v)
        o[:, steer] = support.steered_written_out(method, o[:, steer], *(t_.transpose(1, 2) for t_ in (
            q[:, steer], k, v, nk, nv)), alpha)
        no = _attn(nq, torch.cat((nk, k[:, T:]), 1), torch.cat((nv.double(), v[:, T:].double()), 1))
        img = img + gi * a.to_out[0](o[:, T:].float())
        txt = txt + gt * a.to_add_out(o[:, :T].float())
        neg = neg + gn * a.to_add_out(no.float())
        img = _mlp(img, blk.img_norm2, blk.img_mlp, im2)
        txt = _mlp(txt, blk.txt_norm2, blk.txt_mlp, tm2)
        neg = _mlp(neg, blk.txt_norm2, blk.txt_mlp, tm2)
    out = dm.proj_out(dm.norm_out(img, temb))[:, :n_img]
    out = out.view(b, frames, h_len, w_len, -1, 2, 2).permute(0, 4, 1, 2, 5, 3, 6)
    return out.reshape(b, -1, frames, x.shape[-2], x.shape[-1])


def _inputs(config, batch=1, seed=3, frames=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, H, W, generator=g)
    context = torch.randn(batch, POS_LEN, _width(config), generator=g)
    negative = torch.randn(1, NEG_LEN, _width(config), generator=g)
    return x, torch.full((batch,), 0.7), context, negative


def _ref_latents():
    return [torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(9))]


def _check(env, alpha=1.0, ref_latents=None, tol=1e-3, mp=None, frames=1, ref_timestep_zero=False):
    mp, config = mp or env["model"](), env["config"]
    x, t, context, negative = _inputs(config, frames=frames)
    got = _direct(env, mp, x, t, context, negative, alpha, ref_latents)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        want = _reference(dm, config, x, t, context, negative, alpha, ref_latents, ref_timestep_zero=ref_timestep_zero)
        base = _reference(dm, config, x, t, context, negative, 0.0, ref_latents, ref_timestep_zero=ref_timestep_zero)
    support.check_close(got, want, base, tol)
    return got


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    _check(env)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's generated-image rows, without and with an Edit reference latent (extra
    keys, not steered); VSF's softmax over the block's text, image (and reference) keys and the negative stream's.
    At zero strength the output is the unpatched model's, bit for bit."""
    obj, off = support.method_objects(env["core"], method)
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    dm = mp.model.diffusion_model
    for refs in (None, _ref_latents()):
        got = _direct(env, mp, x, t, context, negative, obj.strength, refs, method=obj)
        with torch.no_grad():
            want = _reference(dm, config, x, t, context, negative, obj.strength, refs, method=method)
            base = _reference(dm, config, x, t, context, negative, 0.0, refs)
            plain = dm(x, t, context, ref_latents=refs, transformer_options={})
        support.check_close(got, want, base)
        assert torch.equal(_direct(env, mp, x, t, context, negative, off.strength, refs, method=off), plain)


def test_negative_text_rope_starts_where_the_models_text_does(env):
    """The reference with the negative's text positions at 0 (FLUX's rule) is far from the adapter's output,
    the reference with Qwen's rule (half the longer image side) matches it."""
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    got = _direct(env, mp, x, t, context, negative, 1.0)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        right = _reference(dm, config, x, t, context, negative, 1.0)
        wrong = _reference(dm, config, x, t, context, negative, 1.0, negative_text_start=0)
    assert (got - wrong).abs().max() > 10 * (got - right).abs().max()


def test_edit_reference_latents_are_keys_but_not_steered(env):
    """With a reference latent appended after the image tokens, only the generated image's rows are steered:
    the reference that steers exactly those rows matches, one steering the reference tokens too does not."""
    mp, config = env["model"](), env["config"]
    got = _check(env, ref_latents=_ref_latents())
    x, t, context, negative = _inputs(config)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        wrong = _reference(dm, config, x, t, context, negative, 1.0, _ref_latents(), steer_references=True)
        right = _reference(dm, config, x, t, context, negative, 1.0, _ref_latents())
    assert (got - wrong).abs().max() > 10 * (got - right).abs().max()


def test_every_block_projects_the_negative_once_per_forward(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = cases.conds(env["rm"], "qwen_image")
    with support.Lengths([blk.attn.add_k_proj for blk in dm.transformer_blocks]) as lengths, \
            support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), "qwen_image", pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    for i, seen in lengths.calls.items():                    # text stream: positive once, negative once
        assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (i, seen)


def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env):
    """Capture what enters block 1's text norm: NASA's negative stream vs the text stream of an unpatched
    forward whose prompt is the negative (same image and timestep)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(env["config"])
    with support.Inputs(nasa=dm.transformer_blocks[1].txt_norm1) as seen:
        _direct(env, mp, x, t, context, negative, 1.0)
    with support.Inputs(plain=dm.transformer_blocks[1].txt_norm1) as real, torch.no_grad():
        dm(x, t, negative, transformer_options={})
    support.same_stream(seen["nasa"], real["plain"], NEG_LEN)


def test_only_image_queries_are_steered(env):
    """In block 0 the text tokens' attention output (input of to_add_out) is bit-identical with and without
    NASA; the image tokens' (input of to_out[0]) is not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.transformer_blocks[0]
    args = _inputs(env["config"])
    with support.Inputs(txt=blk.attn.to_add_out, img=blk.attn.to_out[0]) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_LEN], seen["img"])


def _model_takes(name):
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    return name in inspect.signature(QwenImageTransformer2DModel.__init__).parameters


def test_edit_2511_references_modulated_at_timestep_zero(env):
    """Qwen-Image-Edit-2511 (``index_timestep_zero``): the block gets vec for [regular; timestep 0] rows and
    modulates the reference tokens with the second; the negative, like the text, takes the regular timestep's.
    The reference that modulates the reference tokens at timestep 0 matches; one that does not, does not."""
    if not _model_takes("default_ref_method"):
        support.skip_missing_family("Qwen-Image-Edit-2511", "QwenImageTransformer2DModel(default_ref_method)")
    mp = env["model"](default_ref_method="index_timestep_zero")
    assert env["qwen"].matches(mp) and "Edit-2511" in env["qwen"].model_name(mp)
    got = _check(env, ref_latents=_ref_latents(), mp=mp, ref_timestep_zero=True)
    x, t, context, negative = _inputs(env["config"])
    with torch.no_grad():
        wrong = _reference(mp.model.diffusion_model, env["config"], x, t, context, negative, 1.0, _ref_latents())
        right = _reference(mp.model.diffusion_model, env["config"], x, t, context, negative, 1.0, _ref_latents(),
                           ref_timestep_zero=True)
    assert (got - wrong).abs().max() > 10 * (got - right).abs().max()


def test_layered_steers_every_layer_of_the_image(env):
    """Qwen-Image-Layered: a (B, C, T, H, W) latent is T * h * w generated image tokens (frame index on the first
    RoPE axis) and the timestep embedding has an extra term; all T layers are steered. The reference that steers
    only the first layer's tokens is far from the adapter's output."""
    if not _model_takes("use_additional_t_cond"):
        support.skip_missing_family("Qwen-Image-Layered", "QwenImageTransformer2DModel(use_additional_t_cond)")
    mp = env["model"](use_additional_t_cond=True, default_ref_method="negative_index")
    assert env["qwen"].matches(mp) and "Layered" in env["qwen"].model_name(mp)
    got = _check(env, mp=mp, frames=2)
    x, t, context, negative = _inputs(env["config"], frames=2)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        right = _reference(dm, env["config"], x, t, context, negative, 1.0)
        first = _reference(dm, env["config"], x, t, context, negative, 1.0, steered_tokens=(H // 2) * (W // 2))
    assert (got - first).abs().max() > 10 * (got - right).abs().max()


def test_mage_flow_is_refused(env):
    """MageFlow runs Qwen-Image's blocks in a model of its own (own timestep embedding, patch size 1): it is
    not the Qwen-Image NASA binds to, so Apply NASA Attention names it unsupported."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "MageFlow"):
        support.skip_missing_family("MageFlow", "MageFlow")
    mp = env["rm"].build_diffusion_model("MageFlow", dict(image_model="mage_flow", in_channels=16, out_channels=16,
                                                          num_layers=2, attention_head_dim=16, num_attention_heads=4,
                                                          joint_attention_dim=56, axes_dims_rope=(4, 6, 6)))
    assert not env["qwen"].matches(mp)
    with pytest.raises(ValueError, match=r"Apply NASA Attention: model family 'MageFlow' is not supported"):
        env["apply"](mp)
