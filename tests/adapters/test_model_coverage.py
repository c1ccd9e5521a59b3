"""What NASA accepts on the running ComfyUI, and that it really acts there (run on every version CI tests).

* No silent no-op: a run in which NASA had a negative to apply and steered nothing is an error naming the
  node and the model class; shown here with a deliberately wrong argument binding (the Wan adapter's wrapper
  reads the wrong argument), and the legitimate cases that steer nothing (alpha 0, a window no step reaches,
  all blocks at multiplier 0) stay quiet.
* Strict matching: models ComfyUI builds on the classes of NASA's families but that NASA does not
  understand (FLUX.2 / Klein, LongCat-Image and Ovis on FLUX's class; Wan FlowRVS, causal, camera, VACE and
  HuMo on Wan's; Chroma Radiance with sequential text positions) are refused with the "not supported" error
  before anything runs. Families a ComfyUI version lacks are skipped there by name (the only skip CI accepts).

The canaries (every layer of every family steered in a one-step run) are in test_contract.py; the Qwen-Image,
Lumina 2, HunyuanVideo and LTX-Video refusals live in their adapters' test files.
"""
from __future__ import annotations

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")

    def case(name):
        """A family case's model, prompts (7 and 9 tokens) and empty latent."""
        return (cases.model(rm, name), *cases.conds(rm, name, pos_len=7, neg_len=9), cases.latent(name))

    return dict(rm=rm, case=case, adapters=comfyui.mod("adapters"), binding=comfyui.mod("adapters.binding"))


def test_nothing_steered_where_nothing_is_asked_stays_quiet(env):
    """Alpha 0, a window no sampled step reaches, every block at multiplier 0: NASA acts nowhere, no error."""
    mp, pos, neg, latent = env["case"]("flux")
    plain = support.sample(mp, latent, pos, neg)
    for kw in (dict(alpha=0.0), dict(start_percent=0.5, end_percent=1.0)):
        m = support.apply_nasa(mp, **kw) if "alpha" in kw else support.apply_nasa_advanced(mp, alpha=0.5, **kw)
        assert torch.equal(support.sample(m, latent, pos, neg), plain), kw
        assert support.steered_layers(m) == frozenset()
    m = support.apply_nasa_advanced(mp, alpha=0.5, blocks="double*0, single*0")
    assert torch.equal(support.sample(m, latent, pos, neg), plain)


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
        support.sample(m, latent, pos, neg)


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
        support.sample(m, latent, pos, neg)
