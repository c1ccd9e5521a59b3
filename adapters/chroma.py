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
the FLUX-style block replaces (:func:`.double_single.make_double` / :func:`.double_single.make_single`) and
text-stream ``finish`` steps, with this module's ``prepare`` steps: only the modulation source differs. Chroma
has no Kontext reference tokens, so every token after the text is steered.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from . import double_single, joint
from .binding import wrapped_call
from .run import RUN_KEY
from .family import Family


def _chroma_classes():
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.chroma_radiance.model import ChromaRadiance
    return Chroma, ChromaRadiance


def matches(model_patcher) -> bool:
    """A Chroma config on ComfyUI's Chroma or Chroma Radiance class whose text positions are zeros: Radiance
    checkpoints made after 2026-05 give text tokens sequential RoPE positions (``use_sequential_txt_ids``),
    which the negative stream does not model yet."""
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    return (type(dm) in _chroma_classes() and isinstance(getattr(base, "model_config", None), sm.Chroma)
            and not getattr(dm.params, "use_sequential_txt_ids", False)
            and all(getattr(b, "txt_mod", None) is None for b in dm.double_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def model_name(model_patcher) -> str:
    return f"Chroma ({type(model_patcher.model.model_config).__name__})"


def _rows(mod, rows):
    """A block's modulation (shift/scale/gate, each (B, 1, D)) for a stream's rows."""
    return dataclasses.replace(mod, shift=joint.rows_of(mod.shift, rows), scale=joint.rows_of(mod.scale, rows),
                               gate=joint.rows_of(mod.gate, rows))


def _double_prepare(block, vec):
    _, (mod1, mod2) = vec                      # ((img_mod1, img_mod2), (txt_mod1, txt_mod2))
    return double_single.text_stream_double(block, lambda s: (_rows(mod1, s.rows), _rows(mod2, s.rows)))


def _single_prepare(block, mod):
    return double_single.text_stream_single(block, lambda s: _rows(mod, s.rows))


def _check_text_positions(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: Chroma Radiance's text RoPE positions can be switched to sequential per run
    (ChromaRadianceOptions' ``force_sequential_txt_ids``); the negative stream assumes the zeros of every other
    Chroma, so such a run is refused instead of steered with the wrong positions."""
    dm = executor.class_obj
    call = wrapped_call(executor, args, kwargs, f"{type(dm).__name__}._forward", needs=("transformer_options",))
    options = call["transformer_options"]
    override = getattr(dm, "radiance_get_override_params", None)
    if isinstance(options, dict) and options.get(RUN_KEY) is not None and override is not None and \
            getattr(override(options.get("chroma_radiance_options", {})), "use_sequential_txt_ids", False):
        raise ValueError(f"{options[RUN_KEY].node}: this Chroma Radiance run gives text tokens sequential positions "
                         f"(ChromaRadianceOptions' force_sequential_txt_ids), which NASA does not support yet. Turn "
                         f"that option off, or bypass the NASA node for this model.")
    return executor(*args, **kwargs)


def install(model_patcher) -> int:
    return double_single.install_streams(model_patcher, _double_prepare, _single_prepare, "Chroma",
                                         _check_text_positions)


FAMILY = Family(
    name="Chroma", supported=("Chroma, Chroma Radiance",),
    model_classes=("Chroma", "ChromaRadiance"),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=double_single.double_single_groups,
    install=install, joint_stream=True,
    flop_layers=functools.partial(double_single.flop_layers, modulated=False))   # modulation precomputed for all blocks
