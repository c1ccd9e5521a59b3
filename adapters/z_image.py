"""Z-Image / Z-Image Turbo family adapter (ComfyUI's ``ZImage`` and ``ZImagePixelSpace`` configs).

Z-Image runs on Lumina 2's NextDiT (``comfy.ldm.lumina``) with a layout of its own, so it is a family of its own
that reuses :mod:`.lumina2`'s stream pieces. The sequence of the main ``layers`` is [caption; image; image
padding]:

* the caption, through ``cap_embedder``, padded with the learned ``cap_pad_token`` to a multiple of
  ``pad_tokens_multiple`` (32 in the published checkpoints), at positions ``(1..P, 0, 0)``, refined alone by
  ``context_refiner``;
* the image at ``(P + 1, row, column)``, then learned ``x_pad_token`` tokens up to a multiple of
  ``pad_tokens_multiple``, all at position ``(0, 0, 0)``, refined together by ``noise_refiner``.

``ZImagePixelSpace`` (``NextDiTPixelSpace``) has the same backbone with RGB patches in and a per-patch MLP decoder
(``dec_net``) in place of ``final_layer``: NASA acts in the backbone's main layers only, so both configs are
steered alike.

NASA's negative flows as a stream of its own (see :mod:`.joint`):

* once per forward it is embedded by the model's own ``embed_cap`` (``cap_embedder``, the caption padding rule and
  positions) and refined by every ``context_refiner`` block, exactly as a forward on the negative prompt does;
* in each main layer it is projected and updated with that layer's weights (:func:`.lumina2.layer_streams`:
  adaLN scale and tanh gates, norms, qkv, q/k norms, ``out``, feed-forward);
* each main layer subtracts alpha * softmax(Q_img K-^T) V- on the image tokens of the steered rows. Caption query
  rows and the image padding rows are untouched (padding is no image; like the caption's padding it only carries
  attention).

RoPE (0.33: caption ``1..P``, image at ``P + 1``): the negative of padded length N gets ``image - N + j`` on the
first axis (:func:`.lumina2.negative_rope`, read from the model's own table), so each of its tokens sits at the
distance from the image it has in a forward on the negative prompt. The image padding tokens sit at the fixed
position 0 in every forward, so in the stream's own attention their keys are rotated on by ``P - N``: the whole
[negative; image; padding] sequence is then the negative forward's, shifted by ``P - N`` on the first axis, and the
stream's attention is that forward's (rotary scores depend on position differences only). Where ``P == N`` or the
image needs no padding this is the identity. The image itself is the positive's: the noise refiner lets the image
attend to its padding, whose distance depends on the caption's padded length, so a real forward on the negative
refines the image slightly differently when both differ - the stream's approximation, as everywhere in
:mod:`.joint`.

Hooks, as in :mod:`.lumina2`: an object patch (``ModelPatcher.add_object_patch``) on each main layer's ``forward``
(arguments bound by name) runs the layer through :func:`.joint.run_block`; a ``DIFFUSION_MODEL`` wrapper around
``_forward`` embeds and refines the negative once per forward. The Omni path (reference latents with their
captions and SigLIP features in the sequence, the reference tokens modulated at timestep 0, the batch doubled) is
refused loudly: it lays the sequence out otherwise. A model with SigLIP weights sampled without reference latents
runs the plain layout and is steered.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .binding import SignatureChanged, wrapped_call
from .family import Family, no_layers
from .lumina2 import (block_groups, caption_rope, install_nextdit, negative_rope, nextdit_flop_layers,
                      nextdit_layer_forward)

CONFIGS = {"ZImage": "Lumina2", "ZImagePixelSpace": "ZImagePixelSpace"}
"""comfy.supported_models class -> the comfy.model_base class it builds."""
_MODEL_CLASSES = {"ZImage": "NextDiT", "ZImagePixelSpace": "NextDiTPixelSpace"}


def _omni_refusal(node: str) -> str:
    return (f"{node}: this Z-Image run has reference latents (the Omni edit path: reference images, their captions "
            f"and SigLIP features in the sequence, modulated at timestep 0), which NASA does not support yet. Remove "
            f"the reference latents, or bypass the NASA node for this run.")


def matches(model_patcher) -> bool:
    """ComfyUI's ZImage config on NextDiT itself, or ZImagePixelSpace on NextDiTPixelSpace, each with the model_base
    class its config builds; every main layer modulated and no pooled-CLIP modulation (NewBie's). The Lumina2
    config on the same class is :mod:`.lumina2`'s."""
    import comfy.model_base
    import comfy.supported_models as sm
    from comfy.ldm.lumina import model as lumina
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    name = type(getattr(base, "model_config", None)).__name__
    if name not in CONFIGS or type(base.model_config) is not getattr(sm, name, None):
        return False
    if type(base) is not getattr(comfy.model_base, CONFIGS[name], None) \
            or type(dm) is not getattr(lumina, _MODEL_CLASSES[name], None):
        return False
    return (getattr(dm, "clip_text_pooled_proj", None) is None and callable(getattr(dm, "embed_cap", None))
            and (dm.pad_tokens_multiple is None or getattr(dm, "cap_pad_token", None) is not None)
            and all(getattr(layer, "modulation", False) for layer in dm.layers))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.cap_embedder[1].in_features


def model_name(model_patcher) -> str:
    return f"Z-Image ({type(model_patcher.model.model_config).__name__})"


def padded(n: int, multiple: Optional[int]) -> int:
    """``n`` tokens as the model pads them: up to a multiple of ``pad_tokens_multiple`` (None: not padded)."""
    return n if not multiple else -(-n // multiple) * multiple


def _image_side(state, image: slice, pad: slice):
    """``image_kv`` of :func:`.joint.run_block`: the image's keys and values as the layer's call has them, and its
    padding's keys rotated on by ``P - N`` on the first axis (see the module docstring)."""
    from comfy.ldm.flux.math import apply_rope1
    shifts = state.info["pad_shift"]

    def image_kv(s, k, v, bhld):
        k, v = k[s.rows], v[s.rows]
        if bhld:                                    # (R, heads, tokens, D), as NextDiT's attention call has them
            k, v = k.movedim(2, 1), v.movedim(2, 1)
        k = torch.cat((k[:, image], apply_rope1(k[:, pad], shifts[s.x.shape[1]])), dim=1)
        v = v[:, image.start:pad.stop]
        return (k.movedim(1, 2), v.movedim(1, 2)) if bhld else (k, v)
    return image_kv


def _sides(state, call, where):
    """The image's tokens in Z-Image's sequence (caption first, the image padded to a multiple of 32 at the end),
    where the negative reads its keys and values (the image's padding too, as the positive's attention does, placed
    by :func:`_image_side`), and the negative's RoPE."""
    x = call["x"]
    n_image, n_padded = state.info["image_tokens"]
    start = x.shape[1] - n_padded
    if start <= 0:
        raise SignatureChanged(f"NASA: {where} got a sequence of {x.shape[1]} tokens for an image of {n_padded} "
                               f"padded tokens: this ComfyUI version changed Z-Image's sequence. Please report it to "
                               f"the NASA pack.")
    image, pad = slice(start, start + n_image), slice(start + n_image, x.shape[1])
    pe = negative_rope(state, call["freqs_cis"], image.start, where)
    if "pad_shift" not in state.info:
        state.info["pad_shift"] = {n: state.info["rope"](torch.tensor([start - n])).to(call["freqs_cis"].dtype)
                                   for n in state.info["relative"]}
    return image, image if pad.start == pad.stop else _image_side(state, image, pad), pe


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around NextDiT._forward / NextDiTPixelSpace._forward (arguments bound by name): embed
    and refine the negative(s) as the model does the caption (its own ``embed_cap``, then ``context_refiner``), and
    record the image's token counts and the RoPE pieces the layers place each negative length with."""
    dm = executor.class_obj
    call = wrapped_call(executor, args, kwargs, f"{type(dm).__name__}._forward", needs=("x", "context"))
    x, context = call["x"], call["context"]
    options = dict(call.get("transformer_options") or {})    # this forward's own copy
    call["transformer_options"] = options

    def embed(neg):
        embeds, freqs, _ = dm.embed_cap(cap_feats=neg, offset=0, bsz=1, device=x.device, dtype=x.dtype)
        h, rope = embeds[0], freqs[0]
        for block in dm.context_refiner:
            h = block(h, None, rope, transformer_options=options)
        return h

    state = joint.start_forward(options, x.shape[0], x.device, context.dtype, embed)
    if state is not None and state.streams:
        if len(call.get("ref_latents") or []) > 0:
            raise ValueError(_omni_refusal(state.run.node))
        p, multiple = dm.patch_size, dm.pad_tokens_multiple
        n_image = ((x.shape[-2] + p - 1) // p) * ((x.shape[-1] + p - 1) // p)
        state.info["image_tokens"] = (n_image, padded(n_image, multiple))
        state.info["axis0"] = dm.axes_dims[0] // 2
        state.info["relative"] = {n: caption_rope(dm, torch.arange(-n, 0, device=x.device), torch.float32)
                                  for n in {s.x.shape[1] for s in state.streams}}
        state.info["rope"] = lambda positions: caption_rope(dm, positions.to(x.device), torch.float32)
    return call.invoke(executor)


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops (:func:`.lumina2.nextdit_flop_layers`): the negative counted at
    its length (a multiple of 32, as the model pads it, in the cost table); the stream's own attention sees the
    image and its padding."""
    from ..nasa_core.flops import patch_tokens
    dm = model_patcher.model.diffusion_model
    n_img = patch_tokens(latent[-2:], dm.patch_size)
    return nextdit_flop_layers(dm, n_img, padded(n_img, dm.pad_tokens_multiple))


def install(model_patcher) -> int:
    return install_nextdit(model_patcher, nextdit_layer_forward("Z-Image", _sides, _omni_refusal), _forward_wrapper)


FAMILY = Family(
    name="Z-Image", supported=("Z-Image / Z-Image Turbo (NextDiT, Qwen3-4B text)", "Z-Image pixel space"),
    model_classes=("ZImage", "ZImagePixelSpace"), matches=matches, model_name=model_name,
    context_dim=context_dim, block_groups=block_groups, install=install, layers=no_layers, flop_layers=flop_layers,
    joint_stream=True)
