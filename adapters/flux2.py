"""FLUX.2 family adapter: FLUX.2 dev and FLUX.2 Klein (``comfy.supported_models.Flux2`` on ComfyUI's ``Flux``
class, ``comfy.ldm.flux``).

FLUX.2 keeps FLUX.1's double blocks (separate text and image weights, joint attention over [text; image]) and
single blocks (shared weights over [text; image]) and has no cross-attention; NASA's negative flows through the
text-stream weights as a stream of its own (see :mod:`.joint` and :mod:`.double_single`). What differs from FLUX.1,
and what NASA does about it:

* text length: ``model_base.Flux2.extra_conds`` left-pads every prompt's text-encoder output with zeros to 512
  tokens (Mistral 3 prompts are short; Klein's Qwen3 tokenizer already pads to 512). The negative is padded the
  same way before it is embedded (``txt_norm`` where the model has one, then ``txt_in``), so the stream is the text
  stream a forward on the negative prompt would run;
* text RoPE: text ids are no longer zeros: the axes in ``txt_ids_dims`` ([3]) count the text tokens 0 .. L-1
  (``Flux._forward``). The stream's queries and keys get the model's rotation for the stream's own length, through
  the model's ``pe_embedder`` and ComfyUI's ``apply_rope``;
* global modulation: the blocks have no modulation layers of their own; the model computes the text modulation once
  per forward (``double_stream_modulation_txt`` for the double blocks, ``single_stream_modulation`` for the single
  blocks) and hands it to every block as ``vec``: the stream takes its rows of it. With the
  ``index_timestep_zero`` reference method the single blocks' modulation has two timesteps per row (reference
  tokens at timestep 0); text is modulated with the first, as the model does;
* MLPs: gated SiLU (``mlp_silu_act``), no biases: the block's own ``txt_mlp``, ``linear1`` split at
  ``mlp_hidden_dim_first`` and ``mlp_act``;
* every block's joint attention subtracts alpha * softmax(Q_img K-^T) V- on the generated image's query rows only.
  Reference latents (FLUX.2 edit / Klein references, appended after the image) are keys the stream attends to, as
  the model attends to them, and are never steered.

Hooks: a ``"dit"`` replace per double and single block (chaining any replace installed before) and a
``DIFFUSION_MODEL`` wrapper recording the generated image's token count (:mod:`.double_single`).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import double_single, joint
from .family import Family

TEXT_LENGTH = 512
"""``model_base.Flux2.extra_conds``: text shorter than this is left-padded with zeros to it."""


def _flux_class():
    from comfy.ldm.flux.model import Flux
    return Flux


def matches(model_patcher) -> bool:
    """ComfyUI's FLUX.2 config (dev, Klein 4B / 9B) on ComfyUI's ``Flux`` class with FLUX.2's structure: global
    modulation, text ids on axis 3 only, gated SiLU MLPs, no pooled vector, and no block with modulation of its own.
    FLUX.1 (per-block modulation, zero text ids), LongCat-Image and Ovis (other configs, text ids on axes 1 and 2,
    Ovis' yak MLP and text norm) are other families."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if not hasattr(sm, "Flux2") or type(dm) is not _flux_class() or type(base) is not comfy.model_base.Flux2 \
            or type(getattr(base, "model_config", None)) is not sm.Flux2:
        return False
    p = dm.params
    return (list(getattr(p, "txt_ids_dims", None) or []) == [3] and getattr(p, "global_modulation", False)
            and getattr(p, "mlp_silu_act", False) and not getattr(p, "yak_mlp", False) and p.vec_in_dim is None
            and len(p.axes_dim) == 4
            and all(hasattr(dm, n) for n in ("double_stream_modulation_txt", "single_stream_modulation", "txt_in"))
            and all(not b.modulation and hasattr(b, "txt_attn") for b in dm.double_blocks)
            and all(b.modulation is None and not b.yak_mlp for b in dm.single_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def _variant(dm) -> str:
    """Klein's text encoders are Qwen3 4B / 8B (3 layers of 2560 / 4096), FLUX.2 dev's Mistral 3 (3 x 5120)."""
    return {7680: "Klein 4B", 12288: "Klein 9B", 15360: "dev"}.get(dm.params.context_in_dim, "")


def model_name(model_patcher) -> str:
    variant = _variant(model_patcher.model.diffusion_model)
    return f"FLUX.2 ({type(model_patcher.model.model_config).__name__}{', ' + variant if variant else ''})"


def padded_text(negative: torch.Tensor) -> torch.Tensor:
    """A text-encoder output as ``model_base.Flux2.extra_conds`` gives it to the model: zeros before it up to
    :data:`TEXT_LENGTH` tokens."""
    if negative.shape[1] >= TEXT_LENGTH:
        return negative
    return torch.nn.functional.pad(negative, (0, 0, TEXT_LENGTH - negative.shape[1], 0))


def embed_of(dm):
    """How the model embeds its text (``Flux.forward_orig``), on the negative as extra_conds pads it."""
    def embed(negative):
        x = padded_text(negative)
        if dm.txt_norm is not None:
            x = dm.txt_norm(x)
        return dm.txt_in(x)
    return embed


def _rows(mod, rows):
    """A ModulationOut's rows for a stream (first timestep only: see the module docstring)."""
    from comfy.ldm.flux.layers import ModulationOut
    return ModulationOut(*(joint.rows_of(t[:, :1] if t.ndim == 3 else t, rows)
                           for t in (mod.shift, mod.scale, mod.gate)))


def _double_prepare(block, vec):
    _, (txt_mod1, txt_mod2) = vec      # (image modulation, text modulation), computed once by the model
    return double_single.text_stream_double(block, lambda s: (_rows(txt_mod1, s.rows), _rows(txt_mod2, s.rows)))


def _single_prepare(block, vec):
    return double_single.text_stream_single(block, lambda s: _rows(vec, s.rows))


def install(model_patcher) -> int:
    return double_single.install_streams(model_patcher, _double_prepare, _single_prepare, "FLUX.2",
                                         double_single.image_tokens_wrapper, embed_of=embed_of, text_rope=True)


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: txt_in, then the text-stream weights of every block; the
    modulation is the model's, computed once per forward for every block (nothing per stream)."""
    return double_single.flop_layers(model_patcher, latent, modulated=False)


FAMILY = Family(
    name="FLUX.2",
    supported=("FLUX.2 dev, FLUX.2 Klein 4B/9B (reference images are attended to, not steered)",),
    model_classes=("Flux2",),
    matches=matches, model_name=model_name, context_dim=context_dim,
    block_groups=double_single.double_single_groups, install=install, flop_layers=flop_layers, joint_stream=True)
