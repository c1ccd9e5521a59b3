"""Cosmos Predict2 and Anima family adapter (``comfy.ldm.cosmos.predict2.MiniTrainDIT``,
``comfy.ldm.anima.model.Anima``).

Both run the same DiT: every ``Block`` has a self-attention (3D RoPE), a separate text cross-attention
(``cross_attn``: ``q_proj``/``k_proj``/``v_proj``, RMS ``q_norm``/``k_norm`` per head, no RoPE, ``output_proj``) and an
MLP, each with its own AdaLN modulation. NASA steers the text cross-attention of every block:
``Z+ - alpha * softmax(Q K-^T / sqrt(d)) V-`` before ``output_proj``, K- and V- the negative through that block's own
``k_proj`` + ``k_norm`` and ``v_proj``.

What the model does with the text, and NASA does with the negative alike:

* Cosmos Predict2 (2B / 14B, text-to-image and image-to-video): the T5 output (1024 wide, padded by its tokenizer)
  is the cross-attention context as is; so is the negative.
* Anima: the Qwen3 0.6B hidden states and the prompt's T5 token ids (``t5xxl_ids``, with ``t5xxl_weights``, in the
  conditioning's options, from Anima's text encoder) go through the model's ``llm_adapter``
  (``Anima.preprocess_text_embeds``: adapter, times the weights, zero-padded to 512 tokens). ComfyUI runs it for the
  positive in ``model_base.Anima.extra_conds`` (under inference mode; otherwise in ``Anima.forward``), so the
  diffusion model's forward already receives the adapted context. NASA runs the same ``preprocess_text_embeds`` on
  the negative with the negative conditioning's own ``t5xxl_ids``/``t5xxl_weights`` (once per sampling run where
  the run keeps projections). A negative without T5 ids is taken as is, as the model takes such a prompt.

Hook: the block loop of ``MiniTrainDIT`` has no ``"dit"`` block replaces, and its cross-attention calls ComfyUI's
attention function with head-major tensors (``skip_reshape``), so NASA object-patches each block's
``cross_attn.forward`` (ComfyUI sets the patch when it loads the model and restores the original on unpatch). A
``DIFFUSION_MODEL`` wrapper builds this forward's :class:`.cross_blocks.CrossForward` once (steered rows, the
negatives embedded as above) and hands it to the layers in a copy of ``transformer_options``, which the blocks pass
to ``cross_attn``. A layer with nothing to steer calls the original forward. Otherwise it runs the layer's own
``compute_qkv`` (its ``attn2_patch`` patches included) and ``attn_op`` (ComfyUI's attention function, an attention
override installed before NASA included), computes Z- with the same ``attn_op``, subtracts it on the positive rows,
and applies the layer's ``output_proj``/``output_dropout``: nothing but the subtraction is NASA's.

Image-to-video conditioning frames are not steered: the frames ComfyUI treats as clean conditioning (those whose
``denoise_mask`` averages 0: ``CosmosPredict2.process_timestep`` gives them timestep 0; the start/end images of
CosmosPredict2ImageToVideoLatent) keep Z+ in every steered layer. The mask's channel for I2V models
(``mask_inverted``, concatenated to the input) is untouched.
"""
from __future__ import annotations

from typing import Optional

import torch

from .binding import Call, patch_forwards, set_wrapper, signature_of, wrapped_call
from .cross_blocks import FORWARD_KEY, forward_options
from .family import Family, no_layers
from ..nasa_core import steer
from ..nasa_core.flops import patch_tokens

KEEP_KEY = "nasa_cosmos_keep"     # transformer_options key: (B, tokens, 1) bool, the tokens steered (None: all)
_PREDICT2_CLASSES = ("CosmosT2IPredict2", "CosmosI2VPredict2")


def _is_anima(model_patcher) -> bool:
    import comfy.model_base as mb
    return type(model_patcher.model) is getattr(mb, "Anima", None)


def _plain_blocks(dm) -> bool:
    """Every block is predict2's Block with its text cross-attention (the layer NASA re-runs)."""
    from comfy.ldm.cosmos.predict2 import Attention, Block
    return len(dm.blocks) > 0 and all(
        type(b) is Block and type(b.cross_attn) is Attention and not b.cross_attn.is_selfattn for b in dm.blocks)


def matches(model_patcher) -> bool:
    """Cosmos Predict2 T2I / I2V (ComfyUI's CosmosPredict2 around exactly MiniTrainDIT) and Anima (ComfyUI's Anima
    around exactly comfy.ldm.anima.model.Anima with its LLMAdapter), their blocks predict2's Block. Cosmos 1.0
    (CosmosVideo, GeneralDIT) and anything subclassing these classes with another forward are refused."""
    import comfy.model_base as mb
    import comfy.supported_models as sm
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT
    base = getattr(model_patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    config = getattr(base, "model_config", None)
    if type(base) is getattr(mb, "CosmosPredict2", None):
        return (type(dm) is MiniTrainDIT and type(config) in tuple(getattr(sm, n) for n in _PREDICT2_CLASSES
                                                                   if hasattr(sm, n)) and _plain_blocks(dm))
    if type(base) is getattr(mb, "Anima", None):
        from comfy.ldm.anima.model import Anima, LLMAdapter
        return (type(dm) is Anima and type(config) is sm.Anima and type(getattr(dm, "llm_adapter", None)) is LLMAdapter
                and _plain_blocks(dm))
    return False


def context_dim(model_patcher) -> Optional[int]:
    """The text width the model takes: T5's for Cosmos Predict2, the Qwen3 hidden states' (the LLM adapter's
    source width) for Anima. 1024 for the published models."""
    dm = model_patcher.model.diffusion_model
    if _is_anima(model_patcher):
        return dm.llm_adapter.blocks[0].cross_attn.k_proj.in_features
    return dm.blocks[0].cross_attn.k_proj.in_features


def model_name(model_patcher) -> str:
    name = type(model_patcher.model.model_config).__name__
    return f"Anima ({name})" if _is_anima(model_patcher) else f"Cosmos Predict2 ({name})"


def _tokens_per_frame(dm, x) -> tuple:
    """(frames, tokens per frame) of the patched latent, as the model pads it to its patch size."""
    frames = patch_tokens(x.shape[2:3], dm.patch_temporal)
    return frames, patch_tokens(x.shape[3:5], dm.patch_spatial)


def _keep(dm, x, denoise_mask, where: str) -> Optional[torch.Tensor]:
    """(B, tokens, 1) bool: the tokens of frames being generated; None when every token is (no video mask).
    A frame whose denoise_mask averages 0 is conditioning (process_timestep gives it timestep 0)."""
    if denoise_mask is None or denoise_mask.ndim != 5:
        return None
    frames, per_frame = _tokens_per_frame(dm, x)
    if dm.patch_temporal != 1 or denoise_mask.shape[2] != frames or denoise_mask.shape[0] not in (1, x.shape[0]):
        raise RuntimeError(f"NASA: {where}: the denoise mask {tuple(denoise_mask.shape)} does not match the latent "
                           f"{tuple(x.shape)} frame by frame; NASA cannot tell conditioning frames. Please report it.")
    generated = denoise_mask.mean(dim=[1, 3, 4]) > 0                  # (B or 1, frames)
    keep = generated.repeat_interleave(per_frame, dim=1).unsqueeze(-1)
    return keep.expand(x.shape[0], -1, -1)


def _make_forward_wrapper(anima: bool):
    def nasa_cosmos_forward(executor, *args, **kwargs):
        """DIFFUSION_MODEL wrapper of MiniTrainDIT._forward (x, timesteps, context, fps, padding_mask, **kwargs), its
        arguments bound by name (transformer_options and denoise_mask come in **kwargs)."""
        call = wrapped_call(executor, args, kwargs, "MiniTrainDIT._forward", needs=("x", "context"))
        x, context = call["x"], call["context"]
        dm = executor.class_obj

        def embed(entry, run):
            text = entry.on(context.device, context.dtype)
            if not anima:
                return text, None                         # the T5 output is the context as is
            ids = entry.options.get("t5xxl_ids")
            if ids is None:
                return text, None                         # as Anima takes a prompt without T5 ids
            ids = entry.option_on("t5xxl_ids", context.device, ids.dtype)
            weights = entry.option_on("t5xxl_weights", context.device, context.dtype)
            weights = None if weights is None else weights.unsqueeze(0).unsqueeze(-1)
            # as model_base.Anima.extra_conds prepares the positive: ids (1, L), weights (1, L, 1)
            return run.reuse("embed", (dm.llm_adapter,), text, lambda t: dm.preprocess_text_embeds(
                t, ids.unsqueeze(0), t5xxl_weights=weights)), None

        frames, per_frame = _tokens_per_frame(dm, x)
        new = forward_options(call.get("transformer_options"), x.shape[0], dm, slice(0, frames * per_frame), embed)
        if new is None:
            return executor(*args, **kwargs)
        new[KEEP_KEY] = _keep(dm, x, call.get("denoise_mask"), "Cosmos Predict2")
        call["transformer_options"] = new
        return call.invoke(executor)
    return nasa_cosmos_forward


def _layer_key(index: int) -> str:
    return f"diffusion_model.blocks.{index}.cross_attn.forward"


def _steered(index: int, layer, x, context, rope_emb, options: dict, qkv_options: bool, scale: float):
    """The layer's forward with NASA: compute_qkv, attn_op, the subtraction, output_proj. ``qkv_options``: whether
    compute_qkv takes transformer_options (ComfyUI 0.3.65+: its attn2 patches)."""
    fwd = options[FORWARD_KEY]
    qkv = {"rope_emb": rope_emb, "transformer_options": options} if qkv_options else {"rope_emb": rope_emb}
    q, k, v = layer.compute_qkv(x, context, **qkv)                 # (B, S, H, D)
    z_pos = layer.attn_op(q, k, v, transformer_options=options)    # (B, S, H*D)
    if q.ndim != 4 or z_pos.shape != (q.shape[0], q.shape[1], q.shape[2] * q.shape[3]):
        raise RuntimeError(f"NASA: Cosmos Predict2 block {index}: its cross-attention gave q {tuple(q.shape)} and "
                           f"output {tuple(z_pos.shape)}, not (batch, tokens, heads, head_dim) and (batch, tokens, "
                           f"width). This ComfyUI version changed the layer: please report it.")
    b, s, heads, d = q.shape
    q_rows = q.reshape(b, s, heads * d)

    def project(text):      # (1, L, width) -> this layer's K-, V- (1, L, H*D); kept across steps where it can be
        def compute(t):
            n = t.shape[1]
            kn = layer.k_norm(layer.k_proj(t).view(1, n, heads, d)).reshape(1, n, heads * d)
            return kn, layer.v_norm(layer.v_proj(t))
        return fwd.run.reuse(("kv", index), (layer,), text, compute)

    def attention_fn(q_, k_neg, v_neg, heads_, mask=None):          # the layer's own attention call, head-split
        r = q_.shape[0]
        q4, k4, v4 = (t.expand(r, -1, -1).reshape(r, -1, heads_, d) for t in (q_, k_neg, v_neg))
        if mask is None:
            return layer.attn_op(q4, k4, v4, transformer_options=options)
        # a key mask (VSF's bias): attn_op takes none, so ComfyUI's attention function it calls, as it calls it
        from comfy.ldm.modules.attention import optimized_attention
        return optimized_attention(q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2), heads_,
                                   skip_reshape=True, mask=mask, transformer_options=options)

    projected = {}

    def projected_kv(term):
        if term.slot not in projected:
            projected[term.slot] = project(fwd.negatives[term.slot][0])
        return projected[term.slot]

    keep = options.get(KEEP_KEY)
    z = z_pos
    for terms, rows in fwd.groups:
        terms = [t._replace(coef=t.coef * scale) for t in terms]
        negs = fwd.run.negative_terms(terms, s, q.device, q_rows.dtype, projected_kv)
        z = steer(z, q_rows, negs, heads, rows, attention_fn, inplace=keep is None or z is not z_pos,
                  guard=fwd.run.guard, method=fwd.run.method,
                  positive=(k.reshape(b, k.shape[1], heads * d), v.reshape(b, v.shape[1], heads * d), None))
        fwd.run.mark_steered(("blocks", index))
    if keep is not None:
        z = torch.where(keep, z, z_pos)             # conditioning frames keep Z+
    return layer.output_dropout(layer.output_proj(z))


def _make_forward(index: int, layer, original):
    qkv_options = "transformer_options" in signature_of(layer.compute_qkv).parameters

    def nasa_cosmos_cross_attention(*args, **kwargs):
        call = Call(original, args, kwargs, f"Cosmos Predict2 block {index} cross_attn.forward",
                    needs=("x", "context", "rope_emb", "transformer_options"))
        options = call["transformer_options"]
        fwd = options.get(FORWARD_KEY) if isinstance(options, dict) else None
        scale = 0.0 if fwd is None or call["context"] is None else fwd.run.layer_scale(("blocks", index))
        if scale == 0.0:        # nothing to steer here (no NASA run, alpha 0, a block left out): ComfyUI's forward
            return original(*args, **kwargs)
        return _steered(index, layer, call["x"], call["context"], call["rope_emb"], options, qkv_options, scale)

    return nasa_cosmos_cross_attention


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.blocks)))}


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: each block's k_proj/v_proj and text attention over every video
    token; the negative is the context as is (nothing embedded per forward).

    Not counted: Anima's LLM adapter pass on a negative that carries T5 ids (once per sampling run, reused at steps
    2+; 6 adapter blocks of 1024-wide linears, ~0.2 GFLOP per token, ~0.7% of one 2B forward at 1024² with 512
    tokens). ComfyUI's adapter cannot run on the meta device bench/costs.py counts on (its rotary embedding opens
    ``torch.autocast``, which has no meta backend), so its share could not be checked against a real count; and its
    token counts (Qwen3 states, T5 ids, 512 after padding) are not the one token count nasa_core.flops takes."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    dm = model_patcher.model.diffusion_model
    n = patch_tokens(latent[-3:-2], dm.patch_temporal) * patch_tokens(latent[-2:], dm.patch_spatial)
    return Embedding(reusable=True), [
        NasaLayer(width=b.cross_attn.q_proj.weight.shape[0], query_tokens=n,
                  shared_weights=module_linear_weights(b.cross_attn.k_proj, b.cross_attn.v_proj)) for b in dm.blocks]


def install(model_patcher) -> int:
    """Object-patch every block's cross-attention forward of a (cloned) model patcher and add the forward wrapper."""
    name = model_name(model_patcher)
    count = patch_forwards(model_patcher, [block.cross_attn for block in model_patcher.model.diffusion_model.blocks],
                           _layer_key, _make_forward, lambda i: f"the cross-attention of {name} block {i}")
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _make_forward_wrapper(_is_anima(model_patcher)))
    return count


FAMILY = Family(
    name="Cosmos Predict2 / Anima",
    supported=("Cosmos Predict2 2B/14B text-to-image and video2world (image-to-video)",
               "Anima (Qwen3 text through its LLM adapter)"),
    model_classes=_PREDICT2_CLASSES + ("Anima",),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=no_layers, flop_layers=flop_layers, video=True)
