"""What the toy world's two diffusion models (:mod:`.models`' UNet, :mod:`.mmdit`'s FLUX-class MMDiT) share:
their latent format, a float32 config, a ModelPatcher from weights or a seeded init, and the fp16 file format."""
from __future__ import annotations

import functools
from typing import Dict, Optional

import torch


@functools.lru_cache(maxsize=None)
def latent_format():
    """The toy models' latent format: ChromaRadiance's identity RGB format, declared 8x smaller than the image
    size an EmptyLatentImage is asked for. ComfyUI 0.3.64 always divides that size by 8; from 0.3.7x on it
    divides by the model's ``spacial_downscale_ratio`` (1 for a real pixel-space model), so this declaration
    keeps "EmptyLatentImage 192x192 = the toy's 24x24 pixels" on every version."""
    import comfy.latent_formats

    class ToyPixels(comfy.latent_formats.ChromaRadiance):
        spacial_downscale_ratio = 8

    return ToyPixels


def float32(config):
    """A toy model config set to run in float32, as ComfyUI's loader sets a checkpoint's inference dtype."""
    import comfy.model_management as mm
    config.set_inference_dtype(torch.float32, mm.unet_manual_cast(torch.float32, mm.get_torch_device(),
                                                                  config.supported_inference_dtypes))
    return config


def patcher(model, state_dict: Optional[Dict[str, torch.Tensor]], seed: int, reset, what: str):
    """A ComfyUI ModelPatcher around a toy BaseModel: weights from ``state_dict`` or a seeded ``reset`` init."""
    import comfy.model_management as mm
    import comfy.model_patcher
    if state_dict is None:
        torch.manual_seed(seed)
        model.diffusion_model.apply(reset)
    else:   # through the config's own key conversion, as ComfyUI's loader (0.3.7x+ FLUX: *_norm.scale -> .weight)
        state_dict = model.model_config.process_unet_state_dict(dict(state_dict))
        missing, unexpected = model.diffusion_model.load_state_dict({k: v.float() for k, v in state_dict.items()},
                                                                    strict=False)
        if missing or unexpected:
            raise ValueError(f"toy {what} weights do not match the toy config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


_TORCH_INIT = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def default_init(module: torch.nn.Module) -> None:
    """torch's default init: ComfyUI's disable_weight_init ops skip it (they expect a checkpoint)."""
    for cls in _TORCH_INIT:
        if isinstance(module, cls):
            cls.reset_parameters(module)
            return


def half(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The floating-point tensors of ``state_dict`` in float16, contiguous (the toy weights' file format)."""
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items()
            if torch.is_floating_point(v)}
