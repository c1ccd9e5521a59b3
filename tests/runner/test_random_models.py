"""runner/random_weights/models.py: random-weight SD1.5 / SD2.1 / SDXL models built from ComfyUI's own classes."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PACK_ROOT = Path(__file__).resolve().parents[2]

FAMILY_FACTS = {  # family: (ComfyUI model config class, prediction type, cross-attention layers)
    "sd15": ("SD15", "EPS", 16),
    "sd21": ("SD20", "EPS", 16),
    "sd21v": ("SD20", "V_PREDICTION", 16),
    "sdxl": ("SDXL", "EPS", 70),
}
PUBLISHED_UNET_PARAMS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}


@pytest.fixture(scope="module")
def rm(comfy):
    return comfy.mod("runner.random_weights.models")


@pytest.fixture(scope="module")
def checkpoints(rm):
    """Tiny fp32 (model, clip, vae) per family, built on first use and shared by the tests."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = rm.build_checkpoint(family, "tiny", torch.float32, seed=0)
        return built[family]
    return get


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return cond, pooled


def unet_forward(patcher, cond, pooled, size=16, seed=1, sigma=1.0):
    """One call of the diffusion model, the way ComfyUI's sampler calls it."""
    model = patcher.model
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    extra = {}
    if model.adm_channels:
        extra["y"] = model.encode_adm(pooled_output=pooled, width=size * 8, height=size * 8, device=x.device)
    with torch.no_grad():
        return model.apply_model(x, torch.tensor([sigma]), c_crossattn=cond, **extra)


def test_module_imports_without_comfyui():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("rm", {str(PACK_ROOT / 'runner' / 'random_weights' / 'models.py')!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.FAMILIES == ("sd15", "sd21", "sd21v", "sdxl") and module.SIZES == ("tiny", "full")
        loaded = sorted(m for m in sys.modules if m == "comfy" or m.startswith(("comfy.", "comfy_api", "nodes")))
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


@pytest.mark.parametrize("family", list(FAMILY_FACTS))
def test_real_structure_and_matching_widths(rm, checkpoints, family):
    model, clip, vae = checkpoints(family)
    config_class, prediction, attn2 = FAMILY_FACTS[family]
    assert type(model.model.model_config).__name__ == config_class
    assert model.model.model_type.name == prediction
    assert rm.count_attn2_layers(model) == attn2
    cond, pooled = encode(clip, "a cat")
    assert cond.shape[-1] == model.model.model_config.unet_config["context_dim"]
    if family == "sdxl":
        assert model.model.adm_channels == pooled.shape[-1] + 6 * 256
        assert model.model.encode_adm(pooled_output=pooled, width=64, height=64).shape[-1] == model.model.adm_channels
    # Every parameter was written: nothing left from torch.empty.
    for name, p in list(model.model.named_parameters()) + list(clip.cond_stage_model.named_parameters()):
        assert torch.isfinite(p).all(), name


def test_sd21v_weights_are_detected_as_v_prediction_by_comfyui(rm, checkpoints):
    """ComfyUI decides SD2.x eps vs v from the weights; the random weights agree with the model type."""
    for family, expected in (("sd21v", "V_PREDICTION"), ("sd21", "EPS")):
        model = checkpoints(family)[0].model
        state = model.diffusion_model.state_dict()
        assert model.model_config.model_type(state, "").name == expected


def test_full_configs_are_the_published_models(comfy, rm):
    """ComfyUI's own model detection recognises the full configs; their sizes are the published ones."""
    import comfy.model_detection
    for family, params in PUBLISHED_UNET_PARAMS.items():
        detected = comfy.model_detection.model_config_from_unet_config({**rm.unet_config(family, "full"),
                                                                       "dtype": torch.float32})
        assert type(detected).__name__ == FAMILY_FACTS[family][0]
        on_meta = rm.model_config(family, "full").get_model({}, "", device=torch.device("meta"))
        assert sum(p.numel() for p in on_meta.diffusion_model.parameters()) == params
        assert rm.count_attn2_layers(on_meta) == FAMILY_FACTS[family][2]
    assert rm.unet_config("sdxl", "full")["adm_in_channels"] == 2816
    assert [rm.unet_config(f, "full")["context_dim"] for f in ("sd15", "sd21", "sdxl")] == [768, 1024, 2048]


@pytest.mark.parametrize("family", list(FAMILY_FACTS))
def test_prompt_changes_the_output(checkpoints, family):
    model, clip, _ = checkpoints(family)
    out_a = unet_forward(model, *encode(clip, "a photo of a cat"))
    out_b = unet_forward(model, *encode(clip, "an oil painting of a red car"))
    assert torch.isfinite(out_a).all() and out_a.abs().mean() > 0.1
    assert (out_a - out_b).norm() > 0.01 * out_a.norm()


@pytest.mark.parametrize("family", list(FAMILY_FACTS))
def test_bfloat16_outputs_are_finite(rm, family):
    model = rm.build_unet_model(family, dtype=torch.bfloat16)
    clip = rm.build_clip(family, dtype=torch.bfloat16)
    assert model.model.get_dtype() == torch.bfloat16
    assert {p.dtype for n, p in clip.cond_stage_model.named_parameters() if not n.endswith("logit_scale")} \
        == {torch.bfloat16}
    out = unet_forward(model, *encode(clip, "a cat"))
    assert torch.isfinite(out).all() and out.abs().mean() > 0.1


def test_weights_are_deterministic_by_seed(rm, checkpoints):
    def state(obj):
        module = getattr(obj, "model", None) or getattr(obj, "cond_stage_model", None) or obj.first_stage_model
        return module.state_dict()

    reference = checkpoints("sd15")
    again = rm.build_checkpoint("sd15", seed=0)
    other = rm.build_checkpoint("sd15", seed=1)
    for ref, same, different in zip(reference, again, other):
        a, b, c = state(ref), state(same), state(different)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_weight_scale_scales_only_cross_attention_projections(rm, checkpoints):
    base = checkpoints("sd15")[0].model.diffusion_model.state_dict()
    sharp = rm.build_unet_model("sd15", weight_scale=4.0).model.diffusion_model.state_dict()
    scaled = {k for k in base if ".attn2.to_" in k and k.split(".")[-2] in ("to_q", "to_k", "to_v")}
    assert len(scaled) == 3 * 16
    for k in base:
        if k in scaled:
            torch.testing.assert_close(sharp[k], base[k] * 4.0)
        else:
            assert torch.equal(sharp[k], base[k]), k


@pytest.mark.parametrize("family", list(FAMILY_FACTS))
def test_stock_nodes_run_end_to_end(comfy, checkpoints, family, tmp_path):
    nodes = comfy.nodes
    model, clip, vae = checkpoints(family)
    positive = nodes.CLIPTextEncode().encode(clip, "a cat")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    for cfg in (1.0, 3.0):
        samples = nodes.KSampler().sample(model, 0, 2, cfg, "euler", "normal", positive, negative, latent)[0]
        assert samples["samples"].shape == (1, 4, 8, 8) and torch.isfinite(samples["samples"]).all()
    image = nodes.VAEDecode().decode(vae, samples)[0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0
    saver = nodes.SaveImage()
    saver.output_dir = str(tmp_path)  # keep ComfyUI's output folder untouched
    saved = saver.save_images(image, filename_prefix="nasa_random")["ui"]["images"]
    assert len(saved) == 1 and (tmp_path / saved[0]["filename"]).is_file()


def test_vae_layout(rm, checkpoints):
    vae = checkpoints("sd15")[2]
    assert (vae.latent_channels, vae.upscale_ratio, vae.downscale_ratio) == (4, 8, 8)
    pixels = torch.rand(1, 64, 64, 3)
    assert vae.encode(pixels).shape == (1, 4, 8, 8)


def test_random_checkpoint_node(comfy, rm):
    node = rm.random_checkpoint_node_class()
    assert node is rm.random_checkpoint_node_class()
    assert node.GET_SCHEMA().node_id == "NASA_RandomWeightCheckpoint"
    import asyncio
    pack_nodes = asyncio.run(asyncio.run(comfy.pack.comfy_entrypoint()).get_node_list())
    assert node not in pack_nodes  # runner-only node: the UI never lists it (the runner registers it per process)
    node.VALIDATE_CLASS()
    required = node.INPUT_TYPES()["required"]
    assert set(required) == {"family", "size", "seed", "dtype"}
    assert tuple(node.RETURN_TYPES) == ("MODEL", "CLIP", "VAE")
    from comfy_api.latest import io
    out = node.execute(family="sd21v", size="tiny", seed=3, dtype="float32")
    assert isinstance(out, io.NodeOutput)
    assert len(out.args) == 3
    model, clip, vae = out.args
    assert rm.count_attn2_layers(model) == 16 and model.model.model_type.name == "V_PREDICTION"
    assert node.execute(family="sd21v", size="tiny", seed=3, dtype="float32").args[0] is model  # cached


def test_threaded_initialisation_gives_the_same_weights(rm):
    def filled(workers):
        module = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.LayerNorm(96), torch.nn.Conv2d(96, 32, 3),
                                     torch.nn.Embedding(50, 8))
        assert rm.init_random_weights(module, seed=5, scope="t", workers=workers) == 7
        return module.state_dict()
    serial, threaded = filled(1), filled(4)
    assert all(torch.equal(serial[k], threaded[k]) for k in serial)
    assert serial["0.weight"].std().item() == pytest.approx(64 ** -0.5, rel=0.1)
    assert torch.equal(serial["1.weight"], torch.ones(96)) and not serial["0.bias"].any()


def test_full_sd15_builds_and_runs(rm):
    """The one test that builds a full-size model (SD1.5 UNet, ~860M parameters, ~10 s on 2 cores)."""
    model = rm.build_unet_model("sd15", "full")
    clip = rm.build_clip("sd15", "full")
    assert rm.parameter_count(model) == PUBLISHED_UNET_PARAMS["sd15"]
    assert model.model.diffusion_model.out[2].weight.std().item() == pytest.approx((320 * 9) ** -0.5, rel=0.05)
    out_a = unet_forward(model, *encode(clip, "a photo of a cat"), size=8)
    out_b = unet_forward(model, *encode(clip, "an oil painting of a red car"), size=8)
    assert torch.isfinite(out_a).all() and (out_a - out_b).norm() > 0.01 * out_a.norm()
