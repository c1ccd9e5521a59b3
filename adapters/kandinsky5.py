"""Kandinsky 5 family adapter (``comfy.ldm.kandinsky5.model.Kandinsky5``): Video Lite 2B / Pro 19B (T2V, I2V) and
Image Lite (T2I), on the attention override it shares with Wan and LTX-Video (:mod:`.cross_blocks`).

How Kandinsky 5 reads its text (``Kandinsky5.forward_orig``):

* the Qwen2.5-VL hidden states go through ``text_embeddings`` (Linear + LayerNorm), then through the model's
  ``text_transformer_blocks`` (2 or 4 self-attention + FFN blocks over the text tokens, 1-D RoPE). Those blocks
  are modulated by ``time_embed`` = the timestep embedding + ``pooled_text_embeddings(y)`` (y: the prompt's pooled
  CLIP-L output), per batch row;
* every visual block (``TransformerDecoderBlock``) runs a self-attention over the video tokens, then a
  ``CrossAttention`` of the video tokens over those text tokens (``to_query``/``to_key``/``to_value``, RMS
  ``query_norm``/``key_norm``, ``out_layer``), then its FFN.

ComfyUI passes the text encoder's ``attention_mask`` to the model, which ignores it (it lands in ``**kwargs``): the
prompt's tokens are all attended to. The negative is treated alike.

What NASA does with the negative, exactly as the model does with the prompt: ``text_embeddings``, then every
``text_transformer_blocks`` block (ComfyUI's own modules, called as ``forward_orig`` calls them, with the 1-D RoPE of
the negative's own length), **modulated by the steered row's own ``time_embed``** - its timestep and its positive
prompt's pooled CLIP vector, the tensor the visual blocks receive. The negative flows through the text path as a
negative *stream* beside the prompt's, modulated as the prompt's text is in the same row, as in the joint-attention
families (:mod:`.joint`), whose negative text stream takes the positive's ``vec``. The negative's own pooled vector
(what a CFG pass on the negative would use) is not read, so a NASA negative needs none. Then each visual block's
cross-attention projects it with its own ``to_key`` + ``key_norm`` and ``to_value``, and only the cross-attention
output changes: ``Z+ - alpha * softmax(Q K-^T / sqrt(d)) V-`` on the steered rows' video queries, before
``out_layer``. Because the stream depends on the timestep, nothing is kept across steps (no projection reuse).

When the steered rows share one ``time_embed`` (the usual case: one prompt, one timestep) the stream runs once, at
batch 1; otherwise once for the whole batch, each row with its own modulation.

Hooks: a ``DIFFUSION_MODEL`` wrapper of ``Kandinsky5._forward`` builds the forward's
:class:`.cross_blocks.CrossForward` (the negatives embedded by ``text_embeddings``) and a :class:`NegativeText` that
runs the text blocks on first use; an object patch on every visual block's ``forward`` runs the original forward
with an ``optimized_attention_override`` in its ``transformer_options`` that steers the block's second attention call
(self, text) (:func:`.cross_blocks.steer_block`). Kandinsky 5 makes that call head-major (``skip_reshape``,
(B, H, L, D)); :mod:`.cross_blocks` steers it as (B, L, H*D). Not a ``"dit"`` block replace: ComfyUI 0.33's
``forward_orig`` calls the block of a replace with keywords (``x=``, ``context=``) that
``TransformerDecoderBlock.forward`` (``visual_embed``, ``text_embed``) does not take, so any ``double_block``
replace on this model raises a TypeError inside ComfyUI.

Query tokens that are conditioning, not the video being generated, are never steered: the start frames that
``Kandinsky5ImageToVideo`` writes into the latent through ``time_dim_replace`` (the first latent frames' tokens).
"""
from __future__ import annotations

from typing import Optional

import torch

from .binding import Call, patch_forwards, set_wrapper, wrapped_call
from .cross_blocks import FORWARD_KEY, forward_options, steer_block
from .family import Family, no_layers
from ..nasa_core.flops import patch_tokens

TEXT_KEY = "nasa_kandinsky5_text"    # transformer_options key: this forward's NegativeText


def matches(model_patcher) -> bool:
    """ComfyUI's Kandinsky5 / Kandinsky5Image models around exactly Kandinsky5, whose text blocks are the plain
    TransformerEncoderBlocks and whose visual blocks are TransformerDecoderBlocks with the plain CrossAttention
    (two attention calls per visual block: self, text)."""
    import comfy.model_base as mb
    import comfy.supported_models as sm
    base_classes = tuple(c for c in (getattr(mb, "Kandinsky5", None), getattr(mb, "Kandinsky5Image", None)) if c)
    config_class = getattr(sm, "Kandinsky5", None)
    base = getattr(model_patcher, "model", None)
    if not base_classes or config_class is None or type(base) not in base_classes \
            or not isinstance(getattr(base, "model_config", None), config_class):
        return False
    from comfy.ldm.kandinsky5.model import (CrossAttention, Kandinsky5, TransformerDecoderBlock,
                                            TransformerEncoderBlock)
    dm = getattr(base, "diffusion_model", None)
    return (type(dm) is Kandinsky5 and len(dm.visual_transformer_blocks) > 0
            and all(type(b) is TransformerEncoderBlock for b in dm.text_transformer_blocks)
            and all(type(b) is TransformerDecoderBlock and type(b.cross_attention) is CrossAttention
                    for b in dm.visual_transformer_blocks))


def context_dim(model_patcher) -> Optional[int]:
    """The Qwen2.5-VL width ``text_embeddings`` takes: 3584 for the published models."""
    return model_patcher.model.diffusion_model.text_embeddings.in_layer.in_features


def model_name(model_patcher) -> str:
    return f"Kandinsky 5 ({type(model_patcher.model.model_config).__name__})"


class NegativeText:
    """One forward's negative text stream: each embedded negative through the model's text transformer blocks,
    modulated by the steered rows' ``time_embed``; computed on first use (the visual blocks hand over
    ``time_embed``) and kept for the forward's other blocks."""

    def __init__(self, model, device, dtype, options: dict):
        self.model, self.device, self.dtype = model, device, dtype
        self.options = options      # transformer_options as forward_orig hands them to the text blocks
        self._streams: dict = {}    # id(embedded) -> (embedded, time_embed, stream)

    def stream(self, embedded: torch.Tensor, time_embed: torch.Tensor, groups) -> torch.Tensor:
        hit = self._streams.get(id(embedded))
        if hit is not None and hit[0] is embedded and hit[1] is time_embed:
            return hit[2]
        te = time_embed
        if te.shape[0] > 1:     # only the steered rows read the stream: one row serves all if they share it
            steered = torch.cat([te[rows] for _, rows in groups])
            if steered.shape[0] == 1 or torch.equal(steered, steered[:1].expand_as(steered)):
                te = steered[:1]
        x = embedded if embedded.shape[0] == te.shape[0] else embedded.expand(te.shape[0], -1, -1)
        dm = self.model
        freqs = dm.rope_encode_1d(x.shape[1], device=self.device, dtype=self.dtype, transformer_options=self.options)
        for block in dm.text_transformer_blocks:
            x = block(x, te, freqs, transformer_options=self.options)
        self._streams[id(embedded)] = (embedded, time_embed, x)
        return x


def _generated_tokens(dm, x, time_dim_replace) -> slice:
    """The tokens of the video being generated: all of them after the start frames ``time_dim_replace`` writes
    into the latent (Kandinsky5ImageToVideo's start image), which are conditioning."""
    p = tuple(dm.patch_size)
    sizes = tuple(x.shape[2:]) if x.ndim == 5 else (1,) + tuple(x.shape[2:])
    n = patch_tokens(sizes, p)
    if time_dim_replace is None:
        return slice(0, n)
    if x.ndim != 5 or time_dim_replace.ndim != 5:
        raise RuntimeError(f"NASA: Kandinsky 5 got a time_dim_replace of shape {tuple(time_dim_replace.shape)} for a "
                           f"latent of shape {tuple(x.shape)}; NASA cannot tell which tokens are the start frames. "
                           f"Please report it to the NASA pack with your workflow.")
    frames = min(-(-time_dim_replace.shape[2] // p[0]), -(-sizes[0] // p[0]))
    return slice(frames * patch_tokens(sizes[1:], p[1:]), n)


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper of Kandinsky5._forward (x, timestep, context, y, time_dim_replace,
    transformer_options, **kwargs), its arguments bound by name."""
    call = wrapped_call(executor, args, kwargs, "Kandinsky5._forward",
                        needs=("x", "context", "time_dim_replace", "transformer_options"))
    x, context = call["x"], call["context"]
    dm = executor.class_obj
    tokens = _generated_tokens(dm, x, call["time_dim_replace"])
    if tokens.stop <= tokens.start:
        return executor(*args, **kwargs)    # every frame is a start frame: nothing generated to steer

    def embed(entry, run):     # as forward_orig embeds the prompt; the text blocks follow in NegativeText
        return dm.text_embeddings(entry.on(context.device, context.dtype)), None

    options = call["transformer_options"]
    new = forward_options(options, x.shape[0], dm, tokens, embed)
    if new is None:
        return executor(*args, **kwargs)
    new[TEXT_KEY] = NegativeText(dm, x.device, x.dtype, {k: v for k, v in new.items() if k != FORWARD_KEY})
    call["transformer_options"] = new
    return call.invoke(executor)


def _text_call(text_keys: int, where: str):
    """``is_text`` for :func:`.cross_blocks.steer_block`: a visual block's attention calls are its self-attention,
    then its text cross-attention, both head-major (B, H, L, D); the text call has the prompt's tokens as keys."""
    def is_text(call, q, k, mask) -> bool:
        if call != 1:
            return False
        if q.ndim != 4 or k.ndim != 4 or k.shape[2] != text_keys:
            raise RuntimeError(f"NASA: {where}: attention call 2 has keys {tuple(k.shape)}, expected the "
                               f"{text_keys} text tokens head-major. This ComfyUI version changed the block: please "
                               f"report it.")
        return True
    return is_text


def _block_key(index: int) -> str:
    return f"diffusion_model.visual_transformer_blocks.{index}.forward"


def _make_block(index: int, block, original):
    def nasa_kandinsky5_block(*args, **kwargs):
        """TransformerDecoderBlock.forward (visual_embed, text_embed, time_embed, freqs, transformer_options), its
        arguments bound by name; the original forward runs with NASA's attention override."""
        call = Call(original, args, kwargs, "Kandinsky 5 TransformerDecoderBlock.forward",
                    needs=("text_embed", "time_embed", "transformer_options"))
        options = call["transformer_options"] or {}
        fwd, text = options.get(FORWARD_KEY), options.get(TEXT_KEY)
        if fwd is None or text is None:
            return original(*args, **kwargs)
        attn = block.cross_attention
        time_embed = call["time_embed"]

        def project(embedded):     # every forward: the stream depends on the timestep
            x = text.stream(embedded, time_embed, fwd.groups)
            k = attn.key_norm(attn.to_key(x).view(*x.shape[:-1], attn.num_heads, -1))
            return k.flatten(2), attn.to_value(x)

        def run_block(block_args):
            call["transformer_options"] = block_args["transformer_options"]
            return call.invoke(original)
        where = f"Kandinsky 5 visual block {index}"
        return steer_block({"transformer_options": options}, None, run_block, project,
                           _text_call(call["text_embed"].shape[1], where), where, layer=("blocks", index), calls=2)

    return nasa_kandinsky5_block


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: text_embeddings and the text transformer blocks on the negative
    (every forward: modulated by the timestep), then each visual block's to_key/to_value (every forward) and its
    text attention over the video tokens."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    sizes = tuple(latent[-3:]) if len(latent) == 4 else (1,) + tuple(latent[-2:])
    n = patch_tokens(sizes, tuple(dm.patch_size))
    text = dm.text_transformer_blocks
    embedding = Embedding(
        weights=module_linear_weights(dm.text_embeddings, *[b.self_attention for b in text],
                                      *[b.feed_forward for b in text]),
        vector_weights=module_linear_weights(*[b.text_modulation for b in text]),
        attention=[b.self_attention.to_query.weight.shape[0] for b in text])
    return embedding, [NasaLayer(width=b.cross_attention.to_query.weight.shape[0], query_tokens=n,
                                 row_weights=module_linear_weights(b.cross_attention.to_key,
                                                                   b.cross_attention.to_value))
                       for b in dm.visual_transformer_blocks]


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.visual_transformer_blocks)))}


def install(model_patcher) -> int:
    """Object-patch every visual block's forward of a (cloned) model patcher and wrap the diffusion model's
    forward; returns how many blocks."""
    count = patch_forwards(model_patcher, model_patcher.model.diffusion_model.visual_transformer_blocks, _block_key,
                           _make_block, lambda i: f"the forward of Kandinsky 5 visual block {i}")
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _forward_wrapper)
    return count


FAMILY = Family(
    name="Kandinsky 5",
    supported=("Kandinsky 5.0 Video Lite 2B / Pro 19B (T2V, I2V)", "Kandinsky 5.0 Image Lite (T2I)"),
    model_classes=("Kandinsky5", "Kandinsky5Image"),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=no_layers, flop_layers=flop_layers, video=True)
