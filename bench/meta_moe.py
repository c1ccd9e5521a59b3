"""A stand-in, for the meta device, of model code whose FLOPs do not depend on the data but whose shapes do:
mixture-of-experts feed-forwards (HiDream-I1). Used by bench/costs.py on its meta models only.

ComfyUI's MoE (``comfy.ldm.hidream.model.MOEFeedForwardSwiGLU``) sends each token to its top experts by boolean
indexing, whose output size the meta device cannot know (``aten::nonzero`` has no meta kernel). Every token still
reaches exactly ``num_activated_experts`` experts of one size, so any routing costs the same FLOPs: the stand-in
gives each expert an equal share of the routed tokens, runs the gate and the shared expert as the model does, and
so counts what the model computes, whatever the routing.
"""
from __future__ import annotations

import functools

import torch


def _balanced_forward(moe, x):
    moe.gate(x)             # the gate's scores, as the model computes them (the routing itself is data)
    k = moe.num_activated_experts
    tokens = x.reshape(-1, x.shape[-1]).repeat_interleave(k, dim=0)
    parts = torch.tensor_split(tokens, len(moe.experts))
    y = torch.cat([expert(part) for expert, part in zip(moe.experts, parts)])
    return y.view(-1, k, x.shape[-1]).sum(dim=1).view(x.shape) + moe.shared_experts(x)


def balanced_moe(model_patcher) -> None:
    """Object patches (on this ModelPatcher: applied when it is patched, gone when unpatched) replacing the forward
    of every MoE feed-forward of its diffusion model with the equal-FLOPs, meta-runnable stand-in."""
    dm = model_patcher.model.diffusion_model
    for name, module in dm.named_modules():
        if hasattr(module, "experts") and hasattr(module, "gate") and hasattr(module, "shared_experts"):
            model_patcher.add_object_patch(f"diffusion_model.{name}.forward",
                                           functools.partial(_balanced_forward, module))
