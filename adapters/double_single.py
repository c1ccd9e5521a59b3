"""FLUX-style double and single blocks (FLUX.1, Chroma, HunyuanVideo, FLUX.2, LongCat-Image): NASA's ``"dit"`` block
replaces and the negative stream's text-stream steps.

Double blocks keep separate text and image weights and attend jointly over [text; image]; single blocks run
[text; image] through shared weights. The negative flows as a stream of its own (:mod:`.joint`):

* double blocks: the text modulation, ``txt_norm1``, ``txt_attn.qkv``/``norm``/``proj``, ``txt_norm2``, ``txt_mlp``;
* single blocks: the block's modulation, ``pre_norm``, ``linear1``, ``norm``, ``linear2`` (the text length, which
  single blocks are not told, is carried from the double blocks);
* every block's joint attention subtracts alpha * softmax(Q_img K-^T) V- on the generated image's query rows.

A family supplies where the modulation comes from (``prepare_for(block, vec)``, built on
:func:`text_stream_double` / :func:`text_stream_single`) and, where reference tokens follow the image, the
generated image's token count (:data:`IMAGE_TOKENS_KEY` in ``transformer_options``, e.g. with
:func:`image_tokens_wrapper`). Families whose text has RoPE positions (FLUX.2 / Klein, LongCat-Image: ComfyUI's
``Flux`` with ``txt_ids_dims``) also give how the negative is embedded (``embed_of``) and ``text_rope=True``: the
stream's queries and keys get the rotation the model gives text of the stream's length (:func:`text_rope_table`).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from . import joint
from .binding import set_wrapper

IMAGE_TOKENS_KEY = "nasa_image_tokens"     # transformer_options: the generated image's tokens (references follow)


def _apply_mod(x, scale, shift):
    return torch.addcmul(shift, x, 1 + scale)


def _split_heads(qkv, heads):
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def text_stream_double(block, modulation):
    """``prepare``/``finish`` of a negative stream through a double block's text half;
    ``modulation(stream)`` returns the text modulation (mod1, mod2) for the stream's rows."""
    def prepare(s):
        mod1, mod2 = modulation(s)
        q, k, v = _split_heads(block.txt_attn.qkv(_apply_mod(block.txt_norm1(s.x), mod1.scale, mod1.shift)),
                               block.num_heads)
        s.q, s.k = block.txt_attn.norm(q, k, v)
        s.v = v
        s.scratch["mod"] = (mod1, mod2)

    def finish(s):
        mod1, mod2 = s.scratch["mod"]
        x = s.x + mod1.gate * block.txt_attn.proj(s.out)
        s.x = x + mod2.gate * block.txt_mlp(_apply_mod(block.txt_norm2(x), mod2.scale, mod2.shift))
        if s.x.dtype == torch.float16:        # as the block does for its own text stream
            s.x = torch.nan_to_num(s.x, nan=0.0, posinf=65504, neginf=-65504)
    return prepare, finish


def text_stream_single(block, modulation):
    """``prepare``/``finish`` of a negative stream through a single block; ``modulation(stream)``
    returns the block's modulation for the stream's rows. The MLP input is ``mlp_hidden_dim_first`` wide where the
    block has it (FLUX.2's gated SiLU takes twice ``mlp_hidden_dim``; ComfyUI before 0.3.7x has only
    ``mlp_hidden_dim``), and ``block.mlp_act`` maps it to ``mlp_hidden_dim``, as the block does."""
    def prepare(s):
        mod = modulation(s)
        qkv, mlp = torch.split(block.linear1(_apply_mod(block.pre_norm(s.x), mod.scale, mod.shift)),
                               [3 * block.hidden_size, getattr(block, "mlp_hidden_dim_first", block.mlp_hidden_dim)],
                               dim=-1)
        q, k, v = _split_heads(qkv, block.num_heads)
        s.q, s.k = block.norm(q, k, v)
        s.v = v
        s.scratch["mod"] = (mod, mlp)

    def finish(s):
        mod, mlp = s.scratch["mod"]
        s.x = s.x + mod.gate * block.linear2(torch.cat((s.out, block.mlp_act(mlp)), 2))
        if s.x.dtype == torch.float16:
            s.x = torch.nan_to_num(s.x, nan=0.0, posinf=65504, neginf=-65504)
    return prepare, finish


def text_ids(params, n: int, device) -> torch.Tensor:
    """The RoPE ids ComfyUI's ``Flux._forward`` gives ``n`` text tokens: zeros on every axis, except the axes in
    ``params.txt_ids_dims`` (FLUX.2: [3]; LongCat-Image: [1, 2]), which count 0 .. n-1. (1, n, axes)."""
    ids = torch.zeros((1, n, len(params.axes_dim)), device=device, dtype=torch.float32)
    for i in params.txt_ids_dims or ():
        ids[:, :, i] = torch.linspace(0, n - 1, steps=n, device=device, dtype=torch.float32)
    return ids


def text_rope_table(dm, state, n: int, device) -> torch.Tensor:
    """The model's RoPE table (``pe_embedder``) for ``n`` text tokens at :func:`text_ids`, kept for the forward in
    ``state.info``: the positions a forward on a prompt of that length gives its text."""
    cache = state.info.setdefault("text_rope", {})
    if n not in cache:
        cache[n] = dm.pe_embedder(text_ids(dm.params, n, device))
    return cache[n]


def with_text_rope(prepare, dm, state):
    """``prepare`` followed by the text RoPE on the stream's queries and keys, with ComfyUI's own ``apply_rope``
    (what the block's attention applies to its own text), for families whose text has positions."""
    from comfy.ldm.flux.math import apply_rope

    def prepare_roped(s):
        prepare(s)
        s.q, s.k = apply_rope(s.q, s.k, text_rope_table(dm, state, s.x.shape[1], s.x.device))
    return prepare_roped


def image_tokens_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper around ``Flux._forward`` (arguments bound by name) for families built on ComfyUI's
    ``Flux`` class: the generated image has ceil(h/p) * ceil(w/p) tokens, reference latents follow. Records it
    in a copy of transformer_options."""
    from .binding import wrapped_call
    from .run import RUN_KEY
    call = wrapped_call(executor, args, kwargs, "Flux._forward", needs=("x", "transformer_options"))
    x, options = call["x"], call["transformer_options"]
    if isinstance(options, dict) and options.get(RUN_KEY) is not None:
        p = executor.class_obj.patch_size
        n_image = ((x.shape[-2] + p // 2) // p) * ((x.shape[-1] + p // 2) // p)
        call["transformer_options"] = {**options, IMAGE_TOKENS_KEY: n_image}
        return call.invoke(executor)
    return executor(*args, **kwargs)


def image_tokens(options, total):
    """The generated image's tokens among ``total`` image-side tokens (Kontext references follow them);
    all of them where the forward wrapper did not count (Chroma)."""
    n = options.get(IMAGE_TOKENS_KEY)
    return total if n is None else min(int(n), total)


def _txt_in(model):
    return model.txt_in


def make_double(index, prepare_for, family: str, embed_of: Callable = _txt_in, text_rope: bool = False):
    """NASA's replace maker for double block ``index``; ``prepare_for(block, vec)`` gives the stream's
    text-stream steps (:func:`text_stream_double` with the family's modulation source); ``embed_of(model)``
    embeds a negative as the model embeds its text (``txt_in``); ``text_rope``: see :func:`with_text_rope`."""
    def make(prior):
        def nasa_double_block(args, extra):
            run_block, state, dm = joint.streams_block(args, extra, prior, index, embed_of)
            if state is None:
                return run_block(args)
            img, txt = args["img"], args["txt"]
            options = args.get("transformer_options") or {}
            state.info["txt_len"] = txt.shape[1]
            if not state.streams:
                return run_block(args)
            t, n_img = txt.shape[1], image_tokens(options, img.shape[1])
            prepare, finish = prepare_for(dm.double_blocks[index], args["vec"])
            if text_rope:
                prepare = with_text_rope(prepare, dm, state)
            last = index == len(dm.double_blocks) - 1 and len(dm.single_blocks) == 0
            return joint.run_block(state, args, run_block, slice(t, t + n_img), slice(t, None), prepare,
                                   None if last else finish, f"{family} double block {index}", layer=("double", index))
        return nasa_double_block
    return make


def make_single(index, prepare_for, family: str, text_rope: bool = False):
    """NASA's replace maker for single block ``index`` (see :func:`make_double`)."""
    def make(prior):
        def nasa_single_block(args, extra):
            run_block, state, dm = joint.steered_block(args, extra, prior)
            if state is None:
                return run_block(args)
            t = state.info["txt_len"]
            n_img = image_tokens(args["transformer_options"], args["img"].shape[1] - t)
            prepare, finish = prepare_for(dm.single_blocks[index], args["vec"])
            if text_rope:
                prepare = with_text_rope(prepare, dm, state)
            last = index == len(dm.single_blocks) - 1
            return joint.run_block(state, args, run_block, slice(t, t + n_img), slice(t, None), prepare,
                                   None if last else finish, f"{family} single block {index}", layer=("single", index))
        return nasa_single_block
    return make


def stream_layers(dm, n_img: int, n_keys: int, modulated: bool = True) -> list:
    """[NasaLayer] of a negative stream through a FLUX-style model's double and single blocks (FLUX, Chroma,
    HunyuanVideo): the text-stream weights per steered row (the modulation recomputed for the stream where
    ``modulated``; Chroma's is precomputed), ``n_img`` image queries steered, ``n_keys`` image keys for the
    stream's own attention; the last block needs only its K/V."""
    from ..nasa_core.flops import NasaLayer, linear_weights, module_linear_weights
    blocks = [("double", b) for b in dm.double_blocks] + [("single", b) for b in dm.single_blocks]
    layers = []
    for i, (kind, b) in enumerate(blocks):
        last = i == len(blocks) - 1
        if kind == "double":
            rows = linear_weights(b.txt_attn.qkv.weight.shape)
            rows += 0 if last else module_linear_weights(b.txt_attn.proj, b.txt_mlp)
            vector = module_linear_weights(b.txt_mod) if modulated else 0     # Chroma's blocks have no txt_mod
        else:
            rows = linear_weights(b.linear1.weight.shape) + (0 if last else linear_weights(b.linear2.weight.shape))
            vector = module_linear_weights(b.modulation) if modulated else 0
        layers.append(NasaLayer(width=dm.hidden_size, query_tokens=n_img, row_weights=rows,
                                row_vector_weights=vector, stream_keys=-1 if last else n_keys))
    return layers


def flop_layers(model_patcher, latent, modulated: bool = True) -> tuple:
    """(Embedding, [NasaLayer]) of one forward on a latent (C, H, W), for nasa_core.flops: txt_in, then the stream."""
    from ..nasa_core.flops import Embedding, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    p = dm.patch_size
    n_img = patch_tokens(latent[-2:], p)
    return Embedding(module_linear_weights(dm.txt_in)), stream_layers(dm, n_img, n_img, modulated)


def install_double_single(model_patcher, make_double: Callable, make_single: Callable,
                          forward_wrapper: Callable) -> int:
    """A ``"dit"`` replace per double and per single block of a FLUX-style model (FLUX, Chroma,
    HunyuanVideo): ``make_double(i)`` / ``make_single(i)`` give block i's ``make(prior)``; and the family's
    ``DIFFUSION_MODEL`` wrapper. Returns the block count."""
    dm = model_patcher.model.diffusion_model
    for i in range(len(dm.double_blocks)):
        joint.install_dit_replace(model_patcher, "double_block", i, make_double(i))
    for i in range(len(dm.single_blocks)):
        joint.install_dit_replace(model_patcher, "single_block", i, make_single(i))
    set_wrapper(model_patcher, "DIFFUSION_MODEL", forward_wrapper)
    return len(dm.double_blocks) + len(dm.single_blocks)


def install_streams(model_patcher, double_prepare: Callable, single_prepare: Callable, family: str,
                    forward_wrapper: Callable, embed_of: Callable = _txt_in, text_rope: bool = False) -> int:
    """:func:`install_double_single` with this module's block replaces (:func:`make_double` / :func:`make_single`)
    and the family's ``prepare`` steps (FLUX, Chroma: only where the modulation comes from differs; FLUX.2 and
    LongCat-Image also embed their text otherwise and give it RoPE positions: ``embed_of``, ``text_rope``)."""
    return install_double_single(model_patcher,
                                 functools.partial(make_double, prepare_for=double_prepare, family=family,
                                                   embed_of=embed_of, text_rope=text_rope),
                                 functools.partial(make_single, prepare_for=single_prepare, family=family,
                                                   text_rope=text_rope),
                                 forward_wrapper)


def double_single_groups(model_patcher) -> dict:
    """Block selection groups of a FLUX-style model: its double and single blocks."""
    dm = model_patcher.model.diffusion_model
    return {"double": list(range(len(dm.double_blocks))), "single": list(range(len(dm.single_blocks)))}
