"""Lumina Image 2.0 family adapter (NextDiT, ``comfy.ldm.lumina``).

NextDiT embeds the caption (``cap_embedder``), refines it alone (``context_refiner``: text-only
blocks without modulation), refines the image alone (``noise_refiner``), then runs one sequence
[caption; image] through the main ``layers``, whose weights serve both. NASA's negative flows
through the model as a stream of its own (see :mod:`.joint`):

* once per forward it goes through ``cap_embedder`` and every ``context_refiner`` block exactly
  as the caption does (RoPE positions ``(j, 0, 0)``, no mask);
* in each main layer it is projected with that layer's weights (adaLN scale, ``attention_norm1``,
  ``qkv``, q/k norms, GQA repeat), and its attention output goes through ``out``,
  ``attention_norm2``, the tanh gates and the feed-forward, as the caption's does;
* every main layer subtracts alpha * softmax(Q_img K-^T) V- on the image-query tokens of the
  steered rows; caption query rows are untouched, and the positive's caption padding mask applies
  to the positive's own attention only.

RoPE: the model places the image at position ``cap_len`` on the first axis, right after its
caption. Rotary scores depend only on position differences, so the negative's tokens get
``cap_len - neg_len + j`` in the main layers: each negative token sits at the distance from the
image it has in a forward on the negative prompt, and the stream's own attention matches that
forward's (in the refiner, which sees no image, the negative keeps the model's ``0..neg_len-1``).

Hooks. NextDiT exposes no ``"dit"`` block replace, and ``transformer_options`` reaches its
attention calls but an ``optimized_attention_override`` alone sees only one call's q/k/v: it cannot
tell which layer (the refiners call the same function) nor run a layer's modulation, output and
feed-forward on the stream. So:

* an object patch (``ModelPatcher.add_object_patch``, restored by ComfyUI on unpatch) on each
  main layer's ``forward`` runs that layer through :func:`.joint.run_block` (chaining an object
  patch installed on the same key before NASA);
* a ``DIFFUSION_MODEL`` wrapper embeds and refines the negative once per forward and records
  where the image tokens sit, in a copy of ``transformer_options`` that ends with the forward.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import joint
from .negatives import RUN_KEY, set_wrapper

FAMILY = "Lumina 2"
JOINT_STREAM = True     # a negative stream through the text-stream weights (joint.STREAMS applies)
SUPPORTED = ("Lumina Image 2.0 / Neta Lumina (NextDiT)",)


def _model_class():
    from comfy.ldm.lumina.model import NextDiT
    return NextDiT


def matches(model_patcher) -> bool:
    return type(getattr(model_patcher.model, "diffusion_model", None)) is _model_class()


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.cap_embedder[1].in_features


def family_name(model_patcher) -> str:
    return f"Lumina 2 ({type(model_patcher.model.model_config).__name__})"


def _caption_rope(dm, positions, dtype):
    """The model's RoPE table for caption tokens at ``positions`` on the first axis (0 on the others)."""
    ids = torch.zeros(1, positions.shape[0], 3, dtype=torch.int32, device=positions.device)
    ids[0, :, 0] = positions
    return dm.rope_embedder(ids).movedim(1, 2).to(dtype)


def _layer_streams(layer, adaln_input, pe):
    from comfy.ldm.lumina.model import modulate
    att = layer.attention
    kv = att.n_local_kv_heads * att.head_dim
    sizes = [att.n_local_heads * att.head_dim, kv, kv]

    def prepare(s):
        mod = layer.adaLN_modulation(joint.rows_of(adaln_input, s.rows))
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4, dim=1)
        r, n = s.x.shape[:2]
        q, k, v = torch.split(att.qkv(modulate(layer.attention_norm1(s.x), scale_msa)), sizes, dim=-1)
        q = att.apply_rotary_emb(att.q_norm(q.view(r, n, att.n_local_heads, att.head_dim)), freqs_cis=pe[n])
        k = att.apply_rotary_emb(att.k_norm(k.view(r, n, att.n_local_kv_heads, att.head_dim)), freqs_cis=pe[n])
        v = v.view(r, n, att.n_local_kv_heads, att.head_dim)
        rep = att.n_local_heads // att.n_local_kv_heads
        s.q = q.movedim(1, 2)
        s.k = k.repeat_interleave(rep, dim=2).movedim(1, 2)
        s.v = v.repeat_interleave(rep, dim=2).movedim(1, 2)
        s.scratch["mod"] = (gate_msa, scale_mlp, gate_mlp)

    def finish(s):
        gate_msa, scale_mlp, gate_mlp = s.scratch["mod"]
        x = s.x + gate_msa.unsqueeze(1).tanh() * layer.attention_norm2(att.out(s.out))
        mlp = layer.feed_forward(modulate(layer.ffn_norm1(x), scale_mlp))
        s.x = x + gate_mlp.unsqueeze(1).tanh() * layer.ffn_norm2(mlp)
    return prepare, finish


def _make_layer_forward(index, layer, last, prior):
    original = prior if prior is not None else functools.partial(type(layer).forward, layer)

    def call(a):
        return original(a["x"], a["x_mask"], a["freqs_cis"], a["adaln_input"],
                        transformer_options=a["transformer_options"])

    def nasa_layer_forward(x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):
        args = dict(x=x, x_mask=x_mask, freqs_cis=freqs_cis, adaln_input=adaln_input,
                    transformer_options=transformer_options)
        state = joint.forward_state(transformer_options)
        if state is None or not state.streams:
            return call(args)
        image = state.info["image"]
        prepare, finish = _layer_streams(layer, adaln_input, state.info["pe"])
        return joint.run_block(state, args, call, image, image, prepare, None if last else finish,
                               f"Lumina 2 layer {index}", layer=("layers", index))
    return nasa_layer_forward


def _forward_wrapper(executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
    """DIFFUSION_MODEL wrapper around NextDiT._forward: embed and refine the negative(s) as the model does the
    caption, and record where the image tokens sit and the RoPE table each negative length gets there."""
    dm = executor.class_obj
    options = dict(kwargs.get("transformer_options") or {})
    kwargs["transformer_options"] = options

    def embed(neg):
        h = dm.cap_embedder(neg)
        rope = _caption_rope(dm, torch.arange(h.shape[1], device=h.device), x.dtype)
        for block in dm.context_refiner:
            h = block(h, None, rope, transformer_options=options)
        return h

    state = joint.start_forward(options, x.shape[0], x.device, context.dtype, embed)
    if state is not None and state.streams:
        cap_lens = attention_mask.sum(dim=1).tolist() if attention_mask is not None else [num_tokens]
        if len(set(cap_lens)) > 1:
            raise ValueError(f"{options[RUN_KEY].node}: this Lumina 2 batch holds captions of different lengths "
                             f"{sorted(set(cap_lens))} under an attention mask, so its image tokens start at "
                             f"different places per row; NASA needs one caption length per batch. Sample these "
                             f"prompts separately.")
        cap_len, p = int(cap_lens[0]), dm.patch_size
        n_img = ((x.shape[-2] + p - 1) // p) * ((x.shape[-1] + p - 1) // p)
        state.info["image"] = slice(cap_len, cap_len + n_img)
        state.info["pe"] = {n: _caption_rope(dm, torch.arange(cap_len - n, cap_len, device=x.device), x.dtype)
                            for n in {s.x.shape[1] for s in state.streams}}
    return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: cap_embedder and the caption refiner on the negative, then
    each layer's stream (adaLN, qkv; out and feed_forward except in the last layer), GQA keys repeated to all heads."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    p = dm.patch_size
    n_img = patch_tokens(latent[-2:], p)
    width = dm.layers[0].attention.n_local_heads * dm.layers[0].attention.head_dim
    layers = []
    for i, layer in enumerate(dm.layers):
        last = i == len(dm.layers) - 1
        att = layer.attention
        rows = module_linear_weights(att.qkv) + (0 if last else module_linear_weights(att.out, layer.feed_forward))
        layers.append(NasaLayer(width=width, query_tokens=n_img, row_weights=rows,
                                row_vector_weights=module_linear_weights(layer.adaLN_modulation),
                                stream_keys=-1 if last else n_img))
    embedding = Embedding(weights=module_linear_weights(dm.cap_embedder, *dm.context_refiner),
                          attention=[width] * len(dm.context_refiner))
    return embedding, layers


def block_groups(model_patcher) -> dict:
    return {"layers": list(range(len(model_patcher.model.diffusion_model.layers)))}


def install(model_patcher) -> int:
    dm = model_patcher.model.diffusion_model
    for i, layer in enumerate(dm.layers):
        key = f"diffusion_model.layers.{i}.forward"
        prior = joint.unwrap_prior(model_patcher.object_patches.get(key))
        patch = _make_layer_forward(i, layer, i == len(dm.layers) - 1, prior)
        patch.nasa_prior = prior
        model_patcher.add_object_patch(key, patch)
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _forward_wrapper)
    return len(dm.layers)


def attach_layers(run, base_model) -> None:
    """Nothing to resolve at sample time: each layer's object patch is bound to its layer."""
