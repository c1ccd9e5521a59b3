"""Chroma and Chroma Radiance adapter (``comfy.ldm.chroma``, ``comfy.ldm.chroma_radiance``).

Chroma is FLUX.1 without the per-block modulation layers: one ``distilled_guidance_layer`` turns
the timestep and guidance into every block's modulation vectors, and ComfyUI hands each block its
slice as ``vec`` (double blocks: ``((img_mod1, img_mod2), (txt_mod1, txt_mod2))``, single blocks
one ``ModulationOut``). Chroma Radiance is the pixel-space variant: same ``Chroma.forward_orig``
and the same double/single block classes, only the patch embedding and the NeRF decoder head
differ, so one adapter covers both. As for FLUX (see :mod:`.flux` and :mod:`.joint`), the negative
prompt flows through the text-stream weights as a stream of its own:

* embedded with ``txt_in`` at the first double block; text RoPE ids are zeros, so the negative's
  positions get the identity rotation (nothing to apply);
* double blocks: the text modulation ComfyUI passes to the block (``vec[1]``, the row's own),
  ``txt_norm1``, ``txt_attn.qkv``/``norm``/``proj``, ``txt_norm2``, ``txt_mlp``;
* single blocks: the block's modulation, ``pre_norm``, ``linear1``, ``norm``, ``linear2`` (the text
  length, which single blocks are not told, is carried from the double blocks);
* every block's joint attention subtracts alpha * softmax(Q_img K-^T) V- on the image-query rows
  (Chroma has no reference-image tokens: every token after the text is the generated image).

Text padding: ComfyUI 0.3.64 encodes Chroma's T5 prompt unpadded (``min_length=1``) and without an
attention mask, so neither the positive nor the negative has padding to mask. The ``attn_mask``
Chroma's blocks take is the optional bias of Redux/regional conditioning on the positive's own
[text; image] sequence; it stays on the positive attention and does not apply to the negative.

Hook: a ``"dit"`` replace per double and single block (chaining any replace installed before):
FLUX's block replaces (:func:`.flux.make_double` / :func:`.flux.make_single`) and text-stream
``finish`` steps, with this module's ``prepare`` steps: only the modulation source differs. Chroma
has no Kontext reference tokens, so every token after the text is steered.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from . import flux, joint
from .negatives import attach_model

FAMILY = "Chroma"
JOINT_STREAM = True     # a negative stream through the text-stream weights (joint.STREAMS applies)
SUPPORTED = ("Chroma, Chroma Radiance",)


def _chroma_classes():
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.chroma_radiance.model import ChromaRadiance
    return Chroma, ChromaRadiance


def matches(model_patcher) -> bool:
    return type(getattr(model_patcher.model, "diffusion_model", None)) in _chroma_classes()


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def family_name(model_patcher) -> str:
    return f"Chroma ({type(model_patcher.model.model_config).__name__})"


def _rows(mod, rows):
    """A block's modulation (shift/scale/gate, each (B, 1, D)) for a stream's rows."""
    return dataclasses.replace(mod, shift=joint.rows_of(mod.shift, rows), scale=joint.rows_of(mod.scale, rows),
                               gate=joint.rows_of(mod.gate, rows))


def _double_prepare(block, vec):
    _, (mod1, mod2) = vec                      # ((img_mod1, img_mod2), (txt_mod1, txt_mod2))
    return flux.text_stream_double(block, lambda s: (_rows(mod1, s.rows), _rows(mod2, s.rows)))


def _single_prepare(block, mod):
    return flux.text_stream_single(block, lambda s: _rows(mod, s.rows))


def install(model_patcher) -> int:
    return joint.install_double_single(
        model_patcher, functools.partial(flux.make_double, prepare_for=_double_prepare, family="Chroma"),
        functools.partial(flux.make_single, prepare_for=_single_prepare, family="Chroma"))


block_groups = joint.double_single_groups
flop_layers = functools.partial(flux.flop_layers, modulated=False)    # modulation is precomputed for all blocks
attach_layers = attach_model     # the blocks read the model being sampled from the run
