"""Wan 2.1 / 2.2 family adapter (``comfy.ldm.wan.model.WanModel``), on the block override it shares with
LTX-Video (:mod:`.cross_blocks`).

Wan has a separate text cross-attention in every block (``WanT2VCrossAttention``, or
``WanI2VCrossAttention`` which also attends to CLIP-vision tokens with ``k_img``/``v_img``). The
raw text-encoder output is embedded once per forward by the model's ``text_embedding``; ComfyUI's
forward pads nothing (``text_len`` is unused): the UMT5 tokenizer already pads every prompt to 512
tokens with zeroed padding, and the model embeds and attends to all of them. The negative is
treated exactly the same way: ``text_embedding`` on the negative as given, then each block's own
``k`` + ``norm_k`` and ``v``. Only the text term is steered; the I2V image term is left alone.

Hook - the least fragile public one: the cross-attention modules pass ``transformer_options`` to
ComfyUI's ``optimized_attention``, which honours ``transformer_options["optimized_attention_override"]``.

* A ``DIFFUSION_MODEL`` wrapper builds this forward's :class:`.cross_blocks.CrossForward` once (steered rows from
  the NasaRun, the negatives embedded as the model embeds its text, which query tokens belong to
  the generated video) and hands it to the blocks in a copy of ``transformer_options``.
* A ``"dit"`` ``double_block`` replace per block (chaining a replace installed before) runs the
  original block with an attention override in its ``transformer_options``. The override lets every
  call through (or through an override installed before NASA), and on the text cross-attention call
  subtracts ``coef * softmax(Q K-^T/sqrt(d)) V-`` from the positive rows' video queries, computing Z-
  with the same attention function. The block's ``o`` projection follows. Which call is the text one,
  the family says (:func:`steer_block`'s ``is_text``): Wan's blocks make a fixed sequence (T2V: self,
  text; I2V: self, image, text), LTXV's are told by their queries and keys (see :mod:`.ltxv`). A block
  that makes another number of calls, or not exactly one text call, makes NASA raise.

Nothing of the block is re-implemented: Z+, the image term, the output projection, the FFN all run
as ComfyUI wrote them, and weight patches (LoRA: CausVid, self-forcing, lightx2v) reach the
negative's projections because they are the block's own modules at sample time.

Query tokens that are conditioning, not the video being generated, are never steered: Wan's
``reference_latent`` tokens (before the video) and ``time_dim_concat`` frames (after it).

Wan 2.2 A14B is two models (high-noise and low-noise experts, each a Wan 2.1-layout model):
each needs its own Apply NASA Attention node.
"""
from __future__ import annotations

from typing import Optional

from . import joint
from .binding import wrapped_call
from .cross_blocks import FORWARD_KEY, call_at, forward_options, install_blocks, steer_block
from .family import Family, no_layers
from ..nasa_core.flops import patch_tokens



def _wan_class():
    from comfy.ldm.wan.model import WanModel
    return WanModel


def matches(model_patcher) -> bool:
    """Wan 2.1 / 2.2 T2V and I2V: ComfyUI's WAN21 / WAN22 model around exactly WanModel, whose blocks are plain
    WanAttentionBlocks with a T2V or I2V text cross-attention (the attention-call order NASA steers by). VACE,
    camera, S2V, HuMo, Animate, SCAIL, WanDancer and causal models subclass WanModel or its block with other
    forwards and extra attention calls; FlowRVS runs WanModel as an image-to-image flow: all refused."""
    import comfy.model_base as mb
    import comfy.supported_models as sm
    from comfy.ldm.wan.model import WanAttentionBlock, WanI2VCrossAttention, WanT2VCrossAttention
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if type(dm) is not _wan_class() or type(base) not in (mb.WAN21, getattr(mb, "WAN22", mb.WAN21)) \
            or not isinstance(getattr(base, "model_config", None), sm.WAN21_T2V):
        return False
    return dm.model_type in ("t2v", "i2v") and all(
        type(b) is WanAttentionBlock and type(b.cross_attn) in (WanT2VCrossAttention, WanI2VCrossAttention)
        for b in dm.blocks)


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.text_dim


def model_name(model_patcher) -> str:
    return f"Wan ({type(model_patcher.model.model_config).__name__})"


def _video_tokens(dm, x, ref) -> slice:
    """The generated video's tokens: after reference_latent tokens, before time_dim_concat frames."""
    p = dm.patch_size
    n_video = patch_tokens(x.shape[2:5], p)
    n_ref = (ref.shape[-2] // p[1]) * (ref.shape[-1] // p[2]) if dm.ref_conv is not None and ref is not None else 0
    return slice(n_ref, n_ref + n_video)


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper of WanModel._forward (x, timestep, context, clip_fea, time_dim_concat,
    transformer_options, **kwargs), its arguments bound by name."""
    call = wrapped_call(executor, args, kwargs, "WanModel._forward", needs=("x", "context", "clip_fea",
                                                                            "transformer_options"))
    x, context = call["x"], call["context"]
    dm = executor.class_obj

    def embed(entry, run):     # as forward_orig embeds the positive: text_embedding, nothing padded
        return run.reuse("embed", (dm.text_embedding,), entry.on(context.device, context.dtype),
                         lambda neg: (dm.text_embedding(neg), None))

    clip_fea = call["clip_fea"]
    image_tokens = clip_fea.shape[-2] if clip_fea is not None and dm.img_emb is not None else 0
    tokens = _video_tokens(dm, x, call.get("reference_latent"))     # model conditioning: in **kwargs
    new = forward_options(call["transformer_options"], x.shape[0], dm, tokens, embed, image_tokens)
    if new is None:
        return executor(*args, **kwargs)
    call["transformer_options"] = new
    return call.invoke(executor)


def _make_block(index: int):
    def make(prior):
        def nasa_wan_block(args, extra):
            fwd = (args.get("transformer_options") or {}).get(FORWARD_KEY)
            if fwd is None:
                return joint.chain(prior, extra["original_block"])(args)
            from comfy.ldm.wan.model import WanI2VCrossAttention
            attn = fwd.model.blocks[index].cross_attn
            image = isinstance(attn, WanI2VCrossAttention)    # I2V: self, image, text; T2V: self, text
            text_keys = args["txt"].shape[1] - fwd.text_start   # as the block splits its context

            def project(text):     # once per sampling run where run.reuse() may keep it
                return fwd.run.reuse(("kv", index), (attn,), text, lambda t: (attn.norm_k(attn.k(t)), attn.v(t)))
            where = f"Wan block {index}"
            return steer_block(args, prior, extra["original_block"], project,
                               call_at(2 if image else 1, text_keys, where), where, layer=("blocks", index),
                               calls=3 if image else 2)
        return nasa_wan_block
    return make


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: text_embedding, then each block's k/v and text attention
    over the video tokens (the I2V image term is untouched)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    n = patch_tokens(latent[-3:], dm.patch_size)
    return Embedding(module_linear_weights(dm.text_embedding), reusable=True), [
        NasaLayer(width=b.cross_attn.q.weight.shape[0], query_tokens=n,
                  shared_weights=module_linear_weights(b.cross_attn.k, b.cross_attn.v)) for b in dm.blocks]


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.blocks)))}


def install(model_patcher) -> int:
    return install_blocks(model_patcher, len(model_patcher.model.diffusion_model.blocks), _make_block,
                          _forward_wrapper)


FAMILY = Family(
    name="Wan 2.1 / 2.2",
    supported=("Wan 2.1 T2V/I2V/FLF2V (incl. CausVid, self-forcing LoRAs)",
               "Wan 2.2 A14B T2V/I2V (one Apply NASA Attention per expert), Wan 2.2 TI2V 5B"),
    model_classes=("WAN21_T2V", "WAN21_I2V", "WAN22_T2V"),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=no_layers, flop_layers=flop_layers, video=True)
