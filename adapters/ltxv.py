"""LTX-Video family adapter (``comfy.ldm.lightricks.model.LTXVModel``).

Every transformer block has a separate text cross-attention, ``attn2`` (``to_q``/``to_k``/``to_v``,
RMS ``q_norm``/``k_norm``, no RoPE, ``to_out``). Its forward passes ``transformer_options`` to
ComfyUI's attention function, so NASA uses the same hook as Wan (see :mod:`.wan`): a
``DIFFUSION_MODEL`` wrapper plus a ``"dit"`` ``double_block`` replace per block whose attention
override steers the block's second attention call (attn1, then attn2).

What LTXV's forward does with the text, and NASA does with the negative alike:

* the raw T5 output goes through the model's ``caption_projection`` once per forward;
* LTXV's T5 pads prompts to at least 128 tokens and returns an ``attention_mask`` (1 = token) in the
  conditioning; the model turns it into an additive key bias ``(mask - 1) * finfo.max`` of shape
  (batch, 1, 1, tokens) and passes it to attn2. The negative's own mask becomes the same bias for
  its attention, so its padding tokens are ignored as the model ignores them. A negative without a
  mask attends to all its tokens, as the model would.

Guide-frame tokens that ``LTXVAddGuide`` appends after the video (``keyframe_idxs``) are
conditioning, not the video being generated, and are never steered.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .wan import FORWARD_KEY, forward_options, install_blocks, options_arg, steer_block

FAMILY = "LTX-Video"
VIDEO = True     # a mask's batch is frames
SUPPORTED = ("LTX-Video 0.9.x (2B, 13B, distilled)",)


def _ltxv_class():
    from comfy.ldm.lightricks.model import LTXVModel
    return LTXVModel


def matches(model_patcher) -> bool:
    return type(getattr(model_patcher.model, "diffusion_model", None)) is _ltxv_class()


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.caption_projection.linear_1.in_features


def family_name(model_patcher) -> str:
    return f"LTX-Video ({type(model_patcher.model.model_config).__name__})"


def _key_bias(mask: Optional[torch.Tensor], tokens: int, dtype, node: str) -> Optional[torch.Tensor]:
    """The negative's token mask as LTXVModel._forward turns the prompt's into an attention bias."""
    if mask is None:
        return None
    if mask.shape[-1] != tokens:
        raise ValueError(f"{node}: the negative's attention_mask covers {mask.shape[-1]} tokens but the negative "
                         f"has {tokens} (LTX-Video). Encode the negative with CLIP Text Encode and this model's T5.")
    if not torch.is_floating_point(mask):
        mask = (mask - 1).to(dtype).reshape(mask.shape[0], 1, -1, tokens) * torch.finfo(dtype).max
    return mask.to(dtype)


def _forward_wrapper(executor, *args, **kwargs):
    """LTXVModel._forward(x, timestep, context, attention_mask, frame_rate, transformer_options, keyframe_idxs)."""
    options = options_arg(args, 5, "LTXVModel")
    x, context = args[0], args[2]
    keyframes = args[6] if len(args) > 6 else kwargs.get("keyframe_idxs")
    dm = executor.class_obj

    def embed(entry, run):     # as _forward embeds the positive: caption_projection; its mask as the model's
        mask = None if entry.attention_mask is None else entry.attention_mask.to(context.device)
        return run.reuse("embed", (dm.caption_projection,), entry.on(context.device, context.dtype),
                         lambda neg: (dm.caption_projection(neg), _key_bias(mask, neg.shape[1], context.dtype, run.node)))

    guides = keyframes.shape[2] if keyframes is not None else 0
    new = forward_options(options, x.shape[0], dm, slice(0, x.shape[2] * x.shape[3] * x.shape[4] - guides), embed)
    if new is None:
        return executor(*args, **kwargs)
    return executor(*args[:5], new, *args[6:], **kwargs)


def _make_block(index: int):
    def make(prior):
        def nasa_ltxv_block(args, extra):
            fwd = (args.get("transformer_options") or {}).get(FORWARD_KEY)
            if fwd is None:
                return joint.chain(prior, extra["original_block"])(args)
            attn = fwd.model.transformer_blocks[index].attn2

            def project(text):     # once per sampling run where run.reuse() may keep it
                return fwd.run.reuse(("kv", index), (attn,), text, lambda t: (attn.k_norm(attn.to_k(t)), attn.to_v(t)))
            return steer_block(args, prior, extra["original_block"], project, 2, 1, args["txt"].shape[1],
                               f"LTXV block {index}", layer=("blocks", index))
        return nasa_ltxv_block
    return make


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: caption_projection, then each block's attn2 to_k/to_v and
    attention over the video tokens (one per latent voxel)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    n = latent[-3] * latent[-2] * latent[-1]
    return Embedding(module_linear_weights(dm.caption_projection), reusable=True), [
        NasaLayer(width=b.attn2.to_q.weight.shape[0], query_tokens=n,
                  shared_weights=module_linear_weights(b.attn2.to_k, b.attn2.to_v)) for b in dm.transformer_blocks]


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.transformer_blocks)))}


def install(model_patcher) -> int:
    return install_blocks(model_patcher, len(model_patcher.model.diffusion_model.transformer_blocks), _make_block,
                          _forward_wrapper)


def attach_layers(run, base_model) -> None:
    """Nothing to resolve ahead: the forward wrapper reads the model it runs on."""
