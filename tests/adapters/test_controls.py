"""Controls of Apply NASA Attention (Advanced) and NASA Negative: the sampling window and alpha ramp, block
selection with multipliers, several negatives, masked (regional) negatives.

Pure-torch checks of nasa_core.controls, then ComfyUI's own classes with random weights (tiny SD1.5 UNet,
FLUX, Wan 2.1), each held against code written here:
* window edges: at sigma = percent_to_sigma(start/end) NASA acts, just outside it the model output is
  bit-identical to the unpatched model (a probe sampler evaluates one fixed input at chosen sigmas);
* the alpha ramp equals Apply NASA Attention at the ramped alpha;
* block selection: the negative is projected exactly by the selected layers, the result equals a
  reference steering only those layers with their multipliers, and all-zero multipliers are bit-identical;
* several negatives equal the reference sum of alpha_i * Z-_i;
* a mask confines the change: at the first steered layer every token outside the mask's region is
  bit-identical to the unpatched model (UNet, FLUX image tokens, Wan video frames).
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_test_support as support
from nasa_core.attention import NegativeTerm, attention, reference_nasa_attention, steer
from nasa_core.controls import Schedule, parse_blocks, sigma_to_percent, token_grid, token_region

LONG = ("a very long negative prompt " * 20).strip()   # encodes to 154 tokens: hooks tell it from the 77 positive
ADV = "Apply NASA Attention (Advanced)"
GROUPS = {"input": [1, 2, 4, 5, 7, 8], "middle": [0], "output": list(range(12))}


# ----------------------------------------------------------------------------- pure: block selections

def test_parse_blocks_ranges_groups_and_multipliers():
    sel = parse_blocks("input:4-8, middle, output:0-2*0.5", GROUPS, "N")
    assert sel == {("input", 4): 1.0, ("input", 5): 1.0, ("input", 7): 1.0, ("input", 8): 1.0, ("middle", 0): 1.0,
                   ("output", 0): 0.5, ("output", 1): 0.5, ("output", 2): 0.5}
    assert parse_blocks("", GROUPS, "N") is None and parse_blocks(" all ", GROUPS, "N") is None
    later = parse_blocks("output; output:5 * 0.25\nMIDDLE*2", GROUPS, "N")
    assert later[("output", 5)] == 0.25 and later[("output", 4)] == 1.0 and later[("middle", 0)] == 2.0


@pytest.mark.parametrize("text, needle", [
    ("input:4-", "cannot read 'input:4-'"),
    ("inptu:1", "names block group 'inptu'"),
    ("output:12", "out of range"),
    ("input:0", "selects no block"),
    ("input:8-4", "empty range"),
    ("middle*x", "not a number"),
    ("middle*11", "between 0 and 10"),
    (", ,", "no block selected"),
])
def test_parse_blocks_errors_name_the_input_and_the_blocks(text, needle):
    with pytest.raises(ValueError) as e:
        parse_blocks(text, GROUPS, "Node X: 'blocks'", "this SD15 model")
    msg = str(e.value)
    assert msg.startswith("Node X: 'blocks'") and needle in msg, msg
    if needle not in ("empty range", "not a number", "between 0 and 10"):
        assert "1-2, 4-5, 7-8" in msg, msg          # the blocks this model has, to fix it with


# ----------------------------------------------------------------------------- pure: schedule, grids, regions

def test_schedule_window_ramp_and_percent_inverse():
    def p2s(p):               # a decreasing schedule like ComfyUI's discrete one
        return 999999999.9 if p <= 0 else 0.0 if p >= 1 else 14.6 * math.exp(-6 * p)
    s = Schedule(0.2, 0.6, 0.0).check("N")
    assert s.inside(p2s(0.2), p2s) and s.inside(p2s(0.6), p2s)
    assert not s.inside(p2s(0.2) * 1.0001, p2s) and not s.inside(p2s(0.6) * 0.9999, p2s)
    assert s.ramp(0.2) == 1.0 and s.ramp(0.6) == 0.0 and abs(s.ramp(0.4) - 0.5) < 1e-12
    for p in (0.0, 0.13, 0.5, 0.999):
        assert abs(sigma_to_percent(p2s(p), p2s) - p) < 1e-9
    with pytest.raises(ValueError, match="start_percent 0.7 is after end_percent 0.3"):
        Schedule(0.7, 0.3).check("N")
    assert Schedule().is_default and not Schedule(0.0, 1.0, 0.5).is_default


def test_token_grid_and_region():
    assert token_grid((15, 9), 8 * 5) == (1, 8, 5)          # ceil division, as strided convs and patch padding
    assert token_grid((3, 8, 8), 3 * 16) == (3, 4, 4)
    assert token_grid((8, 8), 7) is None
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    r = token_region(left, (8, 8), 16)                       # a 4x4 layer of an 8x8 latent
    assert torch.equal(r.view(4, 4), torch.tensor([[1., 1., 0., 0.]] * 4))
    # area crop: the layer sees latent columns 4..7 (the right half): nothing of the left-half mask
    assert token_region(left, (8, 8), 8, area=((0, 8), (4, 4))).abs().sum() == 0
    frames = torch.zeros(2, 16, 16)
    frames[0] = 1
    assert torch.equal(token_region(frames, (2, 4, 4), 2 * 4).view(2, 4), torch.tensor([[1.] * 4, [0.] * 4]))


def test_steer_with_region_equals_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 8, generator=g)
    kp, vp = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    terms = [NegativeTerm(torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g), 0.8,
                          region=torch.tensor([1., 1., 0., 0., 0.5, 0.])),
             NegativeTerm(torch.randn(1, 7, 8, generator=g), torch.randn(1, 7, 8, generator=g), 0.3)]
    z = attention(q, kp, vp, 2)
    got = steer(z, q, terms, 2, steer_rows=[0, 2])
    assert torch.allclose(got, reference_nasa_attention(q, kp, vp, terms, 2, steer_rows=[0, 2]), atol=1e-5)
    assert not torch.equal(got[0, [2, 3, 5]], z[0, [2, 3, 5]])     # the second negative has no mask: acts there
    only_masked = steer(z, q, terms[:1], 2)
    assert torch.equal(only_masked[:, [2, 3, 5]], z[:, [2, 3, 5]])       # region 0: bit-identical tokens
    assert not torch.equal(only_masked[:, [0, 1, 4]], z[:, [0, 1, 4]])


# ----------------------------------------------------------------------------- UNet (tiny SD1.5)

@pytest.fixture(scope="module")
def sd(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_unet_model("sd15", "tiny", seed=0)
    clip = rm.build_clip("sd15", "tiny", seed=0)

    def encode(text):
        return nodes.CLIPTextEncode().encode(clip, text)[0]

    unet = comfyui.mod("adapters.unet")
    return dict(mp=mp, encode=encode, pos=encode("a photo of a cat"), neg=encode(LONG), glasses=encode("glasses"),
                layers=unet.cross_attention_layers(mp.model.diffusion_model), groups=unet.block_groups(mp))


_advanced = support.apply_nasa_advanced


def _negative(cond, alpha=-1.0, mask=None, previous=None):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS["NASANegative"].execute(negative=cond, alpha=alpha, mask=mask,
                                                              negatives=previous).result[0]


def _latent(size=16):
    return torch.zeros(1, 4, size, size)


def _explicit(q, k, v, heads):
    b, lq, c = q.shape
    d = c // heads
    qh = q.double().reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.double().expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.double().expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, lq, c)


def _left_half_weights(extra, n_tokens):
    """Reference region of a left-half mask: token (row, col) of a layer's h x w grid is inside iff col < w/2."""
    _, _, hh, ww = extra["original_shape"]
    f = math.sqrt(hh * ww / n_tokens)
    w = round(ww / f)
    cols = torch.arange(n_tokens) % w
    return (cols < w / 2).double()[None, :, None]


def _reference_unet(sd, negs, scale_of=lambda key: 1.0):
    """A clone steering with NASA written out here: ``negs`` = [(cond tensor, alpha, left_half_only)]."""
    m = sd["mp"].clone()
    for key, attn in sd["layers"].items():
        def ref(q, k, v, extra, attn=attn, key=key):
            heads = extra["n_heads"]
            z = _explicit(q, k, v, heads)
            for neg, alpha, left in negs:
                neg = neg.to(q.dtype)
                delta = alpha * scale_of(key) * _explicit(q, attn.to_k(neg), attn.to_v(neg), heads)
                z = z - (delta * _left_half_weights(extra, q.shape[1]) if left else delta)
            return z.to(q.dtype)
        m.set_model_attn2_replace(ref, *key)
    return m


def _sample(m, sd, neg=None, latent=None, **kw):
    return support.sample(m, _latent() if latent is None else latent, sd["pos"], sd["neg"] if neg is None else neg,
                          **kw)


def test_window_edges_are_exact(sd):
    """Inside [percent_to_sigma(end), percent_to_sigma(start)] NASA acts; one step outside, the output is the
    unpatched model's, bit for bit."""
    ms = sd["mp"].get_model_object("model_sampling")
    s_start, s_end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.6)
    sigmas = [s_start * 1.002, s_start, (s_start + s_end) / 2, s_end, s_end * 0.998]
    plain = support.probe(sd["mp"], _latent(), sd["pos"], sd["neg"], sigmas)
    nasa = support.probe(_advanced(sd["mp"], start_percent=0.2, end_percent=0.6), _latent(), sd["pos"], sd["neg"],
                         sigmas)
    assert torch.equal(nasa[0], plain[0]) and torch.equal(nasa[4], plain[4])
    for i in (1, 2, 3):
        assert (nasa[i] - plain[i]).abs().max() > 1e-3, i


def test_linear_ramp_equals_alpha_times_ramp(sd):
    ms = sd["mp"].get_model_object("model_sampling")
    sigmas = [ms.percent_to_sigma(0.25), ms.percent_to_sigma(0.75)]
    ramped = support.probe(_advanced(sd["mp"], alpha=0.8, alpha_end_scale=0.0), _latent(), sd["pos"], sd["neg"], sigmas)
    for sigma, out, factor in zip(sigmas, ramped, (0.75, 0.25)):
        want = support.probe(support.apply_nasa(sd["mp"], alpha=0.8 * factor), _latent(), sd["pos"], sd["neg"], [sigma])
        assert torch.allclose(out, want[0], atol=1e-5, rtol=1e-5)


def _count_negative_projections(sd, m):
    hits = {key: 0 for key in sd["layers"]}
    handles = []
    for key, attn in sd["layers"].items():
        def hook(module, args, output, key=key):
            hits[key] += int(args[0].shape[1] == 154)
        handles.append(attn.to_k.register_forward_hook(hook))
    try:
        _sample(m, sd)
    finally:
        for h in handles:
            h.remove()
    return hits


def test_block_selection_projects_the_negative_in_the_selected_layers_only(sd):
    assert sd["groups"]["middle"] == [0] and len(sd["groups"]["input"]) >= 2 and len(sd["groups"]["output"]) >= 3
    first_in, last_out = sd["groups"]["input"][0], sd["groups"]["output"][-1]
    hits = _count_negative_projections(sd, _advanced(sd["mp"], blocks=f"input:{first_in}, middle, output:{last_out}"))
    selected = {k for k in hits if (k[0], k[1]) in {("input", first_in), ("middle", 0), ("output", last_out)}}
    assert selected and all(hits[k] == 1 for k in selected), hits
    assert all(hits[k] == 0 for k in hits if k not in selected), hits


def test_block_selection_with_multipliers_matches_reference(sd):
    out_ids = sd["groups"]["output"]
    half = out_ids[len(out_ids) // 2]
    blocks = f"input, output:{half}-{out_ids[-1]}*0.5"

    def scale_of(key):
        return {"input": 1.0, "middle": 0.0}.get(key[0], 0.5 if key[1] >= half else 0.0)
    got = _sample(_advanced(sd["mp"], alpha=0.7, blocks=blocks), sd)
    want = _sample(_reference_unet(sd, [(sd["neg"][0][0], 0.7, False)], scale_of), sd)
    base = _sample(sd["mp"], sd)
    support.check_close(got, want, base)


def test_all_zero_multipliers_are_bit_identical(sd):
    m = _advanced(sd["mp"], blocks="input*0, middle*0, output*0")
    assert torch.equal(_sample(m, sd), _sample(sd["mp"], sd))


def test_several_negatives_equal_the_reference_sum(sd):
    negs = _negative(sd["glasses"], 0.8, previous=_negative(sd["neg"], -1.0))     # the second inherits alpha 0.3
    got = _sample(_advanced(sd["mp"], alpha=0.3, negatives=negs), sd)
    want = _sample(_reference_unet(sd, [(sd["neg"][0][0], 0.3, False), (sd["glasses"][0][0], 0.8, False)]), sd)
    support.check_close(got, want, _sample(sd["mp"], sd))


def _left_mask(size=128):
    m = torch.zeros(size, size)
    m[:, : size // 2] = 1.0
    return m


def test_mask_confines_the_change_and_matches_reference(sd):
    key = min(sd["layers"], key=lambda k: ({"input": 0, "middle": 1, "output": 2}[k[0]], k[1], k[2]))
    outs = {}

    def run(m, name):
        h = sd["layers"][key].to_out.register_forward_hook(lambda mod, a, o: outs.setdefault(name, o.clone()))
        try:
            return _sample(m, sd)
        finally:
            h.remove()
    masked = run(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=_left_mask())), "masked")
    run(sd["mp"], "plain")
    n = outs["plain"].shape[1]
    inside = _left_half_weights({"original_shape": [1, 4, 16, 16]}, n)[0, :, 0].bool()
    assert torch.equal(outs["masked"][:, ~inside], outs["plain"][:, ~inside])      # first steered layer
    assert (outs["masked"][:, inside] - outs["plain"][:, inside]).abs().max() > 1e-4
    want = _sample(_reference_unet(sd, [(sd["neg"][0][0], 1.0, True)]), sd)
    support.check_close(masked, want, _sample(sd["mp"], sd))


def test_full_and_empty_masks(sd):
    full = _sample(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=torch.ones(1, 64, 64))), sd)
    assert torch.allclose(full, _sample(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0)), sd), atol=1e-6)
    empty = _sample(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=torch.zeros(64, 64))), sd)
    assert torch.equal(empty, _sample(sd["mp"], sd))


def test_mask_follows_area_conditioning(sd):
    """The positive is set to the right half of the image (ConditioningSetArea): a left-half mask covers none of
    the latent the model sees for it - bit-identical to no NASA; a right-half mask steers."""
    import nodes
    pos = nodes.ConditioningSetArea().append(sd["pos"], 64, 128, 64, 0, 1.0)[0]
    latent = _latent(16)

    def go(m):
        return support.sample(m, latent, pos, sd["neg"])
    plain = go(sd["mp"])
    assert torch.equal(go(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=_left_mask()))), plain)
    right = 1.0 - _left_mask()
    assert (go(_advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=right))) - plain).abs().max() > 1e-4


def test_second_nasa_node_replaces_the_first(sd):
    first = support.apply_nasa(sd["mp"], alpha=1.0)
    both = _advanced(first, alpha=0.4, blocks="middle")
    assert torch.equal(_sample(both, sd), _sample(_advanced(sd["mp"], alpha=0.4, blocks="middle"), sd))


def test_guard_inputs_reach_the_run(sd, comfyui):
    """The node's guard inputs: off (the default, and what a workflow without them gets) is the plain node bit for
    bit; rescale and clip change the image and equal apply_nasa with the same Guard."""
    import comfy.patcher_extension as pe
    binding = comfyui.mod("adapters.binding")
    plain = _sample(_advanced(sd["mp"]), sd)
    assert torch.equal(_sample(_advanced(sd["mp"], guard="off", guard_tau=0.5), sd), plain)
    for guard, tau in (("rescale", 1.5), ("clip", 0.5)):
        m = _advanced(sd["mp"], guard=guard, guard_tau=tau)
        settings = m.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, binding.WRAPPER_KEY)[0].nasa_settings
        assert (settings.guard.mode, settings.guard.tau) == (guard, tau)
        assert not torch.equal(_sample(m, sd), plain), guard


def test_method_inputs_reach_the_run(sd, comfyui):
    """The node's method inputs: 'nasa' (the default, and what a workflow without them gets) is the plain node bit
    for bit whatever the other methods' inputs say; 'nag' and 'vsf' build nasa_core's setting from their own inputs,
    steer with the method's strength (not 'alpha') and equal apply_nasa with the same setting."""
    import comfy.patcher_extension as pe
    binding, core = comfyui.mod("adapters.binding"), comfyui.mod("nasa_core")
    apply_nasa = comfyui.mod("adapters").apply_nasa
    plain = _sample(_advanced(sd["mp"]), sd)
    assert torch.equal(_sample(_advanced(sd["mp"], method="nasa", nag_scale=9.0, vsf_scale=0.0), sd), plain)
    for method, inputs, want in (("nag", dict(nag_scale=3.0, nag_tau=1.5, nag_alpha=0.5), core.Nag(3.0, 1.5, 0.5)),
                                 ("vsf", dict(vsf_scale=2.0, vsf_bias=-0.5), core.Vsf(2.0, -0.5))):
        m = _advanced(sd["mp"], alpha=0.3, method=method, **inputs)
        settings = m.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, binding.WRAPPER_KEY)[0].nasa_settings
        assert settings.method == want and settings.alpha == want.strength
        out = _sample(m, sd)
        assert torch.equal(out, _sample(apply_nasa(sd["mp"], alpha=want.strength, method=want), sd))
        assert not torch.equal(out, plain) and not torch.equal(out, _sample(_advanced(sd["mp"], alpha=0.3), sd))


def test_methods_refuse_nasa_alphas_with_the_fix(sd, comfyui):
    """A NASA Negative's own alpha is NASA's strength: with NAG or VSF it is refused, naming the fix."""
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): a NASA Negative in 'negatives' has its "
                                         r"own alpha.*method 'nag' set that alpha to -1"):
        _advanced(sd["mp"], method="nag", negatives=_negative(sd["neg"], 0.5))
    m = _advanced(sd["mp"], method="nag", negatives=_negative(sd["neg"], -1.0))
    assert not torch.equal(_sample(m, sd), _sample(sd["mp"], sd))
    with pytest.raises(ValueError, match="with method 'vsf' the negatives' strength is the method's own"):
        comfyui.mod("adapters").apply_nasa(sd["mp"], alpha=0.5, method=comfyui.mod("nasa_core").Vsf())


def test_bad_inputs_name_node_input_and_fix(sd):
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): 'blocks': 'output:99' is out of range"):
        _advanced(sd["mp"], blocks="output:99")
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): input 'guard' is 'norm'; pick one of off, "
                                         r"rescale, clip"):
        _advanced(sd["mp"], guard="norm")
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): input 'guard_tau': .*got 0.0\. Set a "
                                         r"value between 0.1 and 10"):
        _advanced(sd["mp"], guard="clip", guard_tau=0.0)
    with pytest.raises(ValueError, match="mask must be one image"):
        _advanced(sd["mp"], negatives=_negative(sd["neg"], 1.0, mask=torch.ones(2, 8, 8)))
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): input 'method' is 'cfg'; pick one of nasa, "
                                         r"nag, vsf"):
        _advanced(sd["mp"], method="cfg")
    with pytest.raises(ValueError, match=r"Apply NASA Attention \(Advanced\): inputs nag_scale, nag_tau, nag_alpha: NAG: "
                                         r"tau is the largest allowed"):
        _advanced(sd["mp"], method="nag", nag_tau=0.5)
    with pytest.raises(ValueError, match=r"inputs vsf_scale, vsf_bias: VSF: scale flips"):
        _advanced(sd["mp"], method="vsf", vsf_scale=-1.0)
    with pytest.raises(ValueError, match=r"NASA Negative: 'mask' has values in \[0, 2\]"):
        _negative(sd["neg"], 1.0, mask=torch.arange(3.0).repeat(3, 1))
    with pytest.raises(ValueError, match="start_percent 0.8 is after end_percent 0.2"):
        _advanced(sd["mp"], start_percent=0.8, end_percent=0.2)


# ----------------------------------------------------------------------------- FLUX (joint attention)

@pytest.fixture(scope="module")
def flux(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_dit_model("flux", seed=0)
    pos, neg = support.flux_conds(rm.DIT_FAMILIES["flux"][1])
    return dict(mp=mp, pos=pos, neg=neg, latent=torch.zeros(1, 16, 8, 8))


def test_flux_window_edges_are_exact(flux):
    ms = flux["mp"].get_model_object("model_sampling")
    s_start, s_end = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.7)
    sigmas = [s_start * 1.002, s_start, s_end, s_end * 0.998]
    plain = support.probe(flux["mp"], flux["latent"], flux["pos"], flux["neg"], sigmas)
    nasa = support.probe(_advanced(flux["mp"], start_percent=0.3, end_percent=0.7), flux["latent"], flux["pos"],
                         flux["neg"], sigmas)
    assert torch.equal(nasa[0], plain[0]) and torch.equal(nasa[3], plain[3])
    assert (nasa[1] - plain[1]).abs().max() > 1e-3 and (nasa[2] - plain[2]).abs().max() > 1e-3


def test_flux_zero_multipliers_are_bit_identical_and_a_multiplier_scales_alpha(flux):
    def go(m):
        return support.sample(m, flux["latent"], flux["pos"], flux["neg"])
    plain = go(flux["mp"])
    assert torch.equal(go(_advanced(flux["mp"], blocks="double*0, single*0")), plain)
    half = go(_advanced(flux["mp"], alpha=1.0, blocks="double*0.5, single*0.5"))
    assert torch.allclose(half, go(support.apply_nasa(flux["mp"], alpha=0.5)), atol=1e-5)
    assert not torch.equal(go(_advanced(flux["mp"], blocks="single:1")), plain)


def test_flux_mask_confines_the_change_at_the_first_double_block(flux):
    proj = flux["mp"].model.diffusion_model.double_blocks[0].img_attn.proj
    outs = {}

    def run(m, name):
        h = proj.register_forward_hook(lambda mod, a, o: outs.setdefault(name, o.clone()))
        try:
            support.sample(m, flux["latent"], flux["pos"], flux["neg"])
        finally:
            h.remove()
    run(_advanced(flux["mp"], negatives=_negative(flux["neg"], 1.0, mask=_left_mask(64))), "masked")
    run(flux["mp"], "plain")
    inside = (torch.arange(16) % 4 < 2)            # 8x8 latent, patch 2: a 4x4 token grid
    assert torch.equal(outs["masked"][:, ~inside], outs["plain"][:, ~inside])
    assert (outs["masked"][:, inside] - outs["plain"][:, inside]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- Wan 2.1 (video frames)

def test_wan_mask_frames_and_block_selection(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_dit_model("wan21_t2v", seed=0)
    width = rm.DIT_FAMILIES["wan21_t2v"][1]["text_dim"]
    g = torch.Generator().manual_seed(0)
    pos, neg = [[torch.randn(1, 24, width, generator=g), {}]], [[torch.randn(1, 20, width, generator=g), {}]]
    latent = torch.zeros(1, mp.model.latent_format.latent_channels, 2, 8, 8)
    blocks = mp.model.diffusion_model.blocks
    outs = {}

    def run(m, name, index=0):
        h = blocks[index].cross_attn.o.register_forward_hook(lambda mod, a, o: outs.setdefault(name, o.clone()))
        try:
            return support.sample(m, latent, pos, neg)
        finally:
            h.remove()
    first_frame = torch.zeros(2, 32, 32)
    first_frame[0] = 1.0                               # steer the first latent frame only
    run(_advanced(mp, negatives=_negative(neg, 1.0, mask=first_frame)), "masked")
    run(mp, "plain")
    per_frame = outs["plain"].shape[1] // 2            # 2 frames x 4x4 tokens
    assert torch.equal(outs["masked"][:, per_frame:], outs["plain"][:, per_frame:])
    assert (outs["masked"][:, :per_frame] - outs["plain"][:, :per_frame]).abs().max() > 1e-4
    run(_advanced(mp, blocks="blocks:1"), "block1")
    assert torch.equal(outs["block1"], outs["plain"])                # block 0 left out: its output untouched
    with pytest.raises(ValueError, match=f"the last blocks block is {len(blocks) - 1}"):
        _advanced(mp, blocks="blocks:2")


# ----------------------------------------------------------------------------- the alpha explorer

def test_alpha_grid_cells_equal_the_graph_they_stand_for(sd, comfyui):
    """Each cell of NASA Alpha Grid is Apply NASA Attention (Advanced) -> KSampler -> VAE Decode at its alpha and
    block set, bit for bit; alpha 0 is the plain model; the grid lays them out with a label strip each."""
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    explorer = comfyui.mod("sampling.alpha_grid")
    vae = rm.build_vae("tiny", seed=0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    grid_node = nodes.NODE_CLASS_MAPPINGS["NASAAlphaGrid"]
    grid, cells = grid_node.execute(model=sd["mp"], positive=sd["pos"], negative=sd["neg"], latent_image=latent,
                                    vae=vae, seed=5, steps=1, cfg=1.0, sampler_name="euler", scheduler="sgm_uniform",
                                    alphas="0, 0.6", block_sets="all\nmiddle").result
    assert cells.shape[0] == 4

    def decoded(m):
        out = nodes.common_ksampler(m, 5, 1, 1.0, "euler", "sgm_uniform", sd["pos"], sd["neg"], latent)[0]
        return vae.decode(out["samples"])[0]
    assert torch.equal(cells[0], decoded(sd["mp"]))
    assert torch.equal(cells[1], decoded(_advanced(sd["mp"], alpha=0.6)))
    assert torch.equal(cells[3], decoded(_advanced(sd["mp"], alpha=0.6, blocks="middle")))
    assert not torch.equal(cells[1], cells[3])
    h, w = cells.shape[1:3]
    assert grid.shape == (1, 2 * (h + explorer.LABEL_HEIGHT) + 4, 2 * w + 4, 3)
    assert torch.equal(explorer.grid_cell(grid, 1, 1, (h, w)), cells[3])
    label = grid[0, :explorer.LABEL_HEIGHT, :w]
    assert label.min() < 0.5 < label.max()                 # dark text on a white strip


def test_alpha_grid_bad_inputs(sd, comfyui):
    explorer = comfyui.mod("sampling.alpha_grid")
    with pytest.raises(ValueError, match="NASA Alpha Grid: 'alphas': 'x' is not a number"):
        explorer.parse_alphas("0, x", "NASA Alpha Grid")
    with pytest.raises(ValueError, match="alpha 3.0 is above the maximum 2.0"):
        explorer.parse_alphas("0 3", "NASA Alpha Grid")
    with pytest.raises(ValueError, match="'alphas' is empty"):
        explorer.parse_alphas(" , ", "NASA Alpha Grid")
    with pytest.raises(ValueError, match="holds a batch of 2"):
        explorer.alpha_grid(sd["mp"], sd["pos"], sd["neg"], {"samples": torch.zeros(2, 4, 8, 8)}, None, 0, 1, 1.0,
                            "euler", "sgm_uniform", "0, 1")
    with pytest.raises(ValueError, match="at most 64"):
        explorer.alpha_grid(sd["mp"], sd["pos"], sd["neg"], {"samples": torch.zeros(1, 4, 8, 8)}, None, 0, 1, 1.0,
                            "euler", "sgm_uniform", ",".join(["0.1"] * 65))
    with pytest.raises(ValueError, match="'blocks': 'output:99' is out of range"):
        explorer.alpha_grid(sd["mp"], sd["pos"], sd["neg"], {"samples": torch.zeros(1, 4, 8, 8)}, None, 0, 1, 1.0,
                            "euler", "sgm_uniform", "0.1", "output:99")


def test_a_window_no_step_reaches_is_reported(sd, caplog):
    """A one-step model samples at percent 0: a window starting later never acts, and the log says so."""
    import logging
    with caplog.at_level(logging.WARNING):
        out = _sample(_advanced(sd["mp"], start_percent=0.5), sd)
    assert torch.equal(out, _sample(sd["mp"], sd))
    assert any("NASA did not act in this run" in r.getMessage() and "start_percent 0.5" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _sample(_advanced(sd["mp"], end_percent=0.5), sd)
    assert not any("NASA did not act" in r.getMessage() for r in caplog.records)
