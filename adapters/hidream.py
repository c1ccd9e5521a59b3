"""HiDream-I1 family adapter: Full, Dev and Fast (``comfy.ldm.hidream``, ComfyUI's ``HiDream`` config).

HiDream-I1 has no cross-attention. Its text is T5 tokens plus the hidden states of several Llama 3.1 layers
(``conditioning_llama3`` in the conditioning's options, (1, layers, tokens, 4096)), each through its own
``caption_projection``. The model keeps a text sequence ``[T5; Llama layer llama_layers[-1]]`` and hands every
block its own Llama layer's states appended to it (``llama_layers[b]`` for block ``b``, the double blocks first),
cutting them off again after the block:

* double blocks attend jointly over [image; text; block's Llama] with separate text weights (``norm1_t``,
  ``to_q_t``/``to_k_t``/``to_v_t``, ``q_rms_norm_t``/``k_rms_norm_t``, ``to_out_t``, ``norm3_t``, ``ff_t``);
* single blocks run [image; text; block's Llama] through shared weights, with a mixture-of-experts feed-forward
  (``ff_i``: shared expert plus the top 2 of 4 routed experts per token).

NASA's negative flows through those weights as a stream of its own (see :mod:`.joint`), exactly as the
positive's text does:

* embedded once per forward as the model embeds its text: the negative's T5 tokens through
  ``caption_projection[-1]`` and its Llama states of ``llama_layers[-1]`` through their projection; the
  Llama states come from the negative conditioning's own options, as the positive's do, and a negative
  without them (another text encoder) is refused;
* each block appends the negative's own Llama states of that block's layer (through that block's caption
  projection), projects the stream with its text-stream weights (double) or its shared weights (single) and the
  positive row's modulation, and after the stream's attention (its queries over [its keys; the image keys], as a
  forward on the negative prompt would) runs its output, gates and feed-forward and cuts the Llama tokens off;
* every block subtracts alpha * softmax(Q_img K-^T) V- on the image-query rows of the steered rows; text query
  rows (T5, Llama) are untouched.

Text RoPE ids are zeros in HiDream (the identity rotation): nothing to apply to the negative. Its modulation is
the positive row's (timestep plus the positive's pooled CLIP), as FLUX's stream's is.

Hooks. HiDream exposes no ``"dit"`` block replace; its blocks pass ``transformer_options`` to ComfyUI's attention
function, so:

* an object patch (``ModelPatcher.add_object_patch``, restored by ComfyUI on unpatch) on each
  ``double_stream_blocks[i]`` / ``single_stream_blocks[j]`` ``forward`` runs the block through
  :func:`.joint.run_block` (chaining an object patch installed on the same key before NASA), its arguments bound
  by name;
* a ``DIFFUSION_MODEL`` wrapper embeds the negative once per forward and records the image's token count, in a
  copy of ``transformer_options`` that ends with the forward.

HiDream-E1 editing (``image_cond``: the reference image's tokens interleaved with the generated image's, row by
row) is refused at sampling time; HiDream-O1 (``HiDreamO1``, a pixel-space Qwen3-VL model) is another model.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import joint
from .binding import Call, set_wrapper, wrapped_call
from .family import Family, no_layers
from .run import RUN_KEY

LLAMA_KEY = "conditioning_llama3"       # the conditioning option holding the Llama 3.1 layers' states
LLAMA_TOKENS = 127
"""Llama tokens of a prompt of up to 128 tokens in ComfyUI's HiDream encoder (padded to 128, start token dropped):
what :func:`flop_layers` counts with (its negative token count is the T5 prompt's)."""


def _module():
    from comfy.ldm.hidream import model
    return model


def matches(model_patcher) -> bool:
    """ComfyUI's HiDream config on its HiDream model classes themselves, with the structure NASA projects the
    negative through: one caption projection per block plus T5's, one Llama layer per block, double blocks with
    text weights and single blocks with shared ones, attention through ComfyUI's processor."""
    import comfy.model_base
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    hidream = _module()
    if type(dm) is not hidream.HiDreamImageTransformer2DModel or type(base) is not comfy.model_base.HiDream \
            or type(getattr(base, "model_config", None)) is not sm.HiDream:
        return False
    blocks = list(dm.double_stream_blocks) + list(dm.single_stream_blocks)
    return (dm.caption_projection is not None and len(dm.caption_projection) == len(blocks) + 1
            and dm.llama_layers is not None and len(dm.llama_layers) == len(blocks)
            and all(type(b) is hidream.HiDreamImageBlock for b in blocks)
            and all(type(b.block) is hidream.HiDreamImageTransformerBlock and not b.block.attn1.single
                    for b in dm.double_stream_blocks)
            and all(type(b.block) is hidream.HiDreamImageSingleTransformerBlock and b.block.attn1.single
                    for b in dm.single_stream_blocks)
            and all(type(b.block.attn1.processor) is hidream.HiDreamAttnProcessor_flashattn for b in blocks))


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.caption_projection[-1].linear.in_features


def model_name(model_patcher) -> str:
    return f"HiDream-I1 ({type(model_patcher.model.model_config).__name__})"


def _llama_states(dm, entry, device, dtype, node: str) -> torch.Tensor:
    """The negative entry's Llama 3.1 states, (1, layers, tokens, width), checked against the model."""
    states = entry.option_on(LLAMA_KEY, device, dtype)
    width = dm.caption_projection[0].linear.in_features
    if states is None:
        raise ValueError(f"{node}: the negative prompt has no Llama 3.1 states ('{LLAMA_KEY}' in its conditioning); "
                         f"this HiDream-I1 model reads its text from T5 and Llama 3.1, and NASA runs the negative "
                         f"through both as the model runs the positive. Encode the negative with the same HiDream text "
                         f"encoder (QuadrupleCLIPLoader: CLIP-L, CLIP-G, T5-XXL, Llama 3.1) as the positive prompt.")
    needed = max(dm.llama_layers) + 1
    if states.ndim != 4 or states.shape[0] != 1 or states.shape[1] < needed or states.shape[-1] != width \
            or states.shape[2] == 0:
        raise ValueError(f"{node}: the negative prompt's Llama 3.1 states ('{LLAMA_KEY}') have shape "
                         f"{tuple(states.shape)}; this HiDream-I1 model takes (1, at least {needed} layers, tokens, "
                         f"{width}) for a single prompt. Encode the negative with the same HiDream text encoder as the "
                         f"positive prompt, one prompt per negative.")
    return states


def _projected_llama(dm, state, s, block: int) -> torch.Tensor:
    """Block ``block``'s Llama tokens of stream ``s``'s negative, projected as the model projects the positive's,
    for the stream's rows."""
    states = state.info["llama"][s.term.slot]
    projected = dm.caption_projection[block](states[:, dm.llama_layers[block]])
    return projected.expand(s.x.shape[0], -1, -1)


def _modulated(norm, x, wtype, shift, scale):
    return norm(x).to(dtype=wtype) * (1 + scale) + shift


def _double_streams(dm, state, index: int, adaln_input, wtype):
    """``prepare``/``finish`` of the negative stream through double block ``index``'s text half."""
    blk = dm.double_stream_blocks[index].block
    attn = blk.attn1

    def prepare(s):
        mod = blk.adaLN_modulation(joint.rows_of(adaln_input, s.rows))[:, None].chunk(12, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[6:]
        t = torch.cat((s.x, _projected_llama(dm, state, s, index)), dim=1)
        n = _modulated(blk.norm1_t, t, wtype, shift_msa, scale_msa)
        s.q = attn.q_rms_norm_t(attn.to_q_t(n)).to(dtype=wtype)
        s.k = attn.k_rms_norm_t(attn.to_k_t(n)).to(dtype=wtype)
        s.v = attn.to_v_t(n)
        s.scratch["mod"] = (t, gate_msa, shift_mlp, scale_mlp, gate_mlp)

    def finish(s):
        t, gate_msa, shift_mlp, scale_mlp, gate_mlp = s.scratch["mod"]
        t = gate_msa * attn.to_out_t(s.out) + t
        t = gate_mlp * blk.ff_t(_modulated(blk.norm3_t, t, wtype, shift_mlp, scale_mlp)) + t
        s.x = t[:, :s.x.shape[1]]       # the block's Llama tokens are cut off, as the model cuts the positive's
    return prepare, finish


def _single_streams(dm, state, index: int, adaln_input, wtype):
    """``prepare``/``finish`` of the negative stream through single block ``index`` (shared weights, MoE)."""
    blk = dm.single_stream_blocks[index].block
    attn = blk.attn1
    llama_block = len(dm.double_stream_blocks) + index

    def prepare(s):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            blk.adaLN_modulation(joint.rows_of(adaln_input, s.rows))[:, None].chunk(6, dim=-1)
        t = torch.cat((s.x, _projected_llama(dm, state, s, llama_block)), dim=1)
        n = _modulated(blk.norm1_i, t, wtype, shift_msa, scale_msa)
        s.q = attn.q_rms_norm(attn.to_q(n)).to(dtype=wtype)
        s.k = attn.k_rms_norm(attn.to_k(n)).to(dtype=wtype)
        s.v = attn.to_v(n)
        s.scratch["mod"] = (t, gate_msa, shift_mlp, scale_mlp, gate_mlp)

    def finish(s):
        t, gate_msa, shift_mlp, scale_mlp, gate_mlp = s.scratch["mod"]
        t = gate_msa * attn.to_out(s.out) + t
        t = gate_mlp * blk.ff_i(_modulated(blk.norm3_i, t, wtype, shift_mlp, scale_mlp).to(dtype=wtype)) + t
        s.x = t[:, :s.x.shape[1]]
    return prepare, finish


def _make_block_forward(dm, group: str, index: int, block, last: bool, prior):
    own = type(block).forward.__get__(block, type(block))      # the signature the model calls the block with
    original = prior if prior is not None else own
    where = f"HiDream {group} block {index} ({type(block).__name__}.forward)"
    streams = _double_streams if group == "double" else _single_streams

    def nasa_block_forward(*args, **kwargs):
        call = Call(own, args, kwargs, where, needs=("image_tokens", "image_tokens_masks", "adaln_input",
                                                     "transformer_options"))
        state = joint.forward_state(call["transformer_options"])
        if state is None or not state.streams:
            return call.invoke(original)
        image_tokens = call["image_tokens"]
        n_img = state.info["image_tokens"]
        if call["image_tokens_masks"] is not None or image_tokens.shape[1] < n_img or \
                (group == "double" and image_tokens.shape[1] != n_img):
            raise RuntimeError(f"NASA: {where} got {image_tokens.shape[1]} image-side tokens"
                               f"{' and an image token mask' if call['image_tokens_masks'] is not None else ''}; "
                               f"expected the {n_img} image tokens first and no mask. This ComfyUI version changed "
                               f"the model: please report it.")

        def call_block(a):
            call["transformer_options"] = a["transformer_options"]
            return call.invoke(original)

        prepare, finish = streams(dm, state, index, call["adaln_input"], image_tokens.dtype)
        image = slice(0, n_img)
        return joint.run_block(state, {"transformer_options": call["transformer_options"]}, call_block, image, image,
                               prepare, None if last else finish, f"HiDream {group} block {index}",
                               layer=(group, index))
    return nasa_block_forward


def _forward_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around HiDreamImageTransformer2DModel._forward (arguments bound by name): embed the
    negative(s) as the model embeds its text (T5 and the last Llama layer through their caption projections), keep
    their Llama states for the blocks, and record the image's token count."""
    dm = executor.class_obj
    call = wrapped_call(executor, args, kwargs, "HiDreamImageTransformer2DModel._forward",
                        needs=("x", "context", "image_cond", "transformer_options"))
    options = call["transformer_options"]
    if not isinstance(options, dict) or options.get(RUN_KEY) is None:
        return executor(*args, **kwargs)
    run = options[RUN_KEY]
    x, context = call["x"], call["context"]
    options = dict(options)     # this forward's own: the streams are not written into the caller's options
    call["transformer_options"] = options
    state = joint.start_forward(options, x.shape[0], x.device, context.dtype, dm.caption_projection[-1])
    if state is not None and state.streams:
        if call["image_cond"] is not None:
            raise ValueError(f"{run.node}: this HiDream run edits an image (HiDream-E1: the reference image's tokens "
                             f"sit beside the generated image's in every row of the sequence); NASA steers HiDream-I1 "
                             f"text-to-image only. Bypass the NASA node for this run, or sample without the "
                             f"reference image.")
        p = dm.patch_size
        state.info["image_tokens"] = ((x.shape[-2] + p - 1) // p) * ((x.shape[-1] + p - 1) // p)
        llama = state.info["llama"] = {}      # keyed by the entry's slot in this call's plan (not id(): compiled
        last = len(dm.llama_layers) - 1       # graphs would bake it in)
        for s in state.streams:
            if s.term.slot not in llama:
                llama[s.term.slot] = _llama_states(dm, s.term.entry, x.device, context.dtype, run.node)
            s.x = torch.cat((s.x, _projected_llama(dm, state, s, last)), dim=1)   # [T5; Llama llama_layers[-1]]
    return call.invoke(executor)


def _moe_weights(ff) -> int:
    """in*out of the linears a token runs through in a feed-forward: all of a plain SwiGLU; the gate, the shared
    expert and ``num_activated_experts`` routed experts of a mixture of experts."""
    from ..nasa_core.flops import module_linear_weights
    if not hasattr(ff, "experts"):
        return module_linear_weights(ff)
    gate = int(ff.gate.weight.shape[0]) * int(ff.gate.weight.shape[1])
    return gate + module_linear_weights(ff.shared_experts) + ff.num_activated_experts * module_linear_weights(ff.experts[0])


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops, the negative's T5 prompt of ``n`` tokens (the count
    nasa_core.flops is given) and its Llama states of :data:`LLAMA_TOKENS` (``m``) tokens: the stream has
    ``n + m`` tokens between blocks and ``n + 2m`` inside one. nasa_core.flops counts per-token work on ``n``
    tokens; the fixed ``m``-token part is counted as per-row (``row_vector_weights``) or per-forward
    (``Embedding.vector_weights``) work of the same FLOPs: the stream's weights and the stream's own attention
    over ``n + 2m`` queries and ``n + 2m + image`` keys, the image queries over ``n + 2m`` keys, and each block's
    caption projection of its Llama layer (once per forward, shared by the rows)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    m = LLAMA_TOKENS
    n_img = patch_tokens(latent[-2:], dm.patch_size)
    blocks = [("double", b.block) for b in dm.double_stream_blocks] + [("single", b.block) for b in dm.single_stream_blocks]
    layers = []
    for i, (kind, b) in enumerate(blocks):
        last = i == len(blocks) - 1
        a = b.attn1
        if kind == "double":
            rows = module_linear_weights(a.to_q_t, a.to_k_t, a.to_v_t)
            rows += 0 if last else module_linear_weights(a.to_out_t) + _moe_weights(b.ff_t)
        else:
            rows = module_linear_weights(a.to_q, a.to_k, a.to_v)
            rows += 0 if last else module_linear_weights(a.to_out) + _moe_weights(b.ff_i)
        width = a.to_q.weight.shape[0]
        # Half the FLOPs per row that do not scale with n (NasaLayer counts 2 * row_vector_weights): the weights on
        # the 2m Llama tokens, the image queries over 2m keys, and the stream's attention 4 (n+2m)(n+2m+image) w
        # = 4 n (n + 4m + image) w + 8 m (2m + image) w
        fixed = 2 * m * rows + 4 * n_img * m * width
        if not last:
            fixed += 4 * m * (2 * m + n_img) * width
        layers.append(NasaLayer(width=width, query_tokens=n_img, row_weights=rows,
                                row_vector_weights=fixed + module_linear_weights(b.adaLN_modulation),
                                stream_keys=-1 if last else n_img + 4 * m))
    projection = module_linear_weights(dm.caption_projection[0])
    embedding = Embedding(weights=module_linear_weights(dm.caption_projection[-1]),
                          vector_weights=m * projection * (len(blocks) + 1))
    return embedding, layers


def block_groups(model_patcher) -> dict:
    dm = model_patcher.model.diffusion_model
    return {"double": list(range(len(dm.double_stream_blocks))), "single": list(range(len(dm.single_stream_blocks)))}


def install(model_patcher) -> int:
    dm = model_patcher.model.diffusion_model
    blocks = [("double", "double_stream_blocks", b) for b in dm.double_stream_blocks]
    blocks += [("single", "single_stream_blocks", b) for b in dm.single_stream_blocks]
    counts: dict = {}
    for n, (group, attr, block) in enumerate(blocks):
        index = counts[group] = counts.get(group, -1) + 1
        key = f"diffusion_model.{attr}.{index}.forward"
        prior = joint.unwrap_prior(model_patcher.object_patches.get(key))
        patch = _make_block_forward(dm, group, index, block, n == len(blocks) - 1, prior)
        patch.nasa_prior = prior
        model_patcher.add_object_patch(key, patch)
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _forward_wrapper)
    return len(blocks)


FAMILY = Family(
    name="HiDream-I1",
    supported=("HiDream-I1 Full/Dev/Fast (T5 + Llama 3.1 text; HiDream-E1 editing is not supported)",),
    model_classes=("HiDream",),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=no_layers, flop_layers=flop_layers, joint_stream=True)
