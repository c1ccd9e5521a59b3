"""Other node packs that change a model so that NASA cannot reach its layers, recognised by structure so an error
can name them and what would be needed (instead of a generic "not supported" or "steered nothing").

* Nunchaku (``ComfyUI-nunchaku``): its FLUX loader swaps the diffusion model for a wrapper (``ComfyFluxWrapper``)
  around a ``nunchaku`` transformer that runs every double and single block in one fused, 4-bit kernel: no block
  NASA could hook, no access to a block's image queries or text-stream projections. Its Qwen-Image model keeps
  ComfyUI's block structure but fuses and quantizes the projections NASA's stream runs through and calls
  attention without ``transformer_options``.
* Step-cache packs that swap the model's forward for their own copy (TeaCache, MagCache): their copy runs the
  blocks without ComfyUI's ``transformer_options``, so NASA's block patches never see the sampling run. ComfyUI's
  core EasyCache and LazyCache wrap the model instead and keep NASA working.
"""
from __future__ import annotations

from typing import Optional


def _nunchaku_parts(model_patcher) -> list:
    base = getattr(model_patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    parts = [model_patcher, base, dm, getattr(dm, "model", None)]
    if hasattr(dm, "modules"):
        parts.extend(dm.modules())
    return [p for p in parts if p is not None]


def nunchaku(model_patcher) -> Optional[str]:
    """Why NASA cannot steer a model Nunchaku loaded, or None for any other model."""
    parts = _nunchaku_parts(model_patcher)
    names = {type(p).__name__ for p in parts}
    from_nunchaku = any(type(p).__module__.split(".")[0] == "nunchaku" or type(p).__name__.startswith("Nunchaku")
                        for p in parts)
    if not from_nunchaku and "ComfyFluxWrapper" not in names:
        return None
    return ("this model was loaded by Nunchaku (ComfyUI-nunchaku), whose quantized transformer runs its blocks in "
            "fused kernels: NASA gets no per-block hook there, and neither the image queries nor the text-stream "
            "projections it needs. Use NASA with the regular checkpoint (bf16, fp8 or GGUF) of this model, or ask "
            "Nunchaku for per-block attention hooks")


CACHE_PACKS = {
    "TeaCache": ("rel_l1_thresh", "coefficients"),
    "MagCache": ("magcache_thresh", "mag_ratios"),
}
"""Step-cache packs that run their own copy of the model's forward: the transformer_options keys they set."""


def forward_replacing_cache(model_options: Optional[dict]) -> Optional[str]:
    """The name of a step-cache pack in ``model_options`` that swaps the model's forward, or None."""
    options = (model_options or {}).get("transformer_options") or {}
    wrapper = (model_options or {}).get("model_function_wrapper")
    qualname = getattr(wrapper, "__qualname__", "") or ""
    for name, keys in CACHE_PACKS.items():
        if all(k in options for k in keys) or qualname.startswith(name + "."):
            return name
    return None
