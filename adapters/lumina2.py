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

RoPE: rotary scores depend only on position differences. The model gives the caption consecutive
positions on the first axis and puts the image right after it (0.3.64: caption ``0..P-1``, image ``P``;
0.33: caption ``1..P``, image ``P+1``). The negative's tokens get ``image - neg_len + j`` in the main
layers: each negative token sits at the distance from the image it has in a forward on the negative
prompt, and the stream's own attention matches that forward's. The image's position is read from the RoPE
table the model hands its layers (the first image token's first-axis rotation), not assumed; the
caption refiner, which sees no image, gives the negative ``0..neg_len-1``.

Where the image sits: the last ``h * w`` tokens of the main layers' sequence. A model that masks caption
padding (0.3.64) places each row's image right after that row's unpadded caption; rows whose captions
differ in length (the layers' mask rows differ) are refused. 0.33 ignores the caption mask.

Hooks. NextDiT exposes no ``"dit"`` block replace, and ``transformer_options`` reaches its
attention calls but an ``optimized_attention_override`` alone sees only one call's q/k/v: it cannot
tell which layer (the refiners call the same function) nor run a layer's modulation, output and
feed-forward on the stream. So:

* an object patch (``ModelPatcher.add_object_patch``, restored by ComfyUI on unpatch) on each
  main layer's ``forward`` runs that layer through :func:`.joint.run_block` (chaining an object
  patch installed on the same key before NASA); it binds the layer's arguments by name and passes
  those it does not know (``timestep_zero_index``, 0.33) through;
* a ``DIFFUSION_MODEL`` wrapper embeds and refines the negative once per forward and records the
  image's token count, in a copy of ``transformer_options`` that ends with the forward.

Z-Image (ComfyUI's ``ZImage`` / ``ZImagePixelSpace`` configs) runs on the same class with padded captions and
image and is its own family (:mod:`.z_image`, which reuses :func:`caption_rope`, :func:`negative_rope` and
:func:`layer_streams`); NewBie (pooled CLIP in the modulation) and the Omni reference path run on it with another
modulation and sequence layout. ``matches`` leaves Z-Image and NewBie out and a layer refuses the Omni path, rather
than steer them wrongly.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .binding import Call, SignatureChanged, set_wrapper, wrapped_call
from .family import Family, no_layers


def _model_class():
    from comfy.ldm.lumina.model import NextDiT
    return NextDiT


def matches(model_patcher) -> bool:
    """ComfyUI's Lumina 2 config on its NextDiT class itself, with Lumina 2's structure. ComfyUI builds Z-Image
    (the ZImage config: caption and image padding tokens, SigLIP features for Omni, time_scale 1000) and NewBie
    (the Lumina2 config with a pooled CLIP projection in the modulation) on the same class; their sequences and
    modulation differ from what this family binds to (Z-Image is :mod:`.z_image`'s)."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if type(dm) is not _model_class() or type(base) is not comfy.model_base.Lumina2 \
            or type(getattr(base, "model_config", None)) is not sm.Lumina2:
        return False
    return (getattr(dm, "pad_tokens_multiple", None) is None and getattr(dm, "siglip_embedder", None) is None
            and getattr(dm, "clip_text_pooled_proj", None) is None and getattr(dm, "time_scale", 1.0) == 1.0
            and all(getattr(layer, "modulation", False) for layer in dm.layers))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.cap_embedder[1].in_features


def model_name(model_patcher) -> str:
    return f"Lumina 2 ({type(model_patcher.model.model_config).__name__})"


def caption_rope(dm, positions, dtype):
    """The model's RoPE table for caption tokens at ``positions`` on the first axis (0 on the others), laid out
    as the model lays out its own: (1, tokens, 1, dim / 2, 2, 2)."""
    ids = torch.zeros(1, positions.shape[0], 3, dtype=torch.int32, device=positions.device)
    ids[0, :, 0] = positions
    return dm.rope_embedder(ids).movedim(1, 2).to(dtype)


def negative_rope(state, freqs_cis, image_start: int, node: str) -> dict:
    """The negative's main-layer RoPE tables (one per negative length n, cached for the forward): positions
    ``image - n + j`` on the first axis, 0 on the others. ``image`` is the first axis of the image tokens in
    ``freqs_cis``, the model's own table: its rotation there composed with that of ``j - n`` (rotations by
    angles add) - whichever origin this ComfyUI version counts positions from. Reads ``state.info["axis0"]`` (the
    first axis's rotation pairs) and ``state.info["relative"]`` (n -> the table of positions ``-n..-1``), which the
    forward wrapper records."""
    pe = state.info.get("pe")
    if pe is None:
        if freqs_cis.ndim != 6 or freqs_cis.shape[-2:] != (2, 2) or freqs_cis.shape[2] != 1:
            raise SignatureChanged(f"NASA: {node} got a RoPE table of shape {tuple(freqs_cis.shape)}, not (batch, "
                                   f"tokens, 1, dim / 2, 2, 2): this ComfyUI version changed NextDiT's RoPE. Please "
                                   f"report it to the NASA pack.")
        first = state.info["axis0"]
        anchor = freqs_cis[:1, image_start, :, :first].float()              # (1, 1, first, 2, 2)
        pe = {}
        for n, relative in state.info["relative"].items():
            axis0 = anchor.unsqueeze(1) @ relative[..., :first, :, :]
            pe[n] = torch.cat((axis0, relative[..., first:, :, :]), dim=-3).to(freqs_cis.dtype)
        state.info["pe"] = pe
    return pe


def image_tokens(state, x, x_mask, node: str) -> slice:
    """The image tokens of a main layer's sequence: its last h * w. Under a caption mask the model honours (the
    mask reaches the layers), rows whose captions differ in length have their image elsewhere: refused."""
    start = x.shape[1] - state.info["image_tokens"]
    if x_mask is not None:
        mask = x_mask.reshape(x_mask.shape[0], -1)[:, :start]
        masked = (mask != 0) if mask.is_floating_point() else ~mask.bool()     # additive float or boolean mask
        lengths = sorted(set((start - masked.sum(dim=1)).tolist()))
        if len(lengths) > 1:
            raise ValueError(f"{node}: this Lumina 2 batch holds captions of different lengths {lengths} under an "
                             f"attention mask, so its image tokens start at different places per row; NASA needs "
                             f"one caption length per batch. Sample these prompts separately.")
    return slice(start, x.shape[1])


def layer_streams(layer, adaln_input, pe):
    """``(prepare, finish)`` of :func:`.joint.run_block` for one NextDiT main layer (``JointTransformerBlock`` with
    modulation): the stream is projected and updated with the layer's own adaLN modulation, norms, qkv, q/k norms,
    GQA repeat, output projection, tanh gates and feed-forward, as the caption is; ``pe``: length -> RoPE table."""
    from comfy.ldm.flux.math import apply_rope1
    from comfy.ldm.lumina import model as lumina
    clamp = getattr(lumina, "clamp_fp16", None) or (lambda t: t)   # 0.33's layers clamp fp16 overflow, 0.3.64's not
    att = layer.attention
    kv = att.n_local_kv_heads * att.head_dim
    sizes = [att.n_local_heads * att.head_dim, kv, kv]

    def prepare(s):
        mod = layer.adaLN_modulation(joint.rows_of(adaln_input, s.rows))
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4, dim=1)
        r, n = s.x.shape[:2]
        q, k, v = torch.split(att.qkv(lumina.modulate(layer.attention_norm1(s.x), scale_msa)), sizes, dim=-1)
        q = apply_rope1(att.q_norm(q.view(r, n, att.n_local_heads, att.head_dim)), pe[n])
        k = apply_rope1(att.k_norm(k.view(r, n, att.n_local_kv_heads, att.head_dim)), pe[n])
        v = v.view(r, n, att.n_local_kv_heads, att.head_dim)
        rep = att.n_local_heads // att.n_local_kv_heads
        s.q = q.movedim(1, 2)
        s.k = k.repeat_interleave(rep, dim=2).movedim(1, 2)
        s.v = v.repeat_interleave(rep, dim=2).movedim(1, 2)
        s.scratch["mod"] = (gate_msa, scale_mlp, gate_mlp)

    def finish(s):
        gate_msa, scale_mlp, gate_mlp = s.scratch["mod"]
        x = s.x + gate_msa.unsqueeze(1).tanh() * layer.attention_norm2(clamp(att.out(s.out)))
        mlp = layer.feed_forward(lumina.modulate(layer.ffn_norm1(x), scale_mlp))
        s.x = x + gate_mlp.unsqueeze(1).tanh() * layer.ffn_norm2(clamp(mlp))
    return prepare, finish


def nextdit_layer_forward(family: str, sides, omni_refusal):
    """``make_layer_forward`` for :func:`install_nextdit`: a NextDiT main layer's forward that runs the negative
    stream(s) beside the positive (joint.run_block). ``sides(state, call, where)`` gives the image's token slice, the
    slice (or function) the negative's keys and values are read from, and the negative's RoPE; a run with reference
    latents (the Omni edit path) raises ``omni_refusal(node)``."""
    def make_layer_forward(index, layer, last, prior):
        own = type(layer).forward.__get__(layer, type(layer))      # the signature the model calls the layer with
        original = prior if prior is not None else own
        where = f"{family} layer {index} ({type(layer).__name__}.forward)"

        def nasa_layer_forward(*args, **kwargs):
            call = Call(own, args, kwargs, where,
                        needs=("x", "x_mask", "freqs_cis", "adaln_input", "transformer_options"))
            state = joint.forward_state(call["transformer_options"])
            if state is None or not state.streams:
                return call.invoke(original)
            if call.get("timestep_zero_index") is not None:
                raise ValueError(omni_refusal(state.run.node))

            def call_block(a):
                call["transformer_options"] = a["transformer_options"]
                return call.invoke(original)

            image, image_kv, pe = sides(state, call, where)
            prepare, finish = layer_streams(layer, call["adaln_input"], pe)
            return joint.run_block(state, {"x": call["x"], "transformer_options": call["transformer_options"]},
                                   call_block, image, image_kv, prepare, None if last else finish,
                                   f"{family} layer {index}", layer=("layers", index))
        return nasa_layer_forward
    return make_layer_forward


def _omni_refusal(node: str) -> str:
    return (f"{node}: this Lumina 2 run has reference latents (the Omni edit path: reference images and captions in "
            f"the sequence, modulated at timestep 0), which NASA does not support yet. Remove the reference latents, "
            f"or bypass the NASA node for this run.")


def _sides(state, call, where):
    image = image_tokens(state, call["x"], call["x_mask"], state.run.node)
    return image, image, negative_rope(state, call["freqs_cis"], image.start, where)


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around NextDiT._forward (arguments bound by name): embed and refine the negative(s)
    as the model does the caption, and record the image's token count and the relative RoPE tables the layers
    place each negative length with."""
    dm = executor.class_obj
    call = wrapped_call(executor, args, kwargs, "NextDiT._forward", needs=("x", "context"))
    x, context = call["x"], call["context"]
    options = dict(call.get("transformer_options") or {})    # a parameter in 0.33, in **kwargs in 0.3.64: this
    call["transformer_options"] = options                     # forward's own copy either way

    def embed(neg):
        h = dm.cap_embedder(neg)
        rope = caption_rope(dm, torch.arange(h.shape[1], device=h.device), x.dtype)
        for block in dm.context_refiner:
            h = block(h, None, rope, transformer_options=options)
        return h

    state = joint.start_forward(options, x.shape[0], x.device, context.dtype, embed)
    if state is not None and state.streams:
        p = dm.patch_size
        state.info["image_tokens"] = ((x.shape[-2] + p - 1) // p) * ((x.shape[-1] + p - 1) // p)
        state.info["axis0"] = dm.axes_dims[0] // 2
        state.info["relative"] = {n: caption_rope(dm, torch.arange(-n, 0, device=x.device), torch.float32)
                                  for n in {s.x.shape[1] for s in state.streams}}
    return call.invoke(executor)


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops (:func:`nextdit_flop_layers`; the stream's own attention sees the
    image tokens)."""
    from ..nasa_core.flops import patch_tokens
    dm = model_patcher.model.diffusion_model
    n_img = patch_tokens(latent[-2:], dm.patch_size)
    return nextdit_flop_layers(dm, n_img, n_img)


def nextdit_flop_layers(dm, image_tokens: int, stream_keys: int) -> tuple:
    """A NextDiT's (Embedding, [NasaLayer]): cap_embedder and the caption refiner on the negative, then each main
    layer's stream (adaLN, qkv; out and feed_forward except in the last layer), GQA keys repeated to all heads; the
    stream's own attention over ``stream_keys`` tokens of the sequence besides its own (Lumina 2: the image; Z-Image:
    the image and its padding)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights
    width = dm.layers[0].attention.n_local_heads * dm.layers[0].attention.head_dim
    layers = []
    for i, layer in enumerate(dm.layers):
        last = i == len(dm.layers) - 1
        att = layer.attention
        rows = module_linear_weights(att.qkv) + (0 if last else module_linear_weights(att.out, layer.feed_forward))
        layers.append(NasaLayer(width=width, query_tokens=image_tokens, row_weights=rows,
                                row_vector_weights=module_linear_weights(layer.adaLN_modulation),
                                stream_keys=-1 if last else stream_keys))
    embedding = Embedding(weights=module_linear_weights(dm.cap_embedder, *dm.context_refiner),
                          attention=[width] * len(dm.context_refiner))
    return embedding, layers


def block_groups(model_patcher) -> dict:
    """A NextDiT's block groups (Lumina 2, Z-Image): its main ``layers``."""
    return {"layers": list(range(len(model_patcher.model.diffusion_model.layers)))}


def install_nextdit(model_patcher, make_layer_forward, forward_wrapper) -> int:
    """Object-patch each main layer's ``forward`` with ``make_layer_forward(index, layer, last, prior)`` (chaining an
    object patch installed before NASA) and set ``forward_wrapper`` as the DIFFUSION_MODEL wrapper (Lumina 2,
    Z-Image)."""
    dm = model_patcher.model.diffusion_model
    for i, layer in enumerate(dm.layers):
        key = f"diffusion_model.layers.{i}.forward"
        prior = joint.unwrap_prior(model_patcher.object_patches.get(key))
        patch = make_layer_forward(i, layer, i == len(dm.layers) - 1, prior)
        patch.nasa_prior = prior
        model_patcher.add_object_patch(key, patch)
    set_wrapper(model_patcher, "DIFFUSION_MODEL", forward_wrapper)
    return len(dm.layers)


def install(model_patcher) -> int:
    return install_nextdit(model_patcher, nextdit_layer_forward("Lumina 2", _sides, _omni_refusal), _forward_wrapper)


FAMILY = Family(
    name="Lumina 2", supported=("Lumina Image 2.0 / Neta Lumina (NextDiT)",), model_classes=("Lumina2",),
    matches=matches, model_name=model_name,
    context_dim=context_dim, block_groups=block_groups, install=install, layers=no_layers, flop_layers=flop_layers,
    joint_stream=True)
