"""NASA-I on ComfyUI's own Lumina 2 class, NextDiT (random weights, tiny config from runner.random_weights.models).

Held against code written here, independent of the pack:
* a float64-attention NextDiT forward with the negative stream and NASA (or NAG, VSF) written out
  (``_reference``): the negative goes through the caption embedder and context refiner, then each main
  layer's weights; its RoPE is that of a forward on the negative prompt (captions 0..N-1, the image right
  after them at N), applied there to the image's queries and keys too; giving it the positive's image
  positions instead is detectably wrong,
* hooks counting projections: one context-refiner pass and one projection per main layer for the negative
  per forward, none in the noise refiner,
* the negative stream after the context refiner and after main layer 0 equals the caption stream of a
  plain forward on the negative,
* caption-query rows are untouched; a caption padding mask stays on the positive where the model honours it
  (0.3.64) and NASA places the image where the model does where it does not (0.33); cfg 1 runs one pass per
  step; NASA's object patches are gone from the layers once the plain model is loaded again,
* the variants ComfyUI builds on NextDiT that this family does not steer, where this ComfyUI has them: NewBie and
  the Omni reference path are refused with an error naming them, Z-Image is left to adapters.z_image.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows in one batch or separate passes, batches,
widths, a second node, the canary) run in test_contract.py.

The reference gives the caption positions 0..P-1 and the image P (ComfyUI 0.3.64's layout); 0.33 counts from
1 (caption 1..P, image P+1). Rotary attention depends on position differences only, so one reference holds
for both.

The random-weight builder leaves RMSNorm weights at 0 (every caption embedding, query and key, and every
layer's residual branch would be zero); the model here gets weights drawn around 1 (family_cases.py).
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = cases.CASES["lumina2"].pos_len, cases.CASES["lumina2"].neg_len   # distinct, for hooks
H, W = 8, 12                   # latent size: 4 x 6 = 24 image tokens
IMAGE_TOKENS = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def env(comfyui):
    return cases.family_env(comfyui, "lumina2", lumina="adapters.lumina2", z_image="adapters.z_image",
                            adapters="adapters", core="nasa_core")


def _width(config):
    return config["cap_feat_dim"]


def _direct(env, mp, x, t, context, negative, alpha, attention_mask=None, method=None, **extra):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all
    positive). The clone is loaded as the sampler loads it, which applies its object patches. ``method``
    (nasa_core.Nag, ...) as apply_nasa takes it; ``extra``: more keyword arguments of the model's forward."""
    import comfy.model_management
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["lumina"].FAMILY, method=method)
    comfy.model_management.load_models_gpu([m])
    num_tokens = context.shape[1] if attention_mask is None else int(attention_mask[0].sum())
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, num_tokens, attention_mask=attention_mask,
                                       transformer_options=options, **extra)


# ----------------------------------------------------------------------------- independent reference

_rotate, _attn = support.reference_rotary, support.reference_attention     # float64, written out in support


def _caption_ids(b, n):
    ids = torch.zeros(b, n, 3, dtype=torch.long)
    ids[..., 0] = torch.arange(n)
    return ids


def _image_ids(b, first_axis):
    """Image tokens after a caption of ``first_axis`` tokens: (first_axis, row, column)."""
    rows = torch.arange(H // 2).view(-1, 1).expand(H // 2, W // 2)
    cols = torch.arange(W // 2).view(1, -1).expand(H // 2, W // 2)
    ids = torch.stack((torch.full_like(rows, first_axis), rows, cols), -1).reshape(1, -1, 3)
    return ids.expand(b, -1, -1)


def _mods(layer, temb):
    """adaLN scale/tanh-gate pairs of a layer; the context refiner has none."""
    if temb is None:
        return 0.0, 1.0, 0.0, 1.0
    s1, g1, s2, g2 = layer.adaLN_modulation(temb)[:, None].chunk(4, dim=-1)
    return s1, g1.tanh(), s2, g2.tanh()


def _project(layer, h, scale, config):
    """Queries, keys, values (B, L, heads, D) after the q/k norms; kv head j // (heads / kv heads) serves head j."""
    heads, kv = config["n_heads"], config["n_kv_heads"]
    d = config["dim"] // heads
    att = layer.attention
    q, k, v = att.qkv(layer.attention_norm1(h) * (1 + scale)).split([heads * d, kv * d, kv * d], dim=-1)
    share = torch.arange(heads) // (heads // kv)
    q, k, v = att.q_norm(q.unflatten(-1, (heads, d))), att.k_norm(k.unflatten(-1, (kv, d))), v.unflatten(-1, (kv, d))
    return q, k[:, :, share], v[:, :, share]


def _finish(layer, h, o, gate1, scale2, gate2):
    h = h + gate1 * layer.attention_norm2(layer.attention.out(o.float()))
    return h + gate2 * layer.ffn_norm2(layer.feed_forward(layer.ffn_norm1(h) * (1 + scale2)))


def _self_layer(layer, h, ids, temb, config):
    s1, g1, s2, g2 = _mods(layer, temb)
    q, k, v = _project(layer, h, s1, config)
    axes = config["axes_dims"]
    return _finish(layer, h, _attn(_rotate(q, ids, axes), _rotate(k, ids, axes), v), g1, s2, g2)


def _reference(dm, config, x, t, context, negative, alpha, negative_beside_positive=False, method=None):
    """NextDiT forward with NASA from the paper's formula and the published structure, with the model's weights;
    attention and RoPE in float64. The negative's terms use the positions of a forward on the negative prompt
    (``negative_beside_positive``: the negative at 0..N-1 but the image where the positive put it, to show that
    choice is caught). ``method``: None (NASA), ("nag", tau, blend) or ("vsf", bias) at strength ``alpha``
    (support.steered_written_out; VSF's one softmax sees the positive keys at their distances from the image)."""
    axes, b = config["axes_dims"], x.shape[0]
    temb = dm.t_embedder(1.0 - t, dtype=x.dtype)
    cap, neg = dm.cap_embedder(context), dm.cap_embedder(negative)
    P, N = cap.shape[1], neg.shape[1]
    for layer in dm.context_refiner:
        cap = _self_layer(layer, cap, _caption_ids(b, P), None, config)
        neg = _self_layer(layer, neg, _caption_ids(1, N), None, config)
    neg = neg.expand(b, -1, -1)
    img = dm.x_embedder(x.view(b, -1, H // 2, 2, W // 2, 2).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))
    for layer in dm.noise_refiner:
        img = _self_layer(layer, img, _image_ids(b, P), temb, config)
    h = torch.cat((cap, img), 1)
    ids = torch.cat((_caption_ids(b, P), _image_ids(b, P)), 1)
    image_ids_for_negative = _image_ids(b, P if negative_beside_positive else N)
    shifted = ids.clone()           # the positive's positions moved with the image: the same distances to it
    shifted[..., 0] += image_ids_for_negative[0, 0, 0] - P
    for layer in dm.layers:
        s1, g1, s2, g2 = _mods(layer, temb)
        q, k, v = _project(layer, h, s1, config)
        nq, nk, nv = _project(layer, neg, s1, config)
        o = _attn(_rotate(q, ids, axes), _rotate(k, ids, axes), v)
        qi, ki = _rotate(q[:, P:], image_ids_for_negative, axes), _rotate(k[:, P:], image_ids_for_negative, axes)
        nq, nk = _rotate(nq, _caption_ids(b, N), axes), _rotate(nk, _caption_ids(b, N), axes)
        o[:, P:] = support.steered_written_out(method, o[:, P:], *(u.transpose(1, 2) for u in (
            qi, _rotate(k, shifted, axes), v, nk, nv)), alpha)
        no = _attn(nq, torch.cat((nk, ki), 1), torch.cat((nv, v[:, P:]), 1))
        h, neg = _finish(layer, h, o, g1, s2, g2), _finish(layer, neg, no, g1, s2, g2)
    out = dm.final_layer(h, temb)[:, P:]
    return -out.view(b, H // 2, W // 2, 2, 2, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, H, W)


def _inputs(config, batch=1, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, H, W, generator=g)
    context = torch.randn(batch, POS_LEN, _width(config), generator=g)
    negative = torch.randn(1, NEG_LEN, _width(config), generator=g)
    return x, torch.full((batch,), 0.7), context, negative


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    got = _direct(env, mp, x, t, context, negative, 1.0)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        want = _reference(dm, config, x, t, context, negative, 1.0)
        base = _reference(dm, config, x, t, context, negative, 0.0)
        wrong = _reference(dm, config, x, t, context, negative, 1.0, negative_beside_positive=True)
    support.check_close(got, want, base)
    assert (got - wrong).abs().max() > 10 * (got - want).abs().max()    # the negative's RoPE positions show


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the main layers' image query rows equal the methods written out on the reference (VSF's one
    softmax over the layer's caption and image keys and the negative stream's); at zero strength the output is the
    unpatched model's, bit for bit."""
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    obj, off = support.method_objects(env["core"], method)
    got = _direct(env, mp, x, t, context, negative, obj.strength, method=obj)
    with torch.no_grad():
        dm = mp.model.diffusion_model
        want = _reference(dm, config, x, t, context, negative, obj.strength, method=method)
        base = _reference(dm, config, x, t, context, negative, 0.0)
        plain = dm(x, t, context, POS_LEN, transformer_options={})
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, x, t, context, negative, off.strength, method=off), plain)


def test_negative_goes_through_the_caption_path_once_and_every_main_layer_once_per_forward(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = cases.conds(env["rm"], "lumina2")
    modules = {(group, i): layer.attention.qkv for group in ("context_refiner", "noise_refiner", "layers")
               for i, layer in enumerate(getattr(dm, group))}
    with support.Lengths(modules) as lengths, support.Lengths([dm.cap_embedder]) as embeds, \
            support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), "lumina2", pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    assert sorted(embeds.calls[0]) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN]
    for (group, i), seen in lengths.calls.items():
        if group == "context_refiner":                       # caption once, negative once
            assert sorted(seen) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (group, i, seen)
        elif group == "noise_refiner":                       # the image only
            assert seen == [IMAGE_TOKENS, IMAGE_TOKENS], (group, i, seen)
        else:                                                # [caption; image] once, negative once
            assert sorted(seen) == [NEG_LEN, NEG_LEN, POS_LEN + IMAGE_TOKENS, POS_LEN + IMAGE_TOKENS], (group, i, seen)


def test_negative_stream_equals_a_real_forward_on_the_negative(env):
    """What enters main layers 0 and 1 (their attention_norm1): NASA's negative stream vs the caption part of an
    unpatched forward whose prompt is the negative (same image and timestep). Layer 0's input is the refined
    caption; layer 1's has attended to the image with the negative's own RoPE positions."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(env["config"])
    norms = {f"layer{i}": dm.layers[i].attention_norm1 for i in (0, 1)}
    with support.Inputs(**norms) as seen:
        _direct(env, mp, x, t, context, negative, 1.0)
    with support.Inputs(**norms) as real, torch.no_grad():
        dm(x, t, negative, NEG_LEN, transformer_options={})
    for name in norms:                                       # the plain forward's layers see [negative; image]
        support.same_stream(seen[name], [s[:, :NEG_LEN] for s in real[name]], NEG_LEN)


def test_only_image_queries_are_steered(env):
    """In main layer 0 the caption tokens' attention output (input of attention.out) is bit-identical with and
    without NASA; the image tokens' is not."""
    mp = env["model"]()
    args = _inputs(env["config"])
    with support.Inputs(out=mp.model.diffusion_model.layers[0].attention.out) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    joint = [s for s in seen["out"] if s.shape[1] == POS_LEN + IMAGE_TOKENS]
    support.unchanged_then_changed([s[:, :POS_LEN] for s in joint], [s[:, POS_LEN:] for s in joint])


def test_caption_padding_mask_stays_on_the_positive(env):
    """A positive padded with 5 random tokens under a mask. A model that honours the mask (0.3.64: the unpatched
    model gives what the unpadded positive gives) gives that with NASA too: the padding never reaches the image,
    and the mask never reaches the negative, whose lengths differ. A model that ignores it (0.33: the padding is
    caption, the image follows all 25 tokens) gives with NASA what it gives without the mask, and that is the
    reference on the padded caption: NASA places the image where the model does, not after the mask's 20."""
    mp, config = env["model"](), env["config"]
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(config)
    padded = torch.cat((context, torch.randn(1, 5, _width(config), generator=torch.Generator().manual_seed(4))), 1)
    mask = torch.cat((torch.ones(1, POS_LEN), torch.zeros(1, 5)), 1).long()
    with torch.no_grad():
        plain_padded = dm(x, t, padded, POS_LEN, attention_mask=mask, transformer_options={})
        plain = dm(x, t, context, POS_LEN, transformer_options={})
        plain_unmasked = dm(x, t, padded, POS_LEN + 5, transformer_options={})
    honoured = (plain_padded - plain).abs().max() < 1e-4 * plain.abs().max()
    assert honoured or torch.allclose(plain_padded, plain_unmasked, rtol=1e-4, atol=1e-5)   # one or the other
    got = _direct(env, mp, x, t, padded, negative, 1.0, attention_mask=mask)
    if honoured:
        torch.testing.assert_close(got, _direct(env, mp, x, t, context, negative, 1.0), rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(got, _direct(env, mp, x, t, padded, negative, 1.0), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            want = _reference(dm, config, x, t, padded, negative, 1.0)
            base = _reference(dm, config, x, t, padded, negative, 0.0)
        support.check_close(got, want, base)


def test_rows_with_different_caption_lengths_are_refused(env):
    """Where the model masks caption padding in its main layers (0.3.64), a row's image follows that row's own
    caption; rows whose masks say their captions differ in length have their images at different places, and
    NASA refuses the batch. Held on the layers' mask as 0.3.64 builds it (additive, -max on the padding): the
    model itself cannot run such a batch through its caption refiner in 0.3.64, and 0.33 ignores the mask."""
    lumina = env["lumina"]
    state = SimpleNamespace(info={"image_tokens": IMAGE_TOKENS})
    x = torch.zeros(2, POS_LEN + IMAGE_TOKENS, 8)
    mask = torch.zeros(2, POS_LEN + IMAGE_TOKENS)
    mask[1, POS_LEN - 3:POS_LEN] = -torch.finfo(torch.float32).max
    with pytest.raises(ValueError, match=r"test: this Lumina 2 batch holds captions of different lengths \[17, 20\]"):
        lumina.image_tokens(state, x, mask, "test")
    image = slice(POS_LEN, POS_LEN + IMAGE_TOKENS)
    assert lumina.image_tokens(state, x, torch.zeros_like(mask), "test") == image
    assert lumina.image_tokens(state, x, None, "test") == image


def test_object_patches_leave_with_the_nasa_model(env):
    """After a NASA run, loading the plain model restores every main layer's own forward and its output."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], "lumina2")
    before = cases.sample(mp, "lumina2", pos, neg, steps=2)
    cases.sample(env["apply"](mp, alpha=1.0), "lumina2", pos, neg, steps=2)
    after = cases.sample(mp, "lumina2", pos, neg, steps=2)
    assert torch.equal(before, after)
    for layer in mp.model.diffusion_model.layers:
        assert getattr(layer.forward, "__func__", None) is type(layer).forward


def _refused(env, mp, name):
    assert not env["lumina"].matches(mp)
    with pytest.raises(ValueError, match=rf"Apply NASA Attention: model family '{name}' is not supported"):
        env["apply"](mp)


def test_z_image_is_not_lumina2(env):
    """Z-Image (ComfyUI's ZImage config on NextDiT: caption and image padding tokens, its own modulation and
    timestep scale) is not the Lumina 2 this adapter binds to: adapters.z_image claims it (test_z_image_adapter.py)."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "ZImage"):
        support.skip_missing_family("Z-Image", "ZImage")
    mp = env["rm"].build_dit_model("z_image")
    assert not env["lumina"].matches(mp)
    assert env["adapters"].find_adapter(mp) is env["z_image"].FAMILY


def test_newbie_is_refused(env):
    """NewBie (the Lumina2 config with a pooled CLIP projection in the layers' modulation): the config class alone
    does not tell it from Lumina 2, the model's structure does."""
    from comfy.ldm.lumina.model import NextDiT
    if "clip_text_dim" not in inspect.signature(NextDiT.__init__).parameters:
        support.skip_missing_family("NewBie", "NextDiT(clip_text_dim)")
    _refused(env, env["rm"].build_dit_model("lumina2", clip_text_dim=32), "Lumina2")


def test_omni_reference_latents_are_refused(env):
    """NextDiT's Omni path (reference latents and their captions in the sequence, modulated at timestep 0) gives
    the layers another layout: a NASA forward with reference latents raises, naming them."""
    from comfy.ldm.lumina.model import NextDiT
    if "ref_latents" not in inspect.signature(NextDiT._forward).parameters:
        support.skip_missing_family("Lumina 2 Omni", "NextDiT._forward(ref_latents)")
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    ref = torch.randn(1, 16, H, W, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match=r"test: this Lumina 2 run has reference latents"):
        _direct(env, mp, x, t, context, negative, 1.0, ref_latents=[ref], ref_contexts=[context])
