"""What NASA accepts on the running ComfyUI, and that it really acts there (run on every version CI tests).

* Canaries: for every family, a one-step NASA run (alpha 0.5, the sampler's negative at cfg 1) steers every
  layer the family's adapter installs on (``last_steered`` of NASA's sampler wrapper = the adapter's
  block groups). A ComfyUI release that moves a hook NASA binds to makes this fail by name, per family.
* No silent no-op: a run in which NASA had a negative to apply and steered nothing is an error naming the
  node and the model class; shown here with a deliberately wrong argument binding (the Wan adapter's wrapper
  reads the wrong argument), and the legitimate cases that steer nothing (alpha 0, a window no step reaches,
  all blocks at multiplier 0) stay quiet.
* Strict matching: models ComfyUI builds on the classes of NASA's families but that NASA does not
  understand (FLUX.2 / Klein, LongCat-Image and Ovis on FLUX's class; Wan FlowRVS, causal, camera, VACE and
  HuMo on Wan's; Chroma Radiance with sequential text positions) are refused with the "not supported" error
  before anything runs. Families a ComfyUI version lacks are skipped there by name (the only skip CI accepts).

The Qwen-Image, Lumina 2, HunyuanVideo and LTX-Video canaries and refusals live in their adapters' test files.
"""
from __future__ import annotations

import pytest
import torch

import nasa_test_support as support

NEG_LEN = 9


def _text(width, n, g, pooled=None):
    opts = {"pooled_output": None if pooled is None else torch.randn(1, pooled, generator=g)}   # as CLIPTextEncode
    return [[torch.randn(1, n, width, generator=g), opts]]


# family -> (build(rm) -> ModelPatcher, (context width, pooled width or None)(rm), latent shape)
def _dit(name):
    return lambda rm: rm.build_dit_model(name, seed=0)


def _dit_widths(name, context_key, pooled_key=None):
    def widths(rm):
        config = rm.DIT_FAMILIES[name][1]
        context = config[context_key] if context_key != "sd3" else \
            config["context_embedder_config"]["params"]["in_features"]
        return context, (config[pooled_key] if pooled_key else None)
    return widths


CASES = {
    "sd15": (lambda rm: rm.build_unet_model("sd15", "tiny", seed=0),
             lambda rm: (rm.unet_config("sd15", "tiny")["context_dim"], None), (1, 4, 16, 16)),
    "sdxl": (lambda rm: rm.build_unet_model("sdxl", "tiny", seed=0),
             lambda rm: (rm.unet_config("sdxl", "tiny")["context_dim"],           # SDXL's adm = pooled + 6 x 256
                         rm.unet_config("sdxl", "tiny")["adm_in_channels"] - 6 * 256),
             (1, 4, 16, 16)),
    "flux": (_dit("flux"), _dit_widths("flux", "context_in_dim", "vec_in_dim"), (1, 16, 8, 8)),
    "chroma": (_dit("chroma"), _dit_widths("chroma", "context_in_dim"), (1, 16, 8, 8)),
    "chroma_radiance": (_dit("chroma_radiance"), _dit_widths("chroma_radiance", "context_in_dim"), (1, 3, 16, 16)),
    "sd3": (_dit("sd3"), _dit_widths("sd3", "sd3", "adm_in_channels"), (1, 16, 8, 8)),
    "sd35m": (_dit("sd35m"), _dit_widths("sd35m", "sd3", "adm_in_channels"), (1, 16, 8, 8)),
    "pixart": (_dit("pixart"), _dit_widths("pixart", "caption_channels"), (1, 4, 34, 34)),
    "pixart_sigma": (_dit("pixart_sigma"), _dit_widths("pixart_sigma", "caption_channels"), (1, 4, 34, 34)),
    "wan21_t2v": (_dit("wan21_t2v"), _dit_widths("wan21_t2v", "text_dim"), (1, 16, 1, 8, 8)),
    "wan22_t2v": (_dit("wan22_t2v"), _dit_widths("wan22_t2v", "text_dim"), (1, 48, 1, 8, 8)),
}


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    cache = {}

    def case(name):
        if name not in cache:
            build, widths, latent = CASES[name]
            context, pooled = widths(rm)
            g = torch.Generator().manual_seed(0)
            cache[name] = (build(rm), _text(context, 7, g, pooled), _text(context, NEG_LEN, g, pooled), latent)
        return cache[name]

    return dict(rm=rm, case=case, adapters=comfyui.mod("adapters"), binding=comfyui.mod("adapters.binding"))


@pytest.mark.parametrize("name", list(CASES))
def test_canary_every_layer_is_steered(env, name):
    mp, pos, neg, latent = env["case"](name)
    adapter = env["adapters"].find_adapter(mp)
    m = support.apply_nasa(mp, alpha=0.5)
    out = support.sample(m, torch.zeros(latent), pos, neg)
    assert torch.isfinite(out).all()
    expected = support.all_layers(adapter, mp)
    assert expected, f"{name}: the adapter names no layer at all"
    assert support.steered_layers(m) == expected, f"{name}: layers never steered: {sorted(expected - support.steered_layers(m))}"


def test_nothing_steered_where_nothing_is_asked_stays_quiet(env):
    """Alpha 0, a window no sampled step reaches, every block at multiplier 0: NASA acts nowhere, no error."""
    mp, pos, neg, latent = env["case"]("flux")
    plain = support.sample(mp, torch.zeros(latent), pos, neg)
    for kw in (dict(alpha=0.0), dict(start_percent=0.5, end_percent=1.0)):
        m = support.apply_nasa(mp, **kw) if "alpha" in kw else support.apply_nasa_advanced(mp, alpha=0.5, **kw)
        assert torch.equal(support.sample(m, torch.zeros(latent), pos, neg), plain), kw
        assert support.steered_layers(m) == frozenset()
    m = support.apply_nasa_advanced(mp, alpha=0.5, blocks="double*0, single*0")
    assert torch.equal(support.sample(m, torch.zeros(latent), pos, neg), plain)


def test_a_wrong_argument_binding_is_a_loud_error_not_a_silent_no_op(env, monkeypatch):
    """Test-only sabotage: the Wan adapter's forward wrapper binds WanModel._forward's arguments to a signature
    with ``transformer_options`` and the parameter before it swapped - what a positional argument table reads
    when ComfyUI inserts a parameter. The wrapper then finds no NASA run and the blocks steer nothing: the
    canary's sampling run must raise, naming the node and the model class, instead of returning an image
    without the negative."""
    import inspect
    mp, pos, neg, latent = env["case"]("wan21_t2v")
    real = env["binding"].signature_of

    def wrong(func):
        sig = real(func)
        if getattr(func, "__name__", "") != "_forward" or "transformer_options" not in sig.parameters:
            return sig
        params = list(sig.parameters.values())
        i = [p.name for p in params].index("transformer_options")
        params[i - 1], params[i] = params[i - 1].replace(name="transformer_options"), params[i].replace(
            name=params[i - 1].name)
        return inspect.Signature(params)

    monkeypatch.setattr(env["binding"], "signature_of", wrong)
    m = support.apply_nasa(mp, alpha=0.5)
    with pytest.raises(RuntimeError, match=r"Apply NASA Attention: NASA steered no layer of this Wan .*\(WanModel\)"):
        support.sample(m, torch.zeros(latent), pos, neg)


# ------------------------------------------------------------------------------------------------ strict matching
def _flux_like(rm, config_class, **changes):
    base = {**rm.DIT_FAMILIES["flux"][1], **changes}
    return rm.build_diffusion_model(config_class, base, seed=0)


def _has_param(module: str, dataclass: str, name: str) -> bool:
    import dataclasses
    import importlib
    return name in {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), dataclass))}


def _wan_like(rm, config_class, **changes):
    return rm.build_diffusion_model(config_class, {**rm.DIT_FAMILIES["wan21_t2v"][1], **changes}, seed=0)


REFUSED = {  # name -> (what it needs, does this ComfyUI have it?, build(rm))
    "FLUX.2 / Klein": ("Flux2", lambda sm: hasattr(sm, "Flux2"), lambda rm: _flux_like(
        rm, "Flux2", image_model="flux2", axes_dim=[4, 4, 4, 4], num_heads=4, mlp_ratio=3.0, theta=2000,
        global_modulation=True, mlp_silu_act=True, qkv_bias=False, ops_bias=False, txt_ids_dims=[3], patch_size=1,
        vec_in_dim=None, in_channels=128, out_channels=128)),
    "LongCat-Image": ("LongCatImage", lambda sm: hasattr(sm, "LongCatImage"),
                      lambda rm: _flux_like(rm, "LongCatImage", vec_in_dim=None, txt_ids_dims=[1, 2])),
    "Ovis-Image": ("FluxParams.yak_mlp", lambda sm: _has_param("comfy.ldm.flux.model", "FluxParams", "yak_mlp"),
                   lambda rm: _flux_like(rm, "FluxSchnell", vec_in_dim=None, yak_mlp=True, txt_norm=True,
                                         txt_ids_dims=[1, 2])),
    "Wan FlowRVS": ("WAN21_FlowRVS", lambda sm: hasattr(sm, "WAN21_FlowRVS"),
                    lambda rm: _wan_like(rm, "WAN21_FlowRVS")),          # plain WanModel, image-to-image flow
    "Wan causal (autoregressive)": ("WAN21_CausalAR_T2V", lambda sm: hasattr(sm, "WAN21_CausalAR_T2V"),
                                    lambda rm: _wan_like(rm, "WAN21_CausalAR_T2V")),
    "Wan camera": ("WAN21_Camera", lambda sm: hasattr(sm, "WAN21_Camera"),
                   lambda rm: _wan_like(rm, "WAN21_Camera", in_dim_control_adapter=24, model_type="i2v", in_dim=36)),
    "Wan VACE": ("WAN21_Vace", lambda sm: hasattr(sm, "WAN21_Vace"),
                 lambda rm: _wan_like(rm, "WAN21_Vace", vace_layers=1, vace_in_dim=96)),
    "Wan HuMo": ("WAN21_HuMo", lambda sm: hasattr(sm, "WAN21_HuMo"), lambda rm: _wan_like(rm, "WAN21_HuMo")),
    "Chroma Radiance (sequential text positions)": (
        "ChromaRadianceParams.use_sequential_txt_ids", lambda sm: _has_sequential_txt_ids(),
        lambda rm: rm.build_dit_model("chroma_radiance", seed=0, use_sequential_txt_ids=True)),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_models_on_our_classes_that_nasa_does_not_understand_are_refused(env, name):
    import comfy.supported_models as sm
    needs, available, build = REFUSED[name]
    if not available(sm):
        support.skip_missing_family(name, needs)
    mp = build(env["rm"])
    with pytest.raises(env["adapters"].UnsupportedModelError, match="is not supported by this version of the NASA pack"):
        support.apply_nasa(mp, alpha=0.5)


def _has_sequential_txt_ids() -> bool:
    return _has_param("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams", "use_sequential_txt_ids")


def test_chroma_radiance_sequential_text_positions_at_run_time_are_refused(env):
    """ChromaRadianceOptions can switch a Radiance run to sequential text positions: NASA refuses that run."""
    if not _has_sequential_txt_ids():
        support.skip_missing_family("Chroma Radiance (sequential text positions)", "use_sequential_txt_ids")
    mp, pos, neg, latent = env["case"]("chroma_radiance")
    m = support.apply_nasa(mp, alpha=0.5)
    m.model_options["transformer_options"]["chroma_radiance_options"] = {"use_sequential_txt_ids": True}
    with pytest.raises(ValueError, match="sequential positions.*force_sequential_txt_ids"):
        support.sample(m, torch.zeros(latent), pos, neg)
