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

The variants ComfyUI builds on WanModel (:data:`VARIANTS`) keep the main blocks and their ``"dit"`` replace; NASA
steers the text cross-attention of every main block and nothing of what the variant adds:

* FunControl (WAN21_FunControl2V) and FlowRVS (WAN21_FlowRVS) are plain WanModels (I2V with control channels by
  concatenation; T2V run as an image-to-image flow, ``calculate_denoised`` = the model output). FlowRVS is a
  text-referred video segmenter: its prompt is a referring expression and it is sampled in one or a few steps at
  cfg 1 - the case NASA exists for; a negative names what must not be segmented (another object). Its blocks and
  text path are WanModel's, so NASA acts exactly as on Wan T2V.
* VACE (WAN21_Vace): the ``vace_blocks`` (VaceWanAttentionBlock, a WanAttentionBlock with the same T2V text
  cross-attention) run the control video's tokens (``vace_context``) and add their hints to the video after the
  main blocks. Their queries are conditioning tokens, so - as every reference/conditioning token - they are not
  steered: the control signal stays the one the user gave, and the negative acts on the video tokens in every main
  block, hints included. (They run outside the block replace, so NASA's attention override never sees them.)
* Camera (WAN21_Camera: I2V text + image; WAN22_Camera: T2V): the camera embedding (``control_adapter``) is added
  to the patch embedding, before the blocks: no token of its own.
* S2V (WAN22_S2V): the sequence is [video; reference image; motion frames]; only the video is steered. The audio
  injector runs between blocks (outside the block replace) with its own cross-attention: never steered.
* Animate (WAN22_Animate): the pose latent is added to the patch embedding and the face adapter runs between blocks
  with attention calls outside the block: neither is steered.
* HuMo (WAN21_HuMo): each block (WanAttentionBlockAudio) makes a third attention call, its audio
  cross-attention, after the text one when audio is given: it is not text and never steered (the block must
  make exactly self, text[, audio] calls). Its reference frames follow the video and are not steered.
* SCAIL / SCAIL-2 (I2V): the sequence is [reference frames; video; pose frames] (SCAIL-2's identity masks are
  added to the embeddings); only the video is steered.
* WanDancer (I2V): a reference image's CLIP tokens come before the image's, both before the text (the image term,
  unsteered); the music injector runs between blocks, never steered.
* The causal model (WAN21_CausalAR_T2V, Causal Forcing / Self-Forcing): see the section on it below - under the
  AR video sampler each chunk of frames is steered as the video's tokens are in one forward.

* Animate 2 (WAN_Animate2, I2V): a pose branch runs the same blocks (``forward_pose``, outside the block replace)
  on the pose video with its own text context (the prompt's unless given): conditioning, never steered - its keys
  and values reach the video's self-attention as ComfyUI computes them. The generation half (``forward_gen``, under
  the block replace) makes one self-attention call per frame when pose is given (each frame's queries, with the
  pose frame before it), then the image and text calls; its latent's frame 0 is the reference image's slot, not
  steered.
"""
from __future__ import annotations

import contextvars
from typing import Optional

from . import joint
from .binding import Call, set_wrapper, wrapped_call
from .cross_blocks import FORWARD_KEY, call_at, forward_options, install_blocks, steer_block
from .family import Family, no_layers
from ..nasa_core.flops import patch_tokens



# model_base class -> (module, diffusion model class, steered block class: the module's, else comfy.ldm.wan.model's)
# of each Wan model NASA steers; a class a ComfyUI version lacks is skipped. The config class must still be a
# WAN21_T2V (ComfyUI's Wan configs).
VARIANTS = {
    "WAN21": ("comfy.ldm.wan.model", "WanModel", "WanAttentionBlock"),          # T2V, I2V, FLF2V, FunControl
    "WAN22": ("comfy.ldm.wan.model", "WanModel", "WanAttentionBlock"),          # Wan 2.2 TI2V 5B
    "WAN21_FlowRVS": ("comfy.ldm.wan.model", "WanModel", "WanAttentionBlock"),  # image-to-image flow (T2V blocks)
    "WAN21_Vace": ("comfy.ldm.wan.model", "VaceWanModel", "WanAttentionBlock"),
    "WAN21_Camera": ("comfy.ldm.wan.model", "CameraWanModel", "WanAttentionBlock"),   # WAN21_Camera, WAN22_Camera
    "WAN22_S2V": ("comfy.ldm.wan.model", "WanModel_S2V", "WanAttentionBlock"),
    "WAN22_Animate": ("comfy.ldm.wan.model_animate", "AnimateWanModel", "WanAttentionBlock"),
    "WAN21_HuMo": ("comfy.ldm.wan.model", "HumoWanModel", "WanAttentionBlockAudio"),
    "WAN21_SCAIL": ("comfy.ldm.wan.model", "SCAILWanModel", "WanAttentionBlock"),
    "WAN21_SCAIL2": ("comfy.ldm.wan.model", "SCAIL2WanModel", "WanAttentionBlock"),
    "WAN22_WanDancer": ("comfy.ldm.wan.model_wandancer", "WanDancerModel", "WanAttentionBlock"),
    "WAN21_CausalAR": ("comfy.ldm.wan.ar_model", "CausalWanModel", "CausalWanAttentionBlock"),   # T2V only
    "WAN_Animate2": ("comfy.ldm.wan.model_animate2", "WanAnimate2Model", "WanAnimate2Block"),
}
_SCAIL = ("SCAILWanModel", "SCAIL2WanModel")
_EXTRA_CALLS = "nasa_wan_extra_calls"     # transformer_options key: attention calls a block makes after its text one
_SELF_CALLS = "nasa_wan_self_calls"       # transformer_options key: a block's self-attention calls (else 1)
_BLOCKS_SEEN = "nasa_wan_blocks_seen"     # transformer_options key: the blocks that received this forward's data


def _variant(base):
    """``(diffusion model class, block class)`` of ``base``'s exact model_base class, or None."""
    import importlib
    import comfy.model_base as mb
    for base_name, (module, dm_name, block_name) in VARIANTS.items():
        if type(base) is getattr(mb, base_name, None):
            from comfy.ldm.wan import model as wm
            mod = importlib.import_module(module)
            dm_class = getattr(mod, dm_name, None)
            block_class = getattr(mod, block_name, getattr(wm, block_name, None))
            return (dm_class, block_class) if dm_class is not None and block_class is not None else None
    return None


def _extra_structure(dm) -> bool:
    """What a variant adds is what NASA leaves alone, as ComfyUI's forward uses it (see the module docstring)."""
    from comfy.ldm.wan import model as wm
    name = type(dm).__name__
    if name == "VaceWanModel":
        blocks = getattr(dm, "vace_blocks", ())     # none: its forward could not run
        return len(blocks) > 0 and all(type(b) is wm.VaceWanAttentionBlock for b in blocks)
    if name == "HumoWanModel":
        return all(type(b.audio_cross_attn_wrapper.audio_cross_attn) is wm.WanT2VCrossAttentionGather
                   for b in dm.blocks)
    if name == "CausalWanModel":     # T2V: its cached cross-attention path has no I2V image term
        return dm.model_type == "t2v" and callable(getattr(dm, "forward_block", None))
    if name == "WanAnimate2Model":   # the generation half's self-attention: one call, or one per frame with pose
        return all(callable(getattr(b, "forward_gen", None)) for b in dm.blocks)
    return True


def matches(model_patcher) -> bool:
    """Wan 2.1 / 2.2 and the variants of :data:`VARIANTS`: ComfyUI's exact model class around exactly its
    diffusion model, whose main blocks are exactly the variant's block with a T2V or I2V text cross-attention (the
    attention-call order NASA steers by)."""
    import comfy.supported_models as sm
    from comfy.ldm.wan.model import WanI2VCrossAttention, WanT2VCrossAttention
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    variant = _variant(base)
    if variant is None or type(dm) is not variant[0] or not isinstance(getattr(base, "model_config", None),
                                                                         sm.WAN21_T2V):
        return False
    return dm.model_type in ("t2v", "i2v") and _extra_structure(dm) and all(
        type(b) is variant[1] and type(b.cross_attn) in (WanT2VCrossAttention, WanI2VCrossAttention)
        for b in dm.blocks)


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.text_dim


def model_name(model_patcher) -> str:
    return f"Wan ({type(model_patcher.model.model_config).__name__})"


def _video_tokens(dm, x, ref) -> slice:
    """The generated video's tokens: after reference_latent tokens (ref_conv's, one frame; SCAIL's, its frames
    before the video's in time), before time_dim_concat frames and any tokens a variant appends (S2V's reference
    and motion, HuMo's reference, SCAIL's pose)."""
    p = dm.patch_size
    n_video = patch_tokens(x.shape[2:5], p)
    if type(dm).__name__ == "WanAnimate2Model":     # its latent's frame 0 is the reference image's slot
        return slice(patch_tokens((1, *x.shape[3:5]), p), n_video)
    if ref is None:
        n_ref = 0
    elif type(dm).__name__ in _SCAIL:
        n_ref = patch_tokens(ref.shape[2:5], p)
    else:
        n_ref = (ref.shape[-2] // p[1]) * (ref.shape[-1] // p[2]) if dm.ref_conv is not None else 0
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
    if type(dm).__name__ == "WanDancerModel":       # the reference image's CLIP tokens come first
        clip_ref = call.get("clip_fea_ref")
        image_tokens += clip_ref.shape[-2] if clip_ref is not None and dm.img_emb_refimage is not None else 0
    tokens = _video_tokens(dm, x, call.get("reference_latent"))     # model conditioning: in **kwargs
    new = forward_options(call["transformer_options"], x.shape[0], dm, tokens, embed, image_tokens)
    if new is None:
        return executor(*args, **kwargs)
    if type(dm).__name__ == "HumoWanModel":     # its blocks attend to the audio after the text, when given
        new[_EXTRA_CALLS] = int(call.get("audio_embed") is not None)
    if type(dm).__name__ == "WanAnimate2Model" and call.get("pose_latents") is not None:
        new[_SELF_CALLS] = patch_tokens(x.shape[2:3], dm.patch_size[:1])   # per frame: its queries, + a pose frame
    seen = new[_BLOCKS_SEEN] = []
    call["transformer_options"] = new
    out = call.invoke(executor)
    if not seen and len(dm.blocks) and type(dm).__name__ == "WanModel_S2V":     # (a step cache may skip blocks)
        raise RuntimeError(f"{new[FORWARD_KEY].run.node}: this ComfyUI's {type(dm).__name__} ran its blocks without "
                           f"their transformer_options (older ComfyUI releases do so for Wan S2V), so NASA could not "
                           f"steer this Wan model. Update ComfyUI, or remove the node for this model.")
    return out


def _steer(index: int, fwd, args: dict, prior, original_block):
    """Block ``index`` with NASA on its text cross-attention call (``args``: the block's "dit" replace args)."""
    from comfy.ldm.wan.model import WanI2VCrossAttention
    args["transformer_options"][_BLOCKS_SEEN].append(index)
    attn = fwd.model.blocks[index].cross_attn
    image = isinstance(attn, WanI2VCrossAttention)    # I2V: self, image, text; T2V: self, text
    text_keys = args["txt"].shape[1] - fwd.text_start   # as the block splits its context
    n_self = args["transformer_options"].get(_SELF_CALLS, 1)   # Animate 2 with pose: one per frame
    text_call = n_self + (1 if image else 0)
    calls = text_call + 1 + args["transformer_options"].get(_EXTRA_CALLS, 0)   # HuMo's audio: after the text

    def project(text):     # once per sampling run where run.reuse() may keep it
        return fwd.run.reuse(("kv", index), (attn,), text, lambda t: (attn.norm_k(attn.k(t)), attn.v(t)))
    where = f"Wan block {index}"
    return steer_block(args, prior, original_block, project, call_at(text_call, text_keys, where), where,
                       layer=("blocks", index), calls=calls)


def _make_block(index: int):
    def make(prior):
        def nasa_wan_block(args, extra):
            fwd = (args.get("transformer_options") or {}).get(FORWARD_KEY)
            if fwd is None:
                return joint.chain(prior, extra["original_block"])(args)
            return _steer(index, fwd, args, prior, extra["original_block"])
        return nasa_wan_block
    return make


# ----------------------------------------------------------------------------- the causal (autoregressive) model
# Under ComfyUI's ar_video sampler (SamplerARVideo) CausalWanModel.forward runs forward_block: one chunk of frames
# per model call, the blocks called directly - no DIFFUSION_MODEL wrapper, no "dit" replace, no transformer_options
# (so no attention override). NASA reaches them through two other public patch points: an APPLY_MODEL wrapper (the
# model call's transformer_options, with the sampler's ar_state) builds the call's CrossForward, and an object
# patch of each block's forward runs the block through steer_block with it. Each chunk's queries are steered
# exactly as the video's tokens are in one bidirectional forward (cross-attention is per query); the self-attention
# KV cache then holds the steered chunks' keys and values, as a steered model's hidden states give them (its
# rollback re-writes a chunk's entries at every step), and ComfyUI's cross-attention cache keeps the positive's K, V
# only (NASA's negative K-, V- come from run.reuse). Outside the ar_video sampler the model runs WanModel's forward
# and is steered like Wan T2V.
_AR_CALL: "contextvars.ContextVar" = contextvars.ContextVar("nasa_wan_ar_call", default=None)


def _ar_call_wrapper(executor, *args, **kwargs):
    """APPLY_MODEL wrapper of a CausalWanModel's BaseModel: under the ar_video sampler, this call's CrossForward
    for the blocks' object patches (:func:`_causal_block`)."""
    call = wrapped_call(executor, args, kwargs, "BaseModel._apply_model", needs=("x", "c_crossattn",
                                                                                  "transformer_options"))
    options = call["transformer_options"]
    if not isinstance(options, dict) or options.get("ar_state") is None:
        return executor(*args, **kwargs)
    base = executor.class_obj
    dm, x = base.diffusion_model, call["x"]
    dtype = base.get_dtype_inference() if hasattr(base, "get_dtype_inference") else base.get_dtype()

    def embed(entry, run):     # as forward_block embeds the positive: text_embedding, nothing padded
        return run.reuse("embed", (dm.text_embedding,), entry.on(x.device, dtype),
                         lambda neg: (dm.text_embedding(neg), None))

    new = forward_options(options, x.shape[0], dm, slice(0, patch_tokens(x.shape[2:5], dm.patch_size)), embed)
    if new is None:
        return executor(*args, **kwargs)
    seen = new[_BLOCKS_SEEN] = []
    token = _AR_CALL.set(new)
    try:
        out = executor(*args, **kwargs)
    finally:
        _AR_CALL.reset(token)
    if not seen and len(dm.blocks):
        raise RuntimeError(f"{new[FORWARD_KEY].run.node}: the causal Wan model ran its blocks past NASA's patches "
                           f"under the ar_video sampler: this ComfyUI changed CausalWanModel.forward_block. Please "
                           f"report it to the NASA pack, or remove the node for this model.")
    return out


def _causal_block(index: int, block, prior):
    """Object patch of block ``index``'s forward: the block as ComfyUI wrote it (or ``prior``, an object patch set
    before NASA), steered when called under the ar_video sampler."""
    original = prior if prior is not None else type(block).forward.__get__(block)

    def nasa_causal_block(*args, **kwargs):
        options = _AR_CALL.get()
        if options is None:
            return original(*args, **kwargs)
        call = Call(original, args, kwargs, f"the causal Wan block {index}'s forward",
                    needs=("x", "context", "transformer_options"))

        def run(block_args):
            call["x"], call["context"] = block_args["img"], block_args["txt"]
            call["transformer_options"] = block_args["transformer_options"]
            return {"img": call.invoke(original)}
        # forward_block passes the blocks no transformer_options: NASA adds only its own (an attention override
        # another node set for the model call stays out of these blocks, as without NASA)
        block_options = {**(call["transformer_options"] or {}), FORWARD_KEY: options[FORWARD_KEY],
                         _BLOCKS_SEEN: options[_BLOCKS_SEEN]}
        out = _steer(index, options[FORWARD_KEY], {"img": call["x"], "txt": call["context"],
                                                     "transformer_options": block_options}, None, run)
        return out["img"]
    nasa_causal_block.nasa_prior = prior
    return nasa_causal_block


def _install_causal(model_patcher) -> None:
    for i, block in enumerate(model_patcher.model.diffusion_model.blocks):
        key = f"diffusion_model.blocks.{i}.forward"
        current = model_patcher.object_patches.get(key)
        model_patcher.add_object_patch(key, _causal_block(i, block, getattr(current, "nasa_prior", current)))
    set_wrapper(model_patcher, "APPLY_MODEL", _ar_call_wrapper, "nasa_wan_ar")


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: text_embedding, then each block's k/v and text attention
    over the video tokens (the I2V image term is untouched)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    n = patch_tokens(latent[-3:], dm.patch_size)
    if type(dm).__name__ == "WanAnimate2Model":      # frame 0: the reference image's slot, not steered
        n -= patch_tokens((1, *latent[-2:]), dm.patch_size)
    return Embedding(module_linear_weights(dm.text_embedding), reusable=True), [
        NasaLayer(width=b.cross_attn.q.weight.shape[0], query_tokens=n,
                  shared_weights=module_linear_weights(b.cross_attn.k, b.cross_attn.v)) for b in dm.blocks]


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.blocks)))}


def install(model_patcher) -> int:
    if type(model_patcher.model.diffusion_model).__name__ == "CausalWanModel":
        _install_causal(model_patcher)
    return install_blocks(model_patcher, len(model_patcher.model.diffusion_model.blocks), _make_block,
                          _forward_wrapper)


FAMILY = Family(
    name="Wan 2.1 / 2.2",
    supported=("Wan 2.1 T2V/I2V/FLF2V (incl. CausVid, self-forcing LoRAs)",
               "Wan 2.2 A14B T2V/I2V (one Apply NASA Attention per expert), Wan 2.2 TI2V 5B",
               "Wan 2.1 VACE, Fun Control, Fun Camera (2.1 and 2.2), HuMo, FlowRVS",
               "Wan 2.2 S2V, Wan 2.2 Animate, Wan Animate 2, SCAIL / SCAIL-2, WanDancer",
               "Wan 2.1 causal T2V (Causal Forcing / Self-Forcing; also under the AR video sampler)"),
    model_classes=("WAN21_T2V", "WAN21_I2V", "WAN22_T2V", "WAN21_FunControl2V", "WAN21_FlowRVS", "WAN21_Vace",
                   "WAN21_Camera", "WAN22_Camera", "WAN22_S2V", "WAN22_Animate", "WAN21_HuMo", "WAN21_SCAIL",
                   "WAN21_SCAIL2", "WAN22_WanDancer", "WAN21_CausalAR_T2V", "WAN_Animate2"),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=no_layers, flop_layers=flop_layers, video=True)
