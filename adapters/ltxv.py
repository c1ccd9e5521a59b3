"""LTX-Video family adapter (``comfy.ldm.lightricks.model.LTXVModel``).

Every transformer block has a separate text cross-attention, ``attn2`` (``to_q``/``to_k``/``to_v``,
RMS ``q_norm``/``k_norm``, no RoPE, ``to_out``). Its forward passes ``transformer_options`` to
ComfyUI's attention function, so NASA uses the same hook as Wan (see :mod:`.cross_blocks`): a
``DIFFUSION_MODEL`` wrapper plus a ``"dit"`` ``double_block`` replace per block whose attention
override steers the block's text cross-attention call.

Which call that is, is read from the call itself, not from its position: a block makes one self-attention
call (attn1) and one text call (attn2) in the plain case, but two or three self-attention calls when
``LTXVAddGuide`` attenuates guide attention (a ``GuideAttentionMask``: the queries split into noisy, tracked
guide and remaining tokens, each over all keys), and none when spatio-temporal guidance makes attn1 a
value passthrough (``stg_skip_self_attn``). The text call is the one whose queries are all of the block's
tokens and whose keys are the prompt's tokens; where the two counts are equal the call must also carry the
prompt's mask (the same object the block was given), and a block with equal counts and no mask is refused
before it runs. A block that makes no such call, or more than one, is an error.

What LTXV's forward does with the text, and NASA does with the negative alike:

* the raw T5 output goes through the model's ``caption_projection`` once per forward;
* LTXV's T5 pads prompts to at least 128 tokens and returns an ``attention_mask`` (1 = token) in the
  conditioning; the model turns it into an additive key bias ``(mask - 1) * finfo.max`` of shape
  (batch, 1, 1, tokens) and passes it to attn2. The negative's own mask becomes the same bias for
  its attention, so its padding tokens are ignored as the model ignores them. A negative without a
  mask attends to all its tokens, as the model would.

Guide-frame tokens that ``LTXVAddGuide`` appends after the video (``keyframe_idxs``) are
conditioning, not the video being generated, and are never steered.

Only LTX-Video 0.9.x is claimed here: LTX-2 (``LTXAVModel``, audio-video) is :mod:`.ltx2`'s, and LTXV models
built with LTX-2.3's cross-attention AdaLN, gated attention or connector-side caption projection are refused as
unsupported.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .binding import wrapped_call
from .cross_blocks import FORWARD_KEY, forward_options, install_blocks, steer_block
from .family import Family, no_layers


def matches(model_patcher) -> bool:
    """Exactly LTX-Video 0.9.x: ComfyUI's LTXV model around an LTXVModel whose blocks are the plain
    self-attention + text cross-attention ones, its text projected by PixArt's caption projection."""
    import comfy.model_base
    from comfy.ldm.lightricks.model import LTXVModel, PixArtAlphaTextProjection
    model = getattr(model_patcher, "model", None)
    dm = getattr(model, "diffusion_model", None)
    if type(dm) is not LTXVModel or type(model) is not getattr(comfy.model_base, "LTXV", None):
        return False      # LTX-2's LTXAVModel subclasses LTXVModel
    if getattr(dm, "cross_attention_adaln", False) or getattr(dm, "caption_proj_before_connector", False):
        return False
    if not isinstance(getattr(dm, "caption_projection", None), PixArtAlphaTextProjection):
        return False
    return all(not getattr(b, "cross_attention_adaln", False)
               and getattr(b.attn1, "to_gate_logits", None) is None and getattr(b.attn2, "to_gate_logits", None) is None
               for b in dm.transformer_blocks)


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.caption_projection.linear_1.in_features


def model_name(model_patcher) -> str:
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


def _tokens(dm, x) -> int:
    """Tokens of a (B, C, F, H, W) latent after LTXV's patchifier."""
    p = dm.patchifier.patch_size
    return (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])


def video_tokens(dm, x, keyframes, denoise_mask) -> int:
    """How many of the block's video tokens are the video being generated (the first ones): the patchified
    (B, C, F, H, W) latent ``x`` less the guide frames ``LTXVAddGuide`` appended (``keyframe_idxs``). LTX-2's
    video stream is built by the same code (LTXAVModel calls LTXVModel._process_input), so :mod:`.ltx2` counts
    its video tokens here too."""
    guides = keyframes.shape[2] if keyframes is not None else 0
    n_video = _tokens(dm, x) - guides
    if guides and denoise_mask is not None and denoise_mask.ndim == 5 and denoise_mask.shape[2] == x.shape[2]:
        video_frames = n_video // (_tokens(dm, x) // x.shape[2])
        if bool((denoise_mask[:, :, :video_frames] < 0).any()):
            # ComfyUI drops the tokens of a negative denoise mask (dilated IC-LoRA guides), never the video's
            raise RuntimeError("NASA: LTXV's denoise_mask is negative on frames of the video being generated, so "
                               "the model drops some of its tokens and NASA cannot tell which tokens remain the "
                               "video's. Please report it to the NASA pack with your workflow.")
    return n_video


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper of LTXVModel._forward (x, timestep, context, attention_mask, frame_rate,
    transformer_options, keyframe_idxs, [denoise_mask,] **kwargs), its arguments bound by name."""
    call = wrapped_call(executor, args, kwargs, "LTXVModel._forward",
                        needs=("x", "context", "transformer_options", "keyframe_idxs"))
    x, context = call["x"], call["context"]
    dm = executor.class_obj

    def embed(entry, run):     # as _forward embeds the positive: caption_projection; its mask as the model's
        mask = None if entry.attention_mask is None else entry.attention_mask.to(context.device)
        return run.reuse("embed", (dm.caption_projection,), entry.on(context.device, context.dtype),
                         lambda neg: (dm.caption_projection(neg), _key_bias(mask, neg.shape[1], context.dtype, run.node)))

    # denoise_mask: a parameter in newer releases, in **kwargs in older ones
    n_video = video_tokens(dm, x, call["keyframe_idxs"], call.get("denoise_mask"))
    new = forward_options(call["transformer_options"], x.shape[0], dm, slice(0, n_video), embed)
    if new is None:
        return executor(*args, **kwargs)
    call["transformer_options"] = new
    return call.invoke(executor)


def _text_call(args: dict, where: str):
    """``is_text`` for :func:`.cross_blocks.steer_block`: the block's text cross-attention is the attention call whose
    queries are all the block's tokens and whose keys are the prompt's tokens (attn1's calls, however many, have
    the block's tokens as keys). Equal counts: it must also carry the prompt's mask (the same object)."""
    tokens, text_keys, mask = args["img"].shape[1], args["txt"].shape[1], args.get("attention_mask")
    if tokens == text_keys and mask is None:
        raise RuntimeError(f"NASA: {where}: the video has as many tokens as the prompt ({tokens}) and the prompt has "
                           f"no attention_mask, so NASA cannot tell the block's text cross-attention from its "
                           f"self-attention. Change the video's size or length by one latent frame, or encode the "
                           f"prompt with LTX-Video's T5 (which gives the mask).")

    def is_text(call, q, k, call_mask) -> bool:
        return (q.ndim == 3 and k.ndim == 3 and q.shape[1] == tokens and k.shape[1] == text_keys
                and (tokens != text_keys or call_mask is mask))
    return is_text


def _make_block(index: int):
    def make(prior):
        def nasa_ltxv_block(args, extra):
            fwd = (args.get("transformer_options") or {}).get(FORWARD_KEY)
            if fwd is None:
                return joint.chain(prior, extra["original_block"])(args)
            attn = fwd.model.transformer_blocks[index].attn2
            where = f"LTXV block {index}"

            def project(text):     # once per sampling run where run.reuse() may keep it
                return fwd.run.reuse(("kv", index), (attn,), text, lambda t: (attn.k_norm(attn.to_k(t)), attn.to_v(t)))
            return steer_block(args, prior, extra["original_block"], project, _text_call(args, where), where,
                               layer=("blocks", index))
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


FAMILY = Family(
    name="LTX-Video", supported=("LTX-Video 0.9.x (2B, 13B, distilled)",), model_classes=("LTXV",),
    matches=matches, model_name=model_name,
    context_dim=context_dim, block_groups=block_groups, install=install, layers=no_layers, flop_layers=flop_layers,
    video=True)
