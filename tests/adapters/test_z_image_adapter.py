"""NASA-I on Z-Image (ComfyUI's ZImage config on NextDiT, ZImagePixelSpace on NextDiTPixelSpace), random weights,
tiny configs from runner.random_weights.models (pad multiple 8 instead of the published 32).

Held against code written here, independent of the pack:
* a float64-attention Z-Image forward with the negative stream and NASA (or NAG, VSF) written out (``_reference``):
  the caption and the negative padded with the learned caption pad token to a multiple of 8, at positions 1..P
  (1..N for the negative); the image at P + 1 followed by learned image pad tokens at position 0; the negative's
  terms use the positions of a forward on the negative prompt (image at N + 1, its padding at 0), also for the image
  padding keys the stream attends to - giving those the positive's distances instead is detectably wrong; the
  pixel-space model's decoder head on the same backbone;
* the negative stream after the context refiner and after main layers 0 equals the caption stream of a plain
  forward on the negative - with prompts padded to different lengths where the image needs no padding, and with
  image padding where the prompts pad to the same length (the noise refiner lets the image attend to its padding,
  whose distance depends on the caption's padded length, so only then is the refined image the same in both);
* hooks counting projections: the negative goes through the caption embedder and the caption refiner once (padded
  as the caption) and once through each main layer per forward, never through the noise refiner;
* caption query rows and image-padding query rows are untouched, only image query rows are steered;
* the Omni path (reference latents) is refused by name; a model with SigLIP weights sampled without reference latents
  is steered exactly as the plain model; Lumina 2 and Z-Image never claim each other's models.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batches, widths, a second node, the canary)
run in test_contract.py on the cases "z_image" and "z_image_pixel".
"""
from __future__ import annotations

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = cases.CASES["z_image"].pos_len, cases.CASES["z_image"].neg_len     # pad to 24 and 32
MULTIPLE = 8


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing("z_image")
    return cases.family_env(comfyui, "z_image", z_image="adapters.z_image", lumina="adapters.lumina2",
                            adapters="adapters", core="nasa_core")


def _padded(n):
    return -(-n // MULTIPLE) * MULTIPLE


def _direct(env, mp, x, t, context, negative, alpha, family=None, method=None, **extra):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all
    positive), the clone loaded as the sampler loads it (which applies its object patches); ``method``
    (nasa_core.Nag, ...) as apply_nasa takes it."""
    import comfy.model_management
    if method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["adapters"].apply_nasa(mp, negative=[[negative, {}]], alpha=alpha, method=method)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], family or env["z_image"].FAMILY,
                                   method=method)
    comfy.model_management.load_models_gpu([m])
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, context.shape[1], transformer_options=options, **extra)


def _inputs(config, h=6, w=10, batch=1, neg_len=NEG_LEN, channels=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, h, w, generator=g)
    context = torch.randn(batch, POS_LEN, config["cap_feat_dim"], generator=g)
    negative = torch.randn(1, neg_len, config["cap_feat_dim"], generator=g)
    return x, torch.full((batch,), 0.7), context, negative


# ----------------------------------------------------------------------------- independent reference

def _rotate(x, ids, config):
    return support.reference_rotary(x, ids, config["axes_dims"], theta=config["rope_theta"])


_attn = support.reference_attention


def _caption_ids(b, n, first=1):
    ids = torch.zeros(b, n, 3, dtype=torch.long)
    ids[..., 0] = torch.arange(first, first + n)
    return ids


def _image_ids(b, th, tw, first_axis, pads):
    """``th * tw`` image tokens at (first_axis, row, column), then ``pads`` padding tokens at (0, 0, 0)."""
    rows = torch.arange(th).view(-1, 1).expand(th, tw)
    cols = torch.arange(tw).view(1, -1).expand(th, tw)
    ids = torch.stack((torch.full_like(rows, first_axis), rows, cols), -1).reshape(1, -1, 3)
    return torch.cat((ids, torch.zeros(1, pads, 3, dtype=torch.long)), 1).expand(b, -1, -1)


def _pad(h, token):
    return torch.cat((h, token.to(h.dtype).expand(h.shape[0], _padded(h.shape[1]) - h.shape[1], -1)), 1)


def _mods(layer, temb):
    if temb is None:
        return 0.0, 1.0, 0.0, 1.0
    s1, g1, s2, g2 = layer.adaLN_modulation(temb)[:, None].chunk(4, dim=-1)
    return s1, g1.tanh(), s2, g2.tanh()


def _project(layer, h, scale, config):
    heads, d = config["n_heads"], config["dim"] // config["n_heads"]
    att = layer.attention
    q, k, v = att.qkv(layer.attention_norm1(h) * (1 + scale)).split([heads * d] * 3, dim=-1)
    return att.q_norm(q.unflatten(-1, (heads, d))), att.k_norm(k.unflatten(-1, (heads, d))), v.unflatten(-1, (heads, d))


def _finish(layer, h, o, gate1, scale2, gate2):
    h = h + gate1 * layer.attention_norm2(layer.attention.out(o.float()))
    return h + gate2 * layer.ffn_norm2(layer.feed_forward(layer.ffn_norm1(h) * (1 + scale2)))


def _self_layer(layer, h, ids, temb, config):
    s1, g1, s2, g2 = _mods(layer, temb)
    q, k, v = _project(layer, h, s1, config)
    return _finish(layer, h, _attn(_rotate(q, ids, config), _rotate(k, ids, config), v), g1, s2, g2)


def _reference(dm, config, x, t, context, negative, alpha, pads_beside_positive=False, method=None):
    """Z-Image's forward with NASA from the paper's formula and the published structure, with the model's weights,
    attention and RoPE in float64; returns the main layers' image hidden states (B, tokens, dim) and ``temb``.
    ``pads_beside_positive``: the stream attends to the image padding keys at the distance they have from the
    positive caption (their position 0 left as it is beside the negative placed before the positive's image).
    ``method``: None (NASA), ("nag", tau, blend) or ("vsf", bias) at strength ``alpha`` (support.steered_written_out;
    VSF's one softmax sees all the positive's keys, its padding too, at their distances from the image)."""
    b, p = x.shape[0], config["patch_size"]
    th, tw = x.shape[-2] // p, x.shape[-1] // p
    temb = dm.t_embedder((1.0 - t) * config["time_scale"], dtype=x.dtype)
    cap, neg = _pad(dm.cap_embedder(context), dm.cap_pad_token), _pad(dm.cap_embedder(negative), dm.cap_pad_token)
    P, N = cap.shape[1], neg.shape[1]
    for layer in dm.context_refiner:
        cap = _self_layer(layer, cap, _caption_ids(b, P), None, config)
        neg = _self_layer(layer, neg, _caption_ids(1, N), None, config)
    neg = neg.expand(b, -1, -1)
    img = dm.x_embedder(x.view(b, -1, th, p, tw, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))
    n_img = img.shape[1]
    img = _pad(img, dm.x_pad_token)
    pads = img.shape[1] - n_img
    for layer in dm.noise_refiner:
        img = _self_layer(layer, img, _image_ids(b, th, tw, P + 1, pads), temb, config)
    h = torch.cat((cap, img), 1)
    ids = torch.cat((_caption_ids(b, P), _image_ids(b, th, tw, P + 1, pads)), 1)
    neg_ids = _caption_ids(b, N)
    image_ids = _image_ids(b, th, tw, N + 1, pads)               # where a forward on the negative has them
    if pads_beside_positive:
        image_ids = image_ids.clone()
        image_ids[:, n_img:, 0] = N - P
    image = slice(P, P + n_img)
    shifted = ids.clone()           # the positive's positions moved with the image: the same distances to it
    shifted[..., 0] += N - P
    for layer in dm.layers:
        s1, g1, s2, g2 = _mods(layer, temb)
        q, k, v = _project(layer, h, s1, config)
        nq, nk, nv = _project(layer, neg, s1, config)
        o = _attn(_rotate(q, ids, config), _rotate(k, ids, config), v)
        qi, ki = _rotate(q[:, P:], image_ids, config), _rotate(k[:, P:], image_ids, config)
        nq, nk = _rotate(nq, neg_ids, config), _rotate(nk, neg_ids, config)
        o[:, image] = support.steered_written_out(method, o[:, image], *(u.transpose(1, 2) for u in (
            qi[:, :n_img], _rotate(k, shifted, config), v, nk, nv)), alpha)
        no = _attn(nq, torch.cat((nk, ki), 1), torch.cat((nv, v[:, P:]), 1))
        h, neg = _finish(layer, h, o, g1, s2, g2), _finish(layer, neg, no, g1, s2, g2)
    return h[:, image], temb


def _latent_out(dm, config, hidden, temb, x):
    b, p = x.shape[0], config["patch_size"]
    th, tw = x.shape[-2] // p, x.shape[-1] // p
    out = dm.final_layer(hidden, temb)
    return -out.view(b, th, tw, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, x.shape[-2], x.shape[-1])


def _pixel_out(dm, config, hidden, x, t):
    """NextDiTPixelSpace's head: per-patch decoder on the raw patch and the backbone's hidden state, then (x + x0) / t."""
    b, c, H, W = x.shape
    p = config["patch_size"]
    patches = x.view(b, c, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
    n = patches.shape[1]
    out = dm.dec_net(patches.reshape(b * n, 1, -1), hidden.reshape(b * n, -1).float()).reshape(b, n, -1)
    x0 = out.view(b, H // p, W // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, H, W)
    return (x + x0) / t.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    mp, config = env["model"](), env["config"]
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(config)            # 15 image tokens + 1 pad; prompts padded to 24 and 32
    got = _direct(env, mp, x, t, context, negative, 1.0)
    with torch.no_grad():
        want, base, wrong = (_latent_out(dm, config, *_reference(dm, config, x, t, context, negative, alpha, **kw), x)
                             for alpha, kw in ((1.0, {}), (0.0, {}), (1.0, {"pads_beside_positive": True})))
    support.check_close(got, want, base)
    assert (got - wrong).abs().max() > 10 * (got - want).abs().max()    # the padding keys' positions show


def test_pixel_space_matches_independent_reference(env):
    """ZImagePixelSpace: the same backbone and stream, the per-patch decoder head on the steered hidden states."""
    cases.skip_if_missing("z_image_pixel")
    mp, config = cases.model(env["rm"], "z_image_pixel"), env["rm"].DIT_FAMILIES["z_image_pixel"][1]
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(config, h=20, w=28, channels=3)      # 35 patches + 5 pads
    got = _direct(env, mp, x, t, context, negative, 1.0)
    with torch.no_grad():
        want, base = (_pixel_out(dm, config, _reference(dm, config, x, t, context, negative, alpha)[0], x, t)
                      for alpha in (1.0, 0.0))
    support.check_close(got, want, base)


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the main layers' image query rows (not the image padding's) equal the methods written out on
    the reference (VSF's one softmax over the layer's caption, image and image padding keys and the negative
    stream's); at zero strength the output is the unpatched model's, bit for bit."""
    mp, config = env["model"](), env["config"]
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(config)            # 15 image tokens + 1 pad; prompts padded to 24 and 32
    obj, off = support.method_objects(env["core"], method)
    got = _direct(env, mp, x, t, context, negative, obj.strength, method=obj)
    with torch.no_grad():
        want, base = (_latent_out(dm, config, *_reference(dm, config, x, t, context, negative, alpha, method=m), x)
                      for alpha, m in ((obj.strength, method), (0.0, None)))
        plain = dm(x, t, context, POS_LEN, transformer_options={})
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, x, t, context, negative, off.strength, method=off), plain)


@pytest.mark.parametrize("h, w, neg_len", [(8, 8, NEG_LEN), (6, 10, 22)],
                         ids=["captions_padded_differently", "image_padding_captions_padded_alike"])
def test_negative_stream_equals_a_real_forward_on_the_negative(env, h, w, neg_len):
    """What enters main layers 0 and 1 (their attention_norm1): NASA's negative stream vs the caption part of an
    unpatched forward whose prompt is the negative (same image and timestep). Layer 0's input is the padded, refined
    caption; layer 1's has attended to the image (and its padding) with the negative's own positions."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, negative = _inputs(env["config"], h=h, w=w, neg_len=neg_len)
    n = _padded(neg_len)
    assert n != _padded(POS_LEN) or (h // 2) * (w // 2) % MULTIPLE       # one of the two layouts named
    norms = {f"layer{i}": dm.layers[i].attention_norm1 for i in (0, 1)}
    with support.Inputs(**norms) as seen:
        _direct(env, mp, x, t, context, negative, 1.0)
    with support.Inputs(**norms) as real, torch.no_grad():
        dm(x, t, negative, neg_len, transformer_options={})
    for name in norms:
        support.same_stream(seen[name], [s[:, :n] for s in real[name]], n)


def test_negative_goes_through_the_caption_path_once_and_every_main_layer_once_per_forward(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = cases.conds(env["rm"], "z_image")
    image = _padded(3 * 5)
    P, N = _padded(POS_LEN), _padded(NEG_LEN)
    modules = {(group, i): layer.attention.qkv for group in ("context_refiner", "noise_refiner", "layers")
               for i, layer in enumerate(getattr(dm, group))}
    with support.Lengths(modules) as lengths, support.Lengths([dm.cap_embedder]) as embeds, \
            support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), "z_image", pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    assert sorted(embeds.calls[0]) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN]
    for (group, i), seen in lengths.calls.items():
        if group == "context_refiner":                       # padded caption once, padded negative once
            assert sorted(seen) == [P, P, N, N], (group, i, seen)
        elif group == "noise_refiner":                       # the padded image only
            assert seen == [image, image], (group, i, seen)
        else:                                                # [caption; image; padding] once, negative once
            assert sorted(seen) == sorted([N, N, P + image, P + image]), (group, i, seen)


def test_only_image_queries_are_steered(env):
    """In main layer 0 the caption tokens' and the image padding tokens' attention outputs (input of attention.out)
    are bit-identical with and without NASA; the image tokens' are not."""
    mp = env["model"]()
    args = _inputs(env["config"])                            # 15 image tokens + 1 pad
    P = _padded(POS_LEN)
    with support.Inputs(out=mp.model.diffusion_model.layers[0].attention.out) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    joint = [s for s in seen["out"] if s.shape[1] == P + 16]
    untouched = [torch.cat((s[:, :P], s[:, P + 15:]), 1) for s in joint]
    support.unchanged_then_changed(untouched, [s[:, P:P + 15] for s in joint])


def test_omni_reference_latents_are_refused(env):
    """NextDiT's Omni path (reference latents and their captions in the sequence, modulated at timestep 0, the batch
    doubled) lays the sequence out otherwise: a NASA forward with reference latents raises, naming them."""
    mp, config = env["model"](), env["config"]
    x, t, context, negative = _inputs(config)
    ref = torch.randn(1, 16, 6, 10, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match=r"test: this Z-Image run has reference latents"):
        _direct(env, mp, x, t, context, negative, 1.0, ref_latents=[ref], ref_contexts=[context])


def test_siglip_model_without_reference_latents_is_steered_as_z_image(env):
    """A checkpoint with the Omni SigLIP weights, sampled without reference latents, runs the plain layout: NASA
    steers it, and exactly as the model without them (the shared weights are the same: drawn by name)."""
    mp = env["model"]()
    omni = env["model"](siglip_feat_dim=24)
    assert omni.model.diffusion_model.siglip_embedder is not None and env["z_image"].matches(omni)
    args = _inputs(env["config"])
    got = _direct(env, omni, *args, 1.0)
    assert torch.equal(got, _direct(env, mp, *args, 1.0))
    assert not torch.equal(got, _direct(env, omni, *args, 0.0))


def test_lumina2_and_z_image_never_claim_each_other(env):
    """Both run on NextDiT: the config classes and structure tell them apart, in both directions."""
    adapters = env["z_image"]
    lumina = env["lumina"]
    z, pixel = env["model"](), cases.model(env["rm"], "z_image_pixel")
    l2 = env["rm"].build_dit_model("lumina2")
    assert adapters.matches(z) and adapters.matches(pixel) and not adapters.matches(l2)
    assert lumina.matches(l2) and not lumina.matches(z) and not lumina.matches(pixel)
    # the Lumina2 config with Z-Image's structure (pad tokens, Z-Image modulation) is neither family's
    hybrid = env["rm"].build_diffusion_model("Lumina2", env["config"])
    assert not adapters.matches(hybrid) and not lumina.matches(hybrid)
    with pytest.raises(ValueError, match=r"Apply NASA Attention: model family 'Lumina2' is not supported"):
        env["apply"](hybrid)


def test_object_patches_leave_with_the_nasa_model(env):
    """After a NASA run, loading the plain model restores every main layer's own forward and its output."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], "z_image")
    before = cases.sample(mp, "z_image", pos, neg, steps=2)
    cases.sample(env["apply"](mp, alpha=1.0), "z_image", pos, neg, steps=2)
    after = cases.sample(mp, "z_image", pos, neg, steps=2)
    assert torch.equal(before, after)
    for layer in mp.model.diffusion_model.layers:
        assert getattr(layer.forward, "__func__", None) is type(layer).forward
