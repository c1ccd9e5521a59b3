"""NASA composed with the rest of a ComfyUI graph (ComfyUI's real classes and nodes, tiny random SD1.5 / FLUX).

For each case: the graph runs, NASA steers (every cross-attention layer projects the negative once per
model call, and the result differs from the graph without NASA), the other patch still fires (the result
differs from NASA alone, and the patch's own marker is seen), and where the two commute the order of the
nodes does not matter, bit for bit.
"""
from __future__ import annotations

import logging

import pytest
import torch

import nasa_test_support as support

LONG = ("a very long negative prompt " * 20).strip()   # 154 tokens: the hooks tell it from the 77-token positive


@pytest.fixture(scope="module")
def sd(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_unet_model("sd15", "tiny", seed=0)
    clip = rm.build_clip("sd15", "tiny", seed=0)
    unet = comfyui.mod("adapters.unet")
    enc = nodes.CLIPTextEncode()
    return dict(mp=mp, pos=enc.encode(clip, "a photo of a cat")[0], neg=enc.encode(clip, LONG)[0],
                attn2=comfyui.mod("adapters.attn2"),
                layers=unet.cross_attention_layers(mp.model.diffusion_model), latent={"samples": torch.zeros(1, 4, 16, 16)})


class NegativeAttention:
    """How often each cross-attention layer attends over a 154-token text (the negative) while in use: the
    attn2 replace's calls of ComfyUI's attention, by the layer ComfyUI names in the call's options. (Counting the
    negative's K projection would miss steps 2+, which reuse it.)"""

    def __init__(self, sd):
        self.attn2, self.hits = sd["attn2"], {k: 0 for k in sd["layers"]}

    def __enter__(self):
        self.original = original = self.attn2.comfy_attention

        def counting(q, k, v, heads, extra_options, *args, **kwargs):
            if k.shape[1] == 154:
                block = extra_options["block"]
                self.hits[(block[0], block[1], extra_options["block_index"])] += 1
            return original(q, k, v, heads, extra_options, *args, **kwargs)
        self.attn2.comfy_attention = counting
        return self

    def __exit__(self, *exc):
        self.attn2.comfy_attention = self.original

    def every_layer(self) -> int:
        """The count every layer shares (asserts it is the same for all)."""
        counts = set(self.hits.values())
        assert len(counts) == 1, self.hits
        return counts.pop()


def _ksampler(m, sd, sampler="euler", scheduler="sgm_uniform", steps=3, cfg=1.0, pos=None, neg=None):
    import nodes
    return nodes.common_ksampler(m, 7, steps, cfg, sampler, scheduler, sd["pos"] if pos is None else pos,
                                 sd["neg"] if neg is None else neg, sd["latent"])[0]["samples"]


def _nasa(mp, alpha=1.0, **kw):
    return support.apply_nasa(mp, alpha=alpha, **kw)


# ----------------------------------------------------------------------------- stock samplers

@pytest.mark.parametrize("sampler, scheduler", [("euler", "sgm_uniform"), ("dpmpp_2m", "karras"), ("lcm", "exponential"),
                                                ("uni_pc", "simple"), ("ddim", "ddim_uniform"), ("dpmpp_sde", "beta"),
                                                ("euler_ancestral", "normal")])
def test_ksampler_with_any_sampler_and_scheduler(sd, sampler, scheduler):
    plain = _ksampler(sd["mp"], sd, sampler, scheduler)
    with NegativeAttention(sd) as seen:
        steered = _ksampler(_nasa(sd["mp"]), sd, sampler, scheduler)
    assert seen.every_layer() >= 3                     # once per model call, at least one call per step
    assert (steered - plain).abs().max() > 1e-3
    assert torch.equal(_ksampler(_nasa(sd["mp"], alpha=0.0), sd, sampler, scheduler), plain)


def test_ksampler_advanced_step_range(sd):
    import nodes

    def adv(m):
        return nodes.KSamplerAdvanced().sample(m, "enable", 7, 4, 1.0, "euler", "simple", sd["pos"], sd["neg"],
                                               sd["latent"], 1, 3, "disable")[0]["samples"]
    with NegativeAttention(sd) as seen:
        steered = adv(_nasa(sd["mp"]))
    assert seen.every_layer() == 2                     # steps 1 and 2 of 4
    assert (steered - adv(sd["mp"])).abs().max() > 1e-3


def _custom_advanced(m, sd, guider="cfg", cfg=1.0, sampler="euler", scheduler="karras"):
    import nodes
    cs = nodes.NODE_CLASS_MAPPINGS
    g = (cs["CFGGuider"]().get_guider(m, sd["pos"], sd["neg"], cfg)[0] if guider == "cfg"
         else cs["BasicGuider"]().get_guider(m, sd["pos"])[0])
    sigmas = cs["BasicScheduler"]().get_sigmas(m, scheduler, 3, 1.0)[0]
    smp = cs["KSamplerSelect"]().get_sampler(sampler)[0]
    noise = cs["RandomNoise"]().get_noise(7)[0]
    return cs["SamplerCustomAdvanced"]().sample(noise, g, smp, sigmas, sd["latent"])[0]["samples"]


def _execute(cls_name, **kw):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[cls_name].execute(**kw).result[0]


def test_sampler_custom_advanced_cfg_guider_and_basic_guider(sd):
    with NegativeAttention(sd) as seen:
        steered = _custom_advanced(_nasa(sd["mp"]), sd, sampler="dpmpp_2m")
    assert seen.every_layer() >= 3
    assert (steered - _custom_advanced(sd["mp"], sd, sampler="dpmpp_2m")).abs().max() > 1e-3
    # BasicGuider passes no negative: the node's own negatives steer
    negs = _execute("NASANegative", negative=sd["neg"], alpha=1.0)
    m = _execute("NASAApplyAttentionAdvanced", model=sd["mp"], negatives=negs, alpha=1.0, use_sampler_negative=True,
                 start_percent=0.0, end_percent=1.0, alpha_end_scale=1.0, blocks="")
    with NegativeAttention(sd) as seen:
        basic = _custom_advanced(m, sd, guider="basic")
    assert seen.every_layer() == 3
    assert (basic - _custom_advanced(sd["mp"], sd, guider="basic")).abs().max() > 1e-3


# ----------------------------------------------------------------------------- other patches

def test_attn2_replace_installed_after_nasa_is_reported(sd, caplog):
    """A replace set on a layer after NASA (an IPAdapter-style node placed after it) removes NASA from that
    layer: the run says so, naming the layer and the fix, instead of steering silently less."""
    key = next(iter(sd["layers"]))
    m = _nasa(sd["mp"]).clone()
    fired = []

    def other(q, k, v, extra):
        fired.append(1)
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra["n_heads"])
    m.set_model_attn2_replace(other, *key)
    with caplog.at_level(logging.WARNING), NegativeAttention(sd) as seen:
        _ksampler(m, sd, steps=1)
    assert fired and seen.hits[key] == 0 and all(v == 1 for k, v in seen.hits.items() if k != key)
    assert any("replaced NASA" in r.getMessage() and "before Apply NASA Attention" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_optimized_attention_override_sees_the_negative_and_changes_nothing(sd):
    import comfy.ldm.modules.attention as attention
    calls = []

    def override(func, *args, **kwargs):
        calls.append(args[1].shape[1])
        return func(*args, **kwargs)
    m = _nasa(sd["mp"])
    with_override = m.clone()
    with_override.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    assert torch.equal(_ksampler(with_override, sd, steps=1), _ksampler(m, sd, steps=1))
    assert calls.count(154) == len(sd["layers"])       # NASA's negative attention runs through the override
    assert attention.optimized_attention is not None


def _lora_patches(mp, seed=3):
    """A LoRA-style weight diff on every cross-attention to_k/to_v (what LoraLoader adds with add_patches)."""
    g = torch.Generator().manual_seed(seed)
    sd_keys = mp.model.state_dict()
    return {k: (0.5 * torch.randn(sd_keys[k].shape, generator=g),) for k in sd_keys
            if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k}


def test_lora_before_or_after_the_node_is_the_same(sd):
    patches = _lora_patches(sd["mp"])
    before = sd["mp"].clone()
    before.add_patches(patches, 1.0)
    after = _nasa(sd["mp"]).clone()
    after.add_patches(patches, 1.0)
    got_before, got_after = _ksampler(_nasa(before), sd, steps=1), _ksampler(after, sd, steps=1)
    assert torch.equal(got_before, got_after)
    assert (got_after - _ksampler(_nasa(sd["mp"]), sd, steps=1)).abs().max() > 1e-3
    assert (got_after - _ksampler(before, sd, steps=1)).abs().max() > 1e-3


@pytest.mark.parametrize("node, kwargs", [("PerturbedAttentionGuidance", {"scale": 2.0}),
                                          ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
                                          ("CFGZeroStar", {}),
                                          ("APG", {"eta": 0.5, "norm_threshold": 5.0, "momentum": -0.5})])
def test_guidance_nodes_in_either_order(sd, node, kwargs):
    """PAG, SAG, CFG-Zero* and APG patch attn1, the sampler's pre/post-CFG functions: at cfg 2 NASA steers the
    positive rows, the other node's guidance still acts, and the node order does not matter."""
    def other(m):
        return _execute(node, model=m, **kwargs)
    nasa_first = _ksampler(other(_nasa(sd["mp"])), sd, steps=2, cfg=2.0)
    with NegativeAttention(sd) as seen:
        other_first = _ksampler(_nasa(other(sd["mp"])), sd, steps=2, cfg=2.0)
    assert seen.every_layer() >= 2
    assert torch.equal(nasa_first, other_first)
    assert (nasa_first - _ksampler(_nasa(sd["mp"]), sd, steps=2, cfg=2.0)).abs().max() > 1e-4   # the node acts
    assert (nasa_first - _ksampler(other(sd["mp"]), sd, steps=2, cfg=2.0)).abs().max() > 1e-4   # NASA acts


def test_area_and_timestep_ranged_conditioning(sd):
    import nodes
    area = nodes.ConditioningSetArea().append(sd["pos"], 64, 64, 0, 0, 1.0)[0]
    early = nodes.ConditioningSetTimestepRange().set_range(sd["pos"], 0.0, 0.5)[0]
    pos = nodes.ConditioningCombine().combine(area, early)[0]
    plain = _ksampler(sd["mp"], sd, steps=3, pos=pos)
    with NegativeAttention(sd) as seen:
        steered = _ksampler(_nasa(sd["mp"]), sd, steps=3, pos=pos)
    assert seen.every_layer() >= 3
    assert (steered - plain).abs().max() > 1e-3
    assert torch.equal(_ksampler(_nasa(sd["mp"], alpha=0.0), sd, steps=3, pos=pos), plain)


def test_lowvram_offloading_with_a_lora(sd, monkeypatch):
    """ComfyUI's lowvram path (weights cast per forward, LoRA applied on the fly by LowVramPatch) gives the result
    of a full load. The CPU test machine has no VRAM to run out of, so its device is reported as a GPU with
    NO_VRAM for this test only."""
    import comfy.model_management as mm
    patches = _lora_patches(sd["mp"])
    m = _nasa(sd["mp"]).clone()
    m.add_patches(patches, 1.0)
    full = _ksampler(m, sd, steps=1)
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    try:
        low = _ksampler(m, sd, steps=1)
        to_k = next(iter(sd["layers"].values())).to_k
        assert getattr(to_k, "weight_function", []), "the model was not loaded in lowvram mode"
    finally:
        monkeypatch.undo()
        mm.unload_all_models()
    assert torch.allclose(low, full, atol=1e-5)


# ----------------------------------------------------------------------------- FLUX

def test_flux_guidance_and_a_dit_replace_installed_before(comfyui):
    """FLUX-dev-style guidance (FluxGuidance on the conditioning) and a "dit" replace installed before NASA (a
    PuLID/IPAdapter-style block patch) both keep acting with NASA."""
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_dit_model("flux", seed=0, guidance_embed=True)
    pos, neg = support.flux_conds(rm.DIT_FAMILIES["flux"][1])
    latent = torch.zeros(1, 16, 8, 8)

    def go(m, p):
        return support.sample(m, latent, p, neg)
    guided = nodes.NODE_CLASS_MAPPINGS["FluxGuidance"].execute(conditioning=pos, guidance=4.0).result[0]
    steered = go(_nasa(mp), guided)
    assert (steered - go(mp, guided)).abs().max() > 1e-3                 # NASA acts
    assert (steered - go(_nasa(mp), pos)).abs().max() > 1e-3             # guidance acts
    fired = []

    def block_patch(args, extra):
        fired.append(1)
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * 1.01}
    pre = mp.clone()
    pre.set_model_patch_replace(block_patch, "dit", "double_block", 0)
    with_patch = go(_nasa(pre), guided)
    assert fired and (with_patch - steered).abs().max() > 1e-4
