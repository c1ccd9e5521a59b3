"""What NASA accepts on the running ComfyUI, and that it really acts there (run on every version CI tests).

* No silent no-op: a run in which NASA had a negative to apply and steered nothing is an error naming the
  node and the model class; shown here with a deliberately wrong argument binding (the Wan adapter's wrapper
  reads the wrong argument), and the legitimate cases that steer nothing (alpha 0, a window no step reaches,
  all blocks at multiplier 0) stay quiet.
* Strict matching: models ComfyUI builds on the classes of NASA's families but that NASA does not
  understand (Ovis on FLUX's class; the causal Wan as I2V on
  Wan's; Chroma Radiance with sequential text positions) are refused with the "not supported" error
  before anything runs. Families a ComfyUI version lacks are skipped there by name (the only skip CI accepts).

* Coverage: every model class of the running ComfyUI (``comfy.supported_models.models``) is a family's and sampled
  by the contract suite, a derivative of a supported class, or refused in REFUSED_CLASSES with the reason; a class
  a new ComfyUI release adds fails the coverage test by name. A refused text-to-image class gets the "not
  supported" error naming it and the supported list.

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
    "Ovis-Image": ("FluxParams.yak_mlp", lambda sm: _has_param("comfy.ldm.flux.model", "FluxParams", "yak_mlp"),
                   lambda rm: _flux_like(rm, "FluxSchnell", vec_in_dim=None, yak_mlp=True, txt_norm=True,
                                         txt_ids_dims=[1, 2])),
    "Wan causal I2V": ("WAN21_CausalAR_T2V", lambda sm: hasattr(sm, "WAN21_CausalAR_T2V"),    # its cached
                       lambda rm: _wan_like(rm, "WAN21_CausalAR_T2V", model_type="i2v", in_dim=36)),  # path: no image
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


# ------------------------------------------------------------------------------------------------ coverage
# Every model config class of ComfyUI (comfy.supported_models.models, both versions CI tests) that NASA does not list
# in a family's ``model_classes``, with the reason. A class ComfyUI adds later is in neither list: the coverage test
# fails, naming it, until someone supports it (a family and its contract cases) or refuses it here.
DERIVED = {  # class -> the supported class it subclasses: the base family's structural check decides per model
    "SD15_instructpix2pix": "SD15", "SD21UnclipL": "SD20", "SD21UnclipH": "SD20", "LotusD": "SD20",
    "SD_X4Upscaler": "SD20", "SDXL_instructpix2pix": "SDXL", "SSD1B": "SDXL", "KOALA_700M": "SDXL",
    "KOALA_1B": "SDXL", "Segmind_Vega": "SDXL",
}
SIBLINGS = {  # supported class -> the class of the same family whose contract case samples the same diffusion model
    "SDXLRefiner": "SDXL", "Flux": "FluxSchnell", "FluxInpaint": "FluxSchnell", "HunyuanVideoI2V": "HunyuanVideo",
    "HunyuanVideoSkyreelsI2V": "HunyuanVideo",
}
_NO_TEXT = "no text prompt (image, video or 3D conditioning only): nothing for a negative prompt to steer"
_NOT_DIFFUSION = "not a text-to-image/video diffusion model (detection, segmentation or depth)"
_AUDIO = "audio generation: NASA's families are image and video models; not supported yet"
_LATER = "text-to-image/video family not supported yet (issue 26's 'as far as time allows' list)"
_OLD = "older text-to-image/video family not supported (rarely run distilled or at cfg 1 today)"
REFUSED_CLASSES = {
    "Stable_Zero123": _NO_TEXT, "SVD_img2vid": _NO_TEXT, "SV3D_u": _NO_TEXT, "SV3D_p": _NO_TEXT,
    "Hunyuan3Dv2": _NO_TEXT, "Hunyuan3Dv2mini": _NO_TEXT, "Hunyuan3Dv2_1": _NO_TEXT, "TripoSplat": _NO_TEXT,
    "Trellis2": _NO_TEXT, "SeedVR2": _NO_TEXT + " (video restoration)",
    "RT_DETR_v4": _NOT_DIFFUSION, "SAM3": _NOT_DIFFUSION, "SAM31": _NOT_DIFFUSION, "DepthAnything3": _NOT_DIFFUSION,
    "StableAudio": _AUDIO, "StableAudio3": _AUDIO, "ACEStep": _AUDIO, "ACEStep15": _AUDIO, "MiniMaxMusic3": _AUDIO,
    "Stable_Cascade_C": _OLD, "Stable_Cascade_B": _OLD, "AuraFlow": _OLD, "HunyuanDiT": _OLD, "HunyuanDiT1": _OLD,
    "CosmosT2V": _OLD + " (Cosmos 1.0; Cosmos Predict2 is its successor)", "CosmosI2V": _OLD + " (Cosmos 1.0)",
    "GenmoMochi": _LATER, "MiniMaxH3": _LATER, "PiD": _LATER, "PixelDiTT2I": _LATER, "Omnigen2": _LATER,
    "Boogu": _LATER, "MageFlow": _LATER, "JoyImage": _LATER, "Ideogram4": _LATER, "Krea2": _LATER, "Lens": _LATER,
    "ErnieImage": _LATER, "CogVideoX_T2V": _LATER, "CogVideoX_I2V": _LATER, "CogVideoX_Inpaint": _LATER,
    "HiDreamO1": _LATER,
    # issue 26's required families, refused until their adapters land
}


def _supported(env) -> dict:
    """``{config class name: family name}`` from every family's ``model_classes``."""
    return {name: family.name for family in env["adapters"].FAMILIES for name in family.model_classes}


def test_every_model_class_of_this_comfyui_is_supported_or_refused_with_a_reason(env):
    """Each class of comfy.supported_models.models is a family's (and in the contract suite: a family_cases Case
    samples it or a sibling of the same family), a derivative of one, or refused in REFUSED_CLASSES; a new ComfyUI
    class fails here by name."""
    import comfy.supported_models as sm
    supported, tested = _supported(env), {case.config_class for case in cases.CASES.values()}
    unknown, untested, wrong = [], [], []
    for cls in sm.models:
        name = cls.__name__
        if name in supported:
            sampled_as = SIBLINGS.get(name, name)
            if sampled_as not in tested or supported.get(sampled_as) != supported[name]:
                untested.append(f"{name} ({supported[name]})")
        elif name in DERIVED:
            if not issubclass(cls, getattr(sm, DERIVED[name])):
                wrong.append(f"{name} no longer subclasses {DERIVED[name]}")
        elif name not in REFUSED_CLASSES:
            unknown.append(name)
    assert not unknown, (f"ComfyUI {len(sm.models)} model classes include ones NASA neither supports nor refuses: "
                         f"{unknown}. Add a family (and its contract cases) or an entry with the reason to "
                         f"REFUSED_CLASSES.")
    assert not untested, f"supported but no contract case samples them (tests/adapters/family_cases.py): {untested}"
    assert not wrong, wrong


def test_the_coverage_tables_do_not_contradict_the_families(env):
    """A class is supported, derived or refused, never two of them; every derived class's base is supported; every
    family's model class is a name ComfyUI uses (on some version: each is in this one or absent on purpose)."""
    import comfy.supported_models as sm
    supported = _supported(env)
    assert not set(supported) & set(REFUSED_CLASSES), sorted(set(supported) & set(REFUSED_CLASSES))
    assert not set(supported) & set(DERIVED), sorted(set(supported) & set(DERIVED))
    assert not set(DERIVED) & set(REFUSED_CLASSES), sorted(set(DERIVED) & set(REFUSED_CLASSES))
    assert set(SIBLINGS) <= set(supported), sorted(set(SIBLINGS) - set(supported))
    assert set(DERIVED.values()) <= set(supported), sorted(set(DERIVED.values()) - set(supported))
    for name in supported:
        assert name in {c.__name__ for c in sm.models} or not hasattr(sm, name), \
            f"{name} exists in comfy.supported_models but not in its models list"


def test_a_refused_text_to_image_class_gets_the_not_supported_error_naming_it_and_the_supported_list(env):
    """AuraFlow (refused above): the node names the model class and lists what NASA supports."""
    mp = env["rm"].build_diffusion_model("AuraFlow", dict(
        max_seq=16, cond_seq_dim=32, n_double_layers=1, n_layers=2, n_heads=2, dim=32, global_conddim=32, patch_size=2,
        in_channels=4, out_channels=4), seed=0)
    with pytest.raises(env["adapters"].UnsupportedModelError) as e:
        support.apply_nasa(mp, alpha=0.5)
    msg = str(e.value)
    assert msg.startswith("Apply NASA Attention: model family 'AuraFlow' is not supported by this version"), msg
    for family in env["adapters"].FAMILIES:
        assert all(s in msg for s in family.supported), family.name


@pytest.mark.parametrize("name", list(cases.CASES))
def test_exactly_one_family_claims_each_case_model(env, name):
    """Families' ``matches`` are strict: no model of the contract suite is claimed by two families (the registry's
    order must not decide what NASA does to a model)."""
    cases.skip_if_missing(name)
    mp = cases.model(env["rm"], name)
    claimed = [family.name for family in env["adapters"].FAMILIES if family.matches(mp)]
    assert len(claimed) == 1, (name, claimed)
