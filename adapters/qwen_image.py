"""Qwen-Image family adapter: Qwen-Image, Qwen-Image-Edit (also 2511) and Qwen-Image-Layered (``comfy.ldm.qwen_image``).

Every Qwen-Image block attends jointly over [text; image] with separate text weights
(``add_q_proj``/``add_k_proj``/``add_v_proj``, ``norm_added_q``/``norm_added_k``, ``to_add_out``)
and its own text modulation and MLP (``txt_mod``, ``txt_norm1``/``txt_norm2``, ``txt_mlp``). NASA's
negative flows through those weights as a stream of its own (see :mod:`.joint`):

* embedded once per forward as the model embeds its text: ``txt_norm`` then ``txt_in``;
* text RoPE: the model gives text token ``j`` the position ``txt_start + j`` on all three axes, with
  ``txt_start`` half the image's longer token side (so text sits after the image, whatever its
  length). The negative's tokens get the same rule for the negative's length - the positions a
  forward on the negative prompt would give them - through the model's own ``pe_embedder``;
* every block subtracts alpha * softmax(Q_img K-^T) V- on the generated image's query rows (all ``T * h * w``
  of them: Qwen-Image-Layered generates ``T`` layers at once). Edit reference latents (appended after the
  image) are keys the negative stream attends to, never steered;
* Qwen-Image-Edit-2511 (``index_timestep_zero``) modulates its reference tokens at timestep 0: the block gets
  ``vec`` for 2B rows, the regular timestep's first, and modulates text (hence the negative) with those.

Hooks: a ``"dit"`` replace per ``("double_block", i)`` (the keys the model exposes; each chains a
replace installed before NASA), and a ``DIFFUSION_MODEL`` wrapper (bound to ``_forward``'s parameters by
name: ComfyUI dropped ``guidance`` and added ``additional_t_cond`` between releases) that embeds the negative
for the forward and records the image size the text positions and image token count come from. The
wrapper keeps this forward's state in a copy of ``transformer_options``, so nothing outlives the forward.

The negative's RoPE is applied with ``comfy.ldm.flux.math.apply_rope1`` on (rows, tokens, heads, dim) and a
(1, tokens, 1, ...) table, whatever layout the block's own attention uses (ComfyUI moved it from
(B, L, H, D) to head-major in 0.33; :mod:`.joint` brings the stream to the block's layout).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .binding import set_wrapper, wrapped_call
from .family import Family

REF_METHODS = ("index", "index_timestep_zero", "negative_index")
"""The ``default_ref_method`` values of the checkpoints ComfyUI builds (Qwen-Image and Edit, Edit-2511, Layered)."""


def _model_class():
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    return QwenImageTransformer2DModel


def matches(model_patcher) -> bool:
    """ComfyUI's Qwen-Image config on its Qwen-Image model class itself (its ControlNet subclasses it, MageFlow
    reuses its blocks in a model of its own), with the blocks NASA projects the negative through and a reference
    method NASA knows (a new one could change the timestep each token is modulated with)."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if type(dm) is not _model_class() or type(base) is not comfy.model_base.QwenImage \
            or type(getattr(base, "model_config", None)) is not sm.QwenImage:
        return False
    return (getattr(dm, "default_ref_method", "index") in REF_METHODS and hasattr(dm, "proj_out")
            and all(hasattr(b, "txt_mod") and hasattr(b.attn, "add_q_proj") for b in dm.transformer_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.txt_in.in_features


def _variant(dm) -> Optional[str]:
    if getattr(dm.time_text_embed, "use_additional_t_cond", False):
        return "Layered"
    if getattr(dm, "default_ref_method", "index") == "index_timestep_zero":
        return "Edit-2511"
    return None


def model_name(model_patcher) -> str:
    variant = _variant(model_patcher.model.diffusion_model)
    return f"Qwen-Image ({type(model_patcher.model.model_config).__name__}{', ' + variant if variant else ''})"


def _modulate(x, params):
    shift, scale, gate = params.chunk(3, dim=-1)
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)


def _text_rope(dm, positions, dtype):
    """The model's RoPE table for text tokens at ``positions`` (the same on all three axes), laid out for
    (rows, tokens, heads, dim): ``pe_embedder`` gives (1, 1, tokens, ...)."""
    return dm.pe_embedder(positions.reshape(1, -1, 1).repeat(1, 1, 3)).squeeze(1).unsqueeze(2).to(dtype)


def _block_streams(block, temb, pe):
    from comfy.ldm.flux.math import apply_rope1
    attn = block.attn

    def prepare(s):
        mod1, mod2 = block.txt_mod(joint.rows_of(temb, s.rows)).chunk(2, dim=-1)
        x, gate1 = _modulate(block.txt_norm1(s.x), mod1)
        q = attn.norm_added_q(attn.add_q_proj(x).unflatten(-1, (attn.heads, -1)))
        k = attn.norm_added_k(attn.add_k_proj(x).unflatten(-1, (attn.heads, -1)))
        rope = pe[s.x.shape[1]]
        s.q = apply_rope1(q, rope).flatten(start_dim=2)
        s.k = apply_rope1(k, rope).flatten(start_dim=2)
        s.v = attn.add_v_proj(x)
        s.scratch["mod"] = (gate1, mod2)

    def finish(s):
        gate1, mod2 = s.scratch["mod"]
        x = s.x + gate1 * attn.to_add_out(s.out)
        h, gate2 = _modulate(block.txt_norm2(x), mod2)
        s.x = torch.addcmul(x, gate2, block.txt_mlp(h))
    return prepare, finish


def _make_block(index):
    def make(prior):
        def nasa_double_block(args, extra):
            run_block, state, dm = joint.steered_block(args, extra, prior)
            if state is None:
                return run_block(args)
            img, t, temb = args["img"], args["txt"].shape[1], args["vec"]
            n_img = min(state.info["image_tokens"], img.shape[1])
            if temb.shape[0] == 2 * img.shape[0]:
                # Edit-2511's index_timestep_zero: [regular; timestep 0] rows; the block modulates text with the first
                temb = temb[:img.shape[0]]
            prepare, finish = _block_streams(dm.transformer_blocks[index], temb, state.info["pe"])
            last = index == len(dm.transformer_blocks) - 1
            return joint.run_block(state, args, run_block, slice(t, t + n_img), slice(t, None), prepare,
                                   None if last else finish, f"Qwen-Image block {index}", layer=("blocks", index))
        return nasa_double_block
    return make


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around QwenImageTransformer2DModel._forward (arguments bound by name): embed the
    negative(s) as the model embeds ``context`` and give them the text RoPE the model gives text of their length
    for this image. The generated image has T * h * w tokens (T > 1: Qwen-Image-Layered's layers)."""
    dm = executor.class_obj
    call = wrapped_call(executor, args, kwargs, "QwenImageTransformer2DModel._forward",
                        needs=("x", "context", "transformer_options"))
    x, context = call["x"], call["context"]
    options = dict(call["transformer_options"] or {})
    call["transformer_options"] = options
    state = joint.start_forward(options, x.shape[0], x.device, context.dtype, lambda neg: dm.txt_in(dm.txt_norm(neg)))
    if state is not None and state.streams:
        p = dm.patch_size
        h_len, w_len = (x.shape[-2] + p // 2) // p, (x.shape[-1] + p // 2) // p
        t_len = x.shape[-3] if x.ndim == 5 else 1
        txt_start = round(max(w_len // 2, h_len // 2))
        state.info["image_tokens"] = t_len * h_len * w_len      # reference latents follow the generated image
        state.info["pe"] = {n: _text_rope(dm, torch.arange(txt_start, txt_start + n, device=x.device), x.dtype)
                            for n in {s.x.shape[1] for s in state.streams}}
    return call.invoke(executor)


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: txt_in, then each block's text half on the stream (txt_mod,
    the added q/k/v projections; to_add_out and txt_mlp except in the last block)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    p = dm.patch_size
    n_img = patch_tokens(latent[-3:], (1, p, p)) if len(latent) == 4 else patch_tokens(latent[-2:], p)   # (C, [T,] H, W)
    layers = []
    for i, b in enumerate(dm.transformer_blocks):
        last = i == len(dm.transformer_blocks) - 1
        a = b.attn
        rows = module_linear_weights(a.add_q_proj, a.add_k_proj, a.add_v_proj)
        rows += 0 if last else module_linear_weights(a.to_add_out, b.txt_mlp)
        layers.append(NasaLayer(width=a.add_q_proj.weight.shape[0], query_tokens=n_img, row_weights=rows,
                                row_vector_weights=module_linear_weights(b.txt_mod), stream_keys=-1 if last else n_img))
    return Embedding(module_linear_weights(dm.txt_in)), layers


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.transformer_blocks)))}


def install(model_patcher) -> int:
    dm = model_patcher.model.diffusion_model
    for i in range(len(dm.transformer_blocks)):
        joint.install_dit_replace(model_patcher, "double_block", i, _make_block(i))
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _forward_wrapper)
    return len(dm.transformer_blocks)


FAMILY = Family(
    name="Qwen-Image",
    supported=("Qwen-Image, Qwen-Image-Edit / Edit-2511 (reference latents are attended to, not steered), "
               "Qwen-Image-Layered",),
    model_classes=("QwenImage",),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    flop_layers=flop_layers, joint_stream=True)
