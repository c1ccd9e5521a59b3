"""FLUX.1 family adapter: schnell, dev, Fill, Kontext (``comfy.ldm.flux``).

FLUX has no cross-attention: each double block attends jointly over [text; image] with separate
text and image weights, each single block runs [text; image] through shared weights. NASA's
negative flows through the text-stream weights as a stream of its own (see :mod:`.joint`):

* embedded with ``txt_in`` at the first double block; text RoPE ids are zeros in FLUX, so the
  identity rotation is what the negative's positions get (nothing to apply);
* double blocks: ``txt_mod``, ``txt_norm1``, ``txt_attn.qkv``/``norm``/``proj``, ``txt_norm2``, ``txt_mlp``;
* single blocks: ``modulation``, ``pre_norm``, ``linear1``, ``norm``, ``linear2`` (the text length,
  which single blocks are not told, is carried from the double blocks);
* every block's joint attention subtracts alpha * softmax(Q_img K-^T) V- on the generated image's
  query rows. Kontext reference tokens (appended after the image) are keys the negative stream
  attends to, but are never steered.

Hooks: a ``"dit"`` replace per double and single block (chaining any replace installed before;
:mod:`.double_single`), and a ``DIFFUSION_MODEL`` wrapper that records how many tokens the generated
image has.
"""
from __future__ import annotations

from typing import Optional


from . import double_single, joint
from .binding import wrapped_call
from .family import Family
from .run import RUN_KEY


def _flux_class():
    from comfy.ldm.flux.model import Flux
    return Flux


def matches(model_patcher) -> bool:
    """A FLUX.1 config (dev, schnell, Fill, Kontext and configs built on them) on ComfyUI's FLUX.1 model
    class, with FLUX.1's structure. ComfyUI builds FLUX.2 / Klein, LongCat-Image and Ovis on the same
    ``Flux`` class; they differ in what NASA relies on: text RoPE ids (``txt_ids_dims``: text positions are
    no longer zeros), shared modulation (``global_modulation``), the text norm and the MLP. FLUX.2 / Klein
    and LongCat-Image have families of their own (:mod:`.flux2`, :mod:`.longcat_image`); Ovis is refused."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if type(dm) is not _flux_class() or type(base) is not comfy.model_base.Flux \
            or not isinstance(getattr(base, "model_config", None), sm.Flux):
        return False
    p = dm.params
    return (not getattr(p, "txt_ids_dims", None) and not getattr(p, "global_modulation", False)
            and not getattr(p, "txt_norm", False) and not getattr(p, "yak_mlp", False)
            and p.vec_in_dim is not None and all(hasattr(b, "txt_mod") for b in dm.double_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def model_name(model_patcher) -> str:
    return f"FLUX ({type(model_patcher.model.model_config).__name__})"


def _double_prepare(block, vec):
    return double_single.text_stream_double(block, lambda s: block.txt_mod(joint.rows_of(vec, s.rows)))


def _single_prepare(block, vec):
    return double_single.text_stream_single(block, lambda s: block.modulation(joint.rows_of(vec, s.rows))[0])


def _image_tokens_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around Flux._forward (arguments bound by name): the generated image has
    ceil(h/p) * ceil(w/p) tokens, Kontext references follow. Records it in a copy of transformer_options."""
    call = wrapped_call(executor, args, kwargs, "Flux._forward", needs=("x", "transformer_options"))
    x, options = call["x"], call["transformer_options"]
    if isinstance(options, dict) and options.get(RUN_KEY) is not None:
        p = executor.class_obj.patch_size
        n_image = ((x.shape[-2] + p // 2) // p) * ((x.shape[-1] + p // 2) // p)
        call["transformer_options"] = {**options, double_single.IMAGE_TOKENS_KEY: n_image}
        return call.invoke(executor)
    return executor(*args, **kwargs)


def install(model_patcher) -> int:
    return double_single.install_streams(model_patcher, _double_prepare, _single_prepare, "FLUX", _image_tokens_wrapper)


FAMILY = Family(
    name="FLUX.1", supported=("FLUX.1 schnell/dev/Fill/Kontext",),
    model_classes=("FluxSchnell", "Flux", "FluxInpaint"),
    matches=matches, model_name=model_name, context_dim=context_dim,
    block_groups=double_single.double_single_groups, install=install, flop_layers=double_single.flop_layers,
    joint_stream=True)
