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
