"""Whole graphs through ComfyUI's executor (via the headless runner), compared on saved latents.

Decoded random-weight images clamp to 0/1, so exact comparisons use SaveLatent's files instead.
"""
from __future__ import annotations

import pytest
import torch


def _graph(with_nasa: bool, alpha: float = 1.0) -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "sgm_uniform",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/plain"}},
    }
    if with_nasa:
        g["5"] = {"class_type": "NASAApplyAttention",
                  "inputs": {"model": ["1", 0], "alpha": alpha, "use_sampler_negative": True}}
        g["7"] = {"class_type": "KSampler", "inputs": {**g["6"]["inputs"], "model": ["5", 0]}}
        g["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "latents/nasa"}}
    return g


def _latents(result, prefix):
    import safetensors.torch
    files = [p for p in result.images if p.name.startswith(prefix)]
    assert len(files) == 1, result.images
    return safetensors.torch.load_file(str(files[0]))["latent_tensor"]


@pytest.fixture(scope="module")
def run(comfyui):
    cli = comfyui.mod("runner.cli")

    def go(prompt, out):
        result = cli.run_workflow(prompt, out_dir=out, random_weights="sd15:tiny")
        assert result.ok, result.error
        return result
    return go


def test_branch_without_nasa_is_bit_identical_to_a_graph_without_nasa(run, tmp_path):
    alone = _latents(run(_graph(False), tmp_path / "a"), "plain")
    branched = run(_graph(True), tmp_path / "b")
    assert torch.equal(_latents(branched, "plain"), alone)
    assert not torch.equal(_latents(branched, "nasa"), alone)


def test_alpha_zero_branch_is_bit_identical(run, tmp_path):
    r = run(_graph(True, alpha=0.0), tmp_path)
    assert torch.equal(_latents(r, "nasa"), _latents(r, "plain"))


def test_a_state_dict_comfyui_detects_as_sd15_loads_through_the_stock_loader_and_is_steered(comfyui, tmp_path):
    """Real loader path: UNETLoader-style detection of a file (SD1.5 widths, one level to stay small)."""
    import comfy.model_patcher
    import comfy.sample
    import comfy.sd
    import comfy.supported_models as sm
    import safetensors.torch
    rm = comfyui.mod("runner.random_weights.models")
    config = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
              "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
              "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
              "adm_in_channels": None, "use_spatial_transformer": True, "legacy": False,
              "use_temporal_attention": False, "use_temporal_resblock": False}
    built = sm.SD15(dict(config))
    built.set_inference_dtype(torch.float16, None)
    source = built.get_model({})
    rm.init_random_weights(source.diffusion_model, seed=0, scope="loader-test")
    path = tmp_path / "tiny_sd15_unet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.diffusion_model.state_dict().items()}, str(path))

    mp = comfy.sd.load_diffusion_model(str(path))              # ComfyUI's own detection
    assert type(mp.model.model_config).__name__ == "SD15"
    apply = comfyui.nodes.NODE_CLASS_MAPPINGS["NASAApplyAttention"].execute
    g = torch.Generator().manual_seed(0)
    pos, neg = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=g)

    def sample(m):
        return comfy.sample.sample(m, noise, 1, 1.0, "euler", "sgm_uniform", pos, neg, latent, disable_pbar=True, seed=0)
    base = sample(mp)
    assert torch.equal(sample(apply(model=mp, alpha=0.0, use_sampler_negative=True).result[0]), base)
    steered = sample(apply(model=mp, alpha=1.0, use_sampler_negative=True).result[0])
    assert torch.isfinite(steered).all() and not torch.equal(steered, base)
    with pytest.raises(ValueError, match="1024 wide but this SD15 model's text input expects 768"):
        apply(model=mp, alpha=1.0, use_sampler_negative=True, negative=[[torch.zeros(1, 77, 1024), {}]])
