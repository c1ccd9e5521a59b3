"""The toy world's FLUX-class model: ComfyUI's own ``comfy.ldm.flux`` MMDiT at a tiny size (issue 9).

* the model class is ComfyUI's ``Flux`` (double-stream blocks with joint attention over [text; image],
  then single-stream blocks), built through a ``FluxSchnell`` model config, so it samples as a flow
  model (ComfyUI's ``ModelSamplingDiscreteFlow``, shift 1) and every NASA path the FLUX adapter
  installs on real FLUX.1 runs on it unchanged;
* pixel space like the toy UNet: 3 channels at 24x24 with patch 2 (144 image tokens), ChromaRadiance's
  identity latent format, ComfyUI's pixel-space VAE;
* text: the toy world's CLIP (the same file as the UNet's): its hidden states are ``context``
  (``txt_in`` 64 -> 128), its projected pooled output is ``y`` (``vector_in``), exactly what
  CLIPTextEncode hands a FLUX model.

Training needs one thing ComfyUI's inference code does not: its blocks add in place onto tensors that
LayerNorm saved for backward (``x += ...`` in ``SingleStreamBlock``). :func:`trainable` clones what
autograd saves (``saved_tensors_hooks``), so the forward stays ComfyUI's own code, unpatched.
"""
from __future__ import annotations

import contextlib
import json
from typing import Dict, Optional

import torch

from .build import default_init, float32, half, latent_format, patcher
from ..runner.random_weights.models import detected_config

FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 3, "out_channels": 3, "vec_in_dim": 64, "context_in_dim": 64,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 4, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}
"""The toy MMDiT: hidden 128, 4 heads of 32 (RoPE axes 8/12/12), 2 double + 2 single blocks, 1.8 M parameters."""


def _config_class():
    import comfy.supported_models

    class ToyPixelFlux(comfy.supported_models.FluxSchnell):
        """FLUX.1-schnell's model class and flow schedule (shift 1), in pixel space."""
        latent_format = latent_format()
        unet_config = {}

    return ToyPixelFlux


def model_config(flux_config: Optional[dict] = None):
    """The toy's FLUX config (or the one a weights file's metadata holds), completed for the running ComfyUI
    as its checkpoint detection completes a FLUX.1 checkpoint's (e.g. ``txt_ids_dims`` from 0.3.7x on)."""
    return float32(_config_class()(detected_config(dict(flux_config or FLUX_CONFIG))))


def _reset(module: torch.nn.Module) -> None:
    """torch's default init (ComfyUI's ops leave parameters empty) and RMSNorm scales of one (FLUX's own RMSNorm
    holds ``scale`` in ComfyUI 0.3.64; from 0.3.7x it is ComfyUI's torch.nn.RMSNorm, which holds ``weight``)."""
    default_init(module)
    if type(module).__name__ != "RMSNorm" and not isinstance(module, torch.nn.RMSNorm):
        return
    for name in ("scale", "weight"):
        param = getattr(module, name, None)
        if isinstance(param, torch.nn.Parameter):
            with torch.no_grad():
                param.fill_(1.0)


def build_model(state_dict: Optional[Dict[str, torch.Tensor]] = None, seed: int = 0, flux_config: Optional[dict] = None):
    """A ComfyUI ModelPatcher around the toy MMDiT: ``state_dict`` (diffusion_model keys) or a seeded init."""
    return patcher(model_config(flux_config).get_model({}, ""), state_dict, seed, _reset, "MMDiT")


@contextlib.contextmanager
def trainable():
    """Autograd through ComfyUI's FLUX blocks: every tensor saved for backward is saved as a copy, so the
    blocks' in-place additions cannot invalidate it; and ComfyUI's own training switch
    (``comfy.model_management.in_training``, where the version has it, as its training nodes set it) is on, so
    its blocks take their differentiable paths (from 0.3.7x, RoPE otherwise runs comfy-kitchen kernels that have
    no backward)."""
    import comfy.model_management as mm
    switch = hasattr(mm, "in_training")
    before = mm.in_training if switch else None
    if switch:
        mm.in_training = True
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            yield
    finally:
        if switch:
            mm.in_training = before


def flow_loss(base_model, x0: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss through ComfyUI's ``apply_model``: x = (1 - s) x0 + s eps at s = sigmoid(N(0, 1))
    (SD3's logit-normal), target velocity eps - x0 = (x - denoised) / s."""
    b = x0.shape[0]
    s = torch.sigmoid(torch.randn(b, generator=generator)).clamp(1e-3, 1.0)
    noise = torch.randn(x0.shape, generator=generator)
    sv = s.view(-1, 1, 1, 1)
    x = (1 - sv) * x0 + sv * noise
    with trainable():
        denoised = base_model.apply_model(x, s, **cond)
    v = (x - denoised) / sv
    return torch.nn.functional.mse_loss(v, noise - x0)


def save(path, diffusion_model: torch.nn.Module, info: dict) -> None:
    from safetensors.torch import save_file
    meta = {"nasa_toy": "mmdit", "flux_config": json.dumps(FLUX_CONFIG), "info": json.dumps(info)}
    # FLUX's checkpoint key format (RMSNorm ``*_norm.scale``), which ComfyUI 0.3.64's blocks use and newer ones
    # convert on load (their norms hold ``.weight``): files saved on any version load on every version
    state = {(k[:-len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v
             for k, v in diffusion_model.state_dict().items()}
    save_file(half(state), str(path), metadata=meta)
