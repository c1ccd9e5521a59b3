"""LTX-2 family adapter (``comfy.ldm.lightricks.av_model.LTXAVModel``, ComfyUI's ``LTXAV``): audio + video.

Every ``BasicAVTransformerBlock`` runs two streams, the video's tokens and the audio's, each with its own text
cross-attention: ``attn2`` (video queries) and ``audio_attn2`` (audio queries), both a LTX ``CrossAttention``
(``to_q``/``to_k``/``to_v``, RMS ``q_norm``/``k_norm``, no RoPE on the text, ``to_out``) whose forward passes
``transformer_options`` to ComfyUI's attention function. NASA steers both, each with the negative embedded as
that stream embeds its text, through the Wan/LTX-Video hook (:mod:`.cross_blocks`): a ``DIFFUSION_MODEL``
wrapper plus a ``"dit"`` ``double_block`` replace per block, whose attention override steers the block's two text
calls (:func:`.cross_blocks.steer_block_sites`). The block's other attention calls - video and audio
self-attention, and the audio<->video cross-attentions (``audio_to_video_attn``, ``video_to_audio_attn``), whose
keys are the other stream, not text - run untouched.

What LTX-2 does with the text, and NASA does with the negative alike:

* ComfyUI's LTXAV text encoder hands the Gemma features (``caption_channels`` wide, ``unprocessed_ltxav_embeds``);
  ``LTXAV.extra_conds`` runs them through ``preprocess_text_embeds``: the video's and the audio's
  ``Embeddings1DConnector`` (learnable registers pad the text to at least 1024 tokens, no mask remains),
  concatenated along the width;
* ``LTXAVModel._prepare_context`` splits that into the video's and the audio's half and projects each:
  ``caption_projection`` (video width) and ``audio_caption_projection`` (audio width).

The negative goes through the same two connectors and projections (once per sampling run where
:meth:`.run.NasaRun.reuse` may keep it); the video's embedding steers ``attn2``, the audio's ``audio_attn2``.

Which call is which, is read from the calls: a text call's queries are all of its stream's tokens, its keys the
prompt's tokens, its queries as wide as its layer's and its mask the prompt's (the same object). Before a block
runs, NASA checks that no other attention call of the block (self-attention, the other stream, audio<->video) can
look the same; where one could (equal token counts and widths, no prompt mask), the block is refused.

Not steered: guide-frame tokens ``LTXVAddGuide`` appends to the video (``keyframe_idxs``) and the reference audio
tokens ID-LoRA prepends to the audio (``ref_audio``): conditioning, attended to, never steered.

Block groups: ``video`` (each block's ``attn2``) and ``audio`` (each block's ``audio_attn2``), the same block
indices: the Advanced node's ``blocks`` = ``video`` steers the video only, ``audio`` the audio only.

Only LTX-2 (19B and its distilled models) is claimed: models built with LTX-2.3's cross-attention AdaLN (the
text modulated per timestep before ``to_k``), gated attention or connector-side caption projection are refused.
"""
from __future__ import annotations

import torch

from . import joint
from .binding import wrapped_call
from .cross_blocks import FORWARD_KEY, TextSite, forward_options, install_blocks, steer_block_sites
from .family import Family, no_layers
from .ltxv import video_tokens

AUDIO_KEY = "nasa_ltx2_audio_forward"     # transformer_options key: this forward's audio CrossForward


def matches(model_patcher) -> bool:
    """Exactly LTX-2: ComfyUI's LTXAV model around an LTXAVModel of plain audio-video blocks (no cross-attention
    AdaLN, no gated attention), its text projected after the connectors by PixArt's caption projections."""
    import comfy.model_base
    try:
        from comfy.ldm.lightricks.av_model import BasicAVTransformerBlock, LTXAVModel
        from comfy.ldm.lightricks.embeddings_connector import Embeddings1DConnector
        from comfy.ldm.lightricks.model import PixArtAlphaTextProjection
    except ImportError:
        return False          # a ComfyUI without LTX-2
    model = getattr(model_patcher, "model", None)
    dm = getattr(model, "diffusion_model", None)
    if type(dm) is not LTXAVModel or type(model) is not getattr(comfy.model_base, "LTXAV", None):
        return False
    if getattr(dm, "cross_attention_adaln", True) or getattr(dm, "caption_proj_before_connector", True):
        return False
    if not all(isinstance(getattr(dm, name, None), PixArtAlphaTextProjection)
               for name in ("caption_projection", "audio_caption_projection")):
        return False
    if not all(isinstance(getattr(dm, name, None), Embeddings1DConnector)
               for name in ("video_embeddings_connector", "audio_embeddings_connector")):
        return False
    return all(type(b) is BasicAVTransformerBlock and not getattr(b, "cross_attention_adaln", True)
               and getattr(b.attn2, "to_gate_logits", None) is None
               and getattr(b.audio_attn2, "to_gate_logits", None) is None
               for b in dm.transformer_blocks)


def context_dim(model_patcher) -> tuple:
    """The widths of LTX-2's text encoder output: its Gemma features before the connectors, or (ComfyUI's encoder
    in its compat mode, for checkpoints whose connectors it loads itself) the connectors' video and audio outputs
    side by side."""
    width = model_patcher.model.diffusion_model.caption_channels
    return (width, 2 * width)


def model_name(model_patcher) -> str:
    return f"LTX-2 ({type(model_patcher.model.model_config).__name__})"


def embed_text(dm, text: torch.Tensor, unprocessed: bool = True) -> tuple:
    """``(video, audio)``: text-encoder output as LTX-2 embeds its prompt for each stream - the connectors
    (``LTXAV.extra_conds`` -> ``preprocess_text_embeds``, with the prompt's ``unprocessed_ltxav_embeds`` flag: a
    prompt the encoder already ran the connectors on passes as it is), then the split and each stream's caption
    projection (``LTXAVModel._prepare_context``)."""
    both = dm.preprocess_text_embeds(text, unprocessed=unprocessed)
    video, audio = torch.split(both, [dm.caption_channels, dm.caption_channels], dim=-1)
    return dm.caption_projection(video), dm.audio_caption_projection(audio)


def _text_modules(dm) -> tuple:
    return (dm.video_embeddings_connector, dm.audio_embeddings_connector, dm.caption_projection,
            dm.audio_caption_projection)


def _check_no_masks(fwd, node: str) -> None:
    for terms, _ in fwd.groups:
        if any(t.prompt.mask is not None for t in terms):
            raise ValueError(f"{node}: a NASA Negative with a mask cannot steer LTX-2 (its audio has no image "
                             f"region, and its latent packs video and audio together). Remove the mask.")


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper of LTXAVModel._forward (x = [video, audio] latents, timestep, context,
    attention_mask, frame_rate, transformer_options, keyframe_idxs, denoise_mask, **kwargs: a_timestep,
    ref_audio, ...), its arguments bound by name."""
    call = wrapped_call(executor, args, kwargs, "LTXAVModel._forward",
                        needs=("x", "context", "transformer_options", "keyframe_idxs"))
    x, context = call["x"], call["context"]
    dm = executor.class_obj
    if not isinstance(x, (list, tuple)) or not x:
        raise RuntimeError(f"NASA: LTX-2's forward got a {type(x).__name__} latent, not ComfyUI's list of video "
                           f"and audio latents. Please report it to the NASA pack with your workflow.")
    vx = x[0]
    ax = x[1] if len(x) > 1 else None
    options = call["transformer_options"]

    def text(entry, run):      # both streams' embeddings of a negative, once per run where reuse can keep them
        unprocessed = bool(entry.options.get("unprocessed_ltxav_embeds", False))     # as LTXAV.extra_conds reads it
        return run.reuse(("embed", unprocessed), _text_modules(dm), entry.on(context.device, context.dtype),
                         lambda neg: embed_text(dm, neg, unprocessed))

    n_video = video_tokens(dm, vx, call["keyframe_idxs"], call.get("denoise_mask"))
    new = forward_options(options, vx.shape[0], dm, slice(0, n_video), lambda e, run: (text(e, run)[0], None))
    if new is None:
        return executor(*args, **kwargs)
    _check_no_masks(new[FORWARD_KEY], new[FORWARD_KEY].run.node)
    if ax is not None and ax.numel() > 0:
        ref_audio = call.get("ref_audio")       # ID-LoRA's reference audio tokens, prepended to the audio's
        ref = ref_audio["tokens"].shape[1] if isinstance(ref_audio, dict) and "tokens" in ref_audio else 0
        audio = forward_options(options, vx.shape[0], dm, slice(ref, None), lambda e, run: (text(e, run)[1], None))
        new[AUDIO_KEY] = audio[FORWARD_KEY]
    call["transformer_options"] = new
    return call.invoke(executor)


def _width(attn) -> int:
    """The width of an LTX CrossAttention's queries as its attention call receives them."""
    return attn.heads * attn.dim_head


def _text_signatures(args: dict, block, where: str) -> dict:
    """``{"video": sig, "audio": sig}``, ``sig`` = (query tokens, key tokens, query width, mask) of the block's text
    calls; raises where another attention call of the block could carry the same (NASA could not tell them apart)."""
    vx, ax = args["img"]
    mask = args.get("attention_mask")
    n_v, n_a = vx.shape[1], ax.shape[1]
    texts = {"video": (n_v, args["v_context"].shape[1], _width(block.attn2), mask),
             "audio": (n_a, args["a_context"].shape[1], _width(block.audio_attn2), mask)}
    others = {"video self-attention": (n_v, n_v, _width(block.attn1), args.get("self_attention_mask")),
              "audio self-attention": (n_a, n_a, _width(block.audio_attn1), None),
              "audio-to-video attention": (n_v, n_a, _width(block.audio_to_video_attn), None),
              "video-to-audio attention": (n_a, n_v, _width(block.video_to_audio_attn), None)}
    for name, sig in texts.items():
        rivals = {**others, **{f"{o} text cross-attention": s for o, s in texts.items() if o != name}}
        for rival, other in rivals.items():
            if sig[:3] == other[:3] and sig[3] is other[3]:
                raise RuntimeError(
                    f"NASA: {where}: the {name} text cross-attention and the {rival} have the same number of queries "
                    f"({sig[0]}), keys ({sig[1]}) and width ({sig[2]}) and no prompt mask tells them apart, so NASA "
                    f"cannot tell which call is the text's. Change the video's size or length by one latent frame "
                    f"(or the audio's length).")
    return texts


def _is_text(sig):
    n_q, n_k, width, mask = sig

    def is_text(call, q, k, call_mask) -> bool:
        return (q.ndim == 3 and k.ndim == 3 and q.shape[1] == n_q and k.shape[1] == n_k and q.shape[2] == width
                and call_mask is mask)
    return is_text


def _projector(fwd, attn, name):
    def project(text):     # once per sampling run where run.reuse() may keep it
        return fwd.run.reuse(name, (attn,), text, lambda t: (attn.k_norm(attn.to_k(t)), attn.to_v(t)))
    return project


def _make_block(index: int):
    def make(prior):
        def nasa_ltx2_block(args, extra):
            options = args.get("transformer_options") or {}
            video, audio = options.get(FORWARD_KEY), options.get(AUDIO_KEY)
            if video is None:
                return joint.chain(prior, extra["original_block"])(args)
            block = video.model.transformer_blocks[index]
            where = f"LTX-2 block {index}"
            signatures = _text_signatures(args, block, where)
            sites = []
            if options.get("run_vx", True):         # the block's own switches (run_vx, run_ax) for its streams
                sites.append(TextSite(video, _projector(video, block.attn2, ("kv", "video", index)),
                                      _is_text(signatures["video"]), ("video", index)))
            if audio is not None and options.get("run_ax", True) and args["img"][1].numel() > 0:
                sites.append(TextSite(audio, _projector(audio, block.audio_attn2, ("kv", "audio", index)),
                                      _is_text(signatures["audio"]), ("audio", index)))
            return steer_block_sites(args, prior, extra["original_block"], sites, where)
        return nasa_ltx2_block
    return make


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: the connectors and caption projections, then each block's
    attn2 over the video tokens (one per latent voxel of ``latent[:4]`` = (C, F, H, W)) and audio_attn2 over the
    audio tokens (``latent[4]``: audio latent frames)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    n_video = latent[1] * latent[2] * latent[3]
    n_audio = latent[4]
    connectors = (dm.video_embeddings_connector, dm.audio_embeddings_connector)
    attention = tuple(b.attn1.to_q.weight.shape[0] for c in connectors for b in c.transformer_1d_blocks)
    layers = []
    for b in dm.transformer_blocks:
        layers.append(NasaLayer(width=_width(b.attn2), query_tokens=n_video,
                                shared_weights=module_linear_weights(b.attn2.to_k, b.attn2.to_v)))
        layers.append(NasaLayer(width=_width(b.audio_attn2), query_tokens=n_audio,
                                shared_weights=module_linear_weights(b.audio_attn2.to_k, b.audio_attn2.to_v)))
    return Embedding(module_linear_weights(*_text_modules(dm)), attention=attention, reusable=True), layers


def block_groups(model_patcher) -> dict:
    blocks = list(range(len(model_patcher.model.diffusion_model.transformer_blocks)))
    return {"video": blocks, "audio": list(blocks)}


def install(model_patcher) -> int:
    count = len(model_patcher.model.diffusion_model.transformer_blocks)
    return 2 * install_blocks(model_patcher, count, _make_block, _forward_wrapper)


FAMILY = Family(
    name="LTX-2", supported=("LTX-2 (19B, distilled; audio + video)",), model_classes=("LTXAV",),
    matches=matches, model_name=model_name,
    context_dim=context_dim, block_groups=block_groups, install=install, layers=no_layers, flop_layers=flop_layers,
    video=True)
