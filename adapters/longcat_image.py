"""LongCat-Image family adapter (``comfy.supported_models.LongCatImage`` on ComfyUI's ``Flux`` class,
``comfy.ldm.flux``).

LongCat-Image is FLUX.1's block structure (per-block modulation, GELU MLPs, double then single blocks, no
cross-attention) with a Qwen2.5-VL text encoder (3584 wide), no pooled vector and no guidance embedding; NASA's
negative flows through the text-stream weights as a stream of its own, as in FLUX.1 (:mod:`.double_single`):

* embedded as the model embeds its text (``txt_norm`` where the checkpoint has one, then ``txt_in``);
* text RoPE: text ids are not zeros: token ``i`` sits at (0, i, i) (``txt_ids_dims`` [1, 2], ``Flux._forward``).
  The stream's queries and keys get the model's rotation for the stream's own length (``pe_embedder``, ComfyUI's
  ``apply_rope``): the positions a forward on the negative prompt gives its text. The image's positions are the
  model's own (``model_base.LongCatImage`` shifts them past the positive's text through ``rope_options``); NASA
  only reads them in the block's attention call;
* double blocks: ``txt_mod``, ``txt_norm1``, ``txt_attn.qkv``/``norm``/``proj``, ``txt_norm2``, ``txt_mlp``; single
  blocks: ``modulation``, ``pre_norm``, ``linear1``, ``norm``, ``linear2`` (the text length carried from the double
  blocks);
* every block's joint attention subtracts alpha * softmax(Q_img K-^T) V- on the generated image's query rows.
  Reference latents (LongCat-Image-Edit), appended after the image, are keys the stream attends to, never steered.

Hooks: a ``"dit"`` replace per double and single block (chaining any replace installed before) and a
``DIFFUSION_MODEL`` wrapper recording the generated image's token count (:mod:`.double_single`).
"""
from __future__ import annotations

from typing import Optional

from . import double_single, joint
from .family import Family


def _flux_class():
    from comfy.ldm.flux.model import Flux
    return Flux


def matches(model_patcher) -> bool:
    """ComfyUI's LongCat-Image config on ComfyUI's ``Flux`` class with LongCat's structure: text ids on axes 1
    and 2, per-block modulation (no global modulation), plain GELU MLPs, no pooled vector. FLUX.1 (zero text ids),
    FLUX.2 and Ovis (other configs; global modulation, gated or yak MLPs) are other families."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if not hasattr(sm, "LongCatImage") or type(dm) is not _flux_class() \
            or type(base) is not comfy.model_base.LongCatImage \
            or type(getattr(base, "model_config", None)) is not sm.LongCatImage:
        return False
    p = dm.params
    return (list(getattr(p, "txt_ids_dims", None) or []) == [1, 2] and not getattr(p, "global_modulation", False)
            and not getattr(p, "mlp_silu_act", False) and not getattr(p, "yak_mlp", False) and p.vec_in_dim is None
            and len(p.axes_dim) == 3
            and all(hasattr(b, "txt_mod") and hasattr(b, "txt_attn") for b in dm.double_blocks)
            and all(b.modulation is not None and not b.yak_mlp for b in dm.single_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def model_name(model_patcher) -> str:
    return f"LongCat-Image ({type(model_patcher.model.model_config).__name__})"


def embed_of(dm):
    """How the model embeds its text (``Flux.forward_orig``): ``txt_norm`` where it has one, then ``txt_in``."""
    def embed(negative):
        return dm.txt_in(negative if dm.txt_norm is None else dm.txt_norm(negative))
    return embed


def _double_prepare(block, vec):
    return double_single.text_stream_double(block, lambda s: block.txt_mod(joint.rows_of(vec, s.rows)))


def _single_prepare(block, vec):
    return double_single.text_stream_single(block, lambda s: block.modulation(joint.rows_of(vec, s.rows))[0])


def install(model_patcher) -> int:
    return double_single.install_streams(model_patcher, _double_prepare, _single_prepare, "LongCat-Image",
                                         double_single.image_tokens_wrapper, embed_of=embed_of, text_rope=True)


FAMILY = Family(
    name="LongCat-Image",
    supported=("LongCat-Image, LongCat-Image-Edit (reference images are attended to, not steered)",),
    model_classes=("LongCatImage",),
    matches=matches, model_name=model_name, context_dim=context_dim,
    block_groups=double_single.double_single_groups, install=install, flop_layers=double_single.flop_layers,
    joint_stream=True)
