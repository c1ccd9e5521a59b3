"""Keeping the negative's projections across the steps of one sampling run (exact, or not at all).

A multi-step run projects the same negative with the same weights at every step; :class:`ProjectionCache` keeps
the first step's result while it can prove the weights are unchanged, and recomputes otherwise.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

_CAST_TIME_PATCHES = ("weight_function", "bias_function", "weight_lowvram_function", "bias_lowvram_function")


class _Same:
    """A key part equal only to one holding the same objects (by identity), which it holds (so their ids cannot be
    reused meanwhile)."""
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = tuple(items)

    def __eq__(self, other) -> bool:
        return (isinstance(other, _Same) and len(other.items) == len(self.items)
                and all(a is b for a, b in zip(self.items, other.items)))

    __hash__ = None


def weights_key(modules, grad: bool = False) -> Optional[tuple]:
    """What identifies the modules' current weights: each parameter's object, storage, dtype and shape, the
    patches a quantized parameter applies when it is dequantized (ComfyUI-GGUF keeps LoRA patches on the
    tensor, ``p.patches``, in a list it copies freely: compared item by item), and its version counter where it
    keeps one (an in-place update changes it). Inference tensors - ComfyUI loads and samples under
    ``torch.inference_mode`` - keep no version counter: within one sampling run, the only time a key is
    compared, ComfyUI changes weights through weight hooks (reuse is off then, :mod:`.sampler`) or at cast time.
    None when a layer applies weight patches at cast time (comfy.ops lowvram weight/bias functions; ComfyUI
    0.33's dynamic-VRAM patcher keeps them as ``weight_lowvram_function`` / ``bias_lowvram_function``), whose
    result NASA cannot vouch for, or when ``grad`` (autograd on) and a parameter requires grad."""
    key = []
    for module in modules:
        for sub in module.modules():
            if any(getattr(sub, name, None) for name in _CAST_TIME_PATCHES):
                return None
        for p in module.parameters():
            if grad and p.requires_grad:
                return None
            version = None if p.is_inference() else p._version
            key.append((id(p), p.data_ptr(), p.device, p.dtype, tuple(p.shape), version,
                        _Same(getattr(p, "patches", None) or ())))
    return tuple(key)


class ProjectionCache:
    """``compute(x)``, computed once per sampling run and reused at later steps while ``x`` (the same object: the
    negative as the run holds it, or an embedding this cache returned) and the parameters of ``modules`` are
    unchanged. Exact: the same modules on the same input give the same result. ``enabled`` only for multi-step
    runs without ComfyUI weight hooks (one-step runs keep nothing); never for layers whose weights ComfyUI
    patches at cast time (lowvram weight functions); never where autograd could flow (gradients must reach
    every step)."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self._kept: dict = {}     # (name, id(x)) -> (x, weights key, result)

    def get(self, name, modules: Sequence[torch.nn.Module], x, compute: Callable):
        if not self.enabled or torch.compiler.is_compiling():
            return compute(x)       # compiled: in the graph, every step (a kept result would be guarded on)
        weights = weights_key(modules, torch.is_grad_enabled())
        if weights is None or (torch.is_grad_enabled() and getattr(x, "requires_grad", False)):
            return compute(x)
        key = (name, id(x))
        hit = self._kept.get(key)
        if hit is not None and hit[0] is x and hit[1] == weights:
            return hit[2]
        out = compute(x)
        self._kept[key] = (x, weights, out)      # holding x keeps its id unique for the run
        return out

    def __len__(self) -> int:
        """How many results are kept."""
        return len(self._kept)
