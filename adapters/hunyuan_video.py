"""HunyuanVideo adapter: T2V, I2V (concat, replace and reference-latent guidance), SkyReels I2V
(``comfy.ldm.hunyuan_video``).

HunyuanVideo uses FLUX's double and single block classes on a joint sequence of text and video tokens
and embeds its text with a token refiner (``txt_in``: two self-attention blocks modulated by the
timestep and the prompt's mean token). NASA's negative flows through the text-stream weights as a
stream of its own (see :mod:`.joint`):

* embedded per forward by ``txt_in`` exactly as the model embeds the prompt: the same timestep
  (each row's own), no mask (the negative has no padding; ComfyUI encodes a single prompt unpadded
  and drops an all-ones mask); text RoPE ids are zeros, so nothing to rotate;
* double and single blocks: FLUX's text-stream steps (:func:`.double_single.text_stream_double` /
  :func:`.double_single.text_stream_single`, the same classes) with the row's ``vec`` (timestep + guidance +
  pooled CLIP-L of the positive). With a guiding frame (I2V "v2 (replace)") ``vec`` holds one vector
  per token group and ``modulation_dims`` assigns groups to sequence positions; each negative token
  takes the group of the position the text has there, as ComfyUI's ``apply_mod`` modulates the
  text (where the text comes first, the single blocks' first frame's worth of positions is text);
* every block's joint attention subtracts alpha * softmax(Q_vid K-^T) V- on the generated video's
  query rows only. Conditioning tokens are keys the negative stream attends to but are never
  steered: the reference latent's tokens (prepended, "custom" I2V) and the guiding frame's tokens
  (the first latent frame, which the model modulates as a clean frame, "v2 (replace)").
  The positive's text mask stays on the positive's own attention.

The joint order changed in ComfyUI: [video; text] in older releases (0.3.64:
``DoubleStreamBlock(flipped_img_txt=True)``, single blocks on ``cat(img, txt)``), [text; video] in newer
ones (0.33). It is read from the model, never from a version: the double blocks' ``flipped_img_txt`` (the
single blocks join the double blocks' outputs in the same order), checked against the identity RoPE of the
text's zero ids at the first block and against ComfyUI's ``img_slice`` in the single blocks where given. An
order NASA cannot establish is an error.

Hooks: a ``DIFFUSION_MODEL`` wrapper (arguments bound by name, :mod:`.binding`) that starts the negative
streams (the token refiner needs the timestep, which blocks are not given) and records where the video
tokens are, and a ``"dit"`` replace per double and single block (chaining any replace installed before).
Only HunyuanVideo 1.0 is claimed here (:func:`matches`): HunyuanVideo 1.5 and HunyuanImage 2.1 run the same
diffusion-model class with other text sequences (vision and ByT5 tokens, a condition-type embedding, 2D
patches): :mod:`.hunyuan_video15` and :mod:`.hunyuan_image21` claim them, with this module's hooks
(:func:`install`; :func:`embed_text` adds the condition-type vector HunyuanVideo 1.5 gives its text).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from . import double_single, joint
from .binding import wrapped_call
from .run import RUN_KEY
from .family import Family
from ..nasa_core.flops import patch_tokens


_MODEL_CLASSES = ("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V")   # comfy.model_base, by name
TEXT_FIRST_KEY = "text_first"      # ForwardState.info: the joint sequence is [text; image] (else [image; text])


def matches(model_patcher) -> bool:
    """Exactly HunyuanVideo 1.0 (T2V, I2V, SkyReels I2V): ComfyUI's model classes of those, around the
    HunyuanVideo diffusion model built with 3D patches, a pooled CLIP vector and the token refiner's text alone.
    The same diffusion-model class also runs HunyuanVideo 1.5 (vision tokens, ByT5 glyph tokens and a
    condition-type embedding in the text sequence, MeanFlow timesteps) and HunyuanImage 2.1 (2D patches, ByT5):
    their own families claim them (:mod:`.hunyuan_video15`, :mod:`.hunyuan_image21`); a model of ComfyUI's 1.0
    classes built with any of those parts is claimed by none."""
    import comfy.model_base
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    model = getattr(model_patcher, "model", None)
    dm = getattr(model, "diffusion_model", None)
    classes = tuple(c for c in (getattr(comfy.model_base, n, None) for n in _MODEL_CLASSES) if c is not None)
    if type(dm) is not HunyuanVideo or type(model) not in classes:
        return False      # model_base.HunyuanVideo15 subclasses model_base.HunyuanVideo
    p = dm.params
    return (len(p.patch_size) == 3 and p.vec_in_dim is not None and not p.byt5 and not p.meanflow
            and not getattr(p, "use_cond_type_embedding", False) and getattr(p, "vision_in_dim", None) is None
            and all(getattr(dm, m, None) is None for m in ("byt5_in", "time_r_in", "vision_in", "cond_type_embedding")))


def diffusion_model_of(model_patcher, class_names: tuple):
    """The diffusion model of ``model_patcher`` where that is ComfyUI's HunyuanVideo class (exactly) inside one of
    ComfyUI's model classes ``class_names`` (comfy.model_base, by name; a name this ComfyUI lacks is skipped) and
    its text goes through the token refiner NASA's negative stream runs (:func:`embed_text`); else None."""
    import comfy.model_base
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, TokenRefiner
    model = getattr(model_patcher, "model", None)
    dm = getattr(model, "diffusion_model", None)
    classes = tuple(c for c in (getattr(comfy.model_base, n, None) for n in class_names) if c is not None)
    if type(dm) is not HunyuanVideo or type(model) not in classes or type(dm.txt_in) is not TokenRefiner:
        return None
    return dm


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def model_name(model_patcher) -> str:
    return f"HunyuanVideo ({type(model_patcher.model.model_config).__name__})"


def _tokens(latent, patch_size) -> int:
    """Tokens of a (B, C, T, H, W) or (B, C, H, W) latent after the patch embedding (padded up to the patch
    size: 3D or 2D, one size per latent dimension)."""
    return patch_tokens(latent.shape[2:], patch_size)


TEXT_TYPE = 0       # cond_type_embedding's index of the main text ("text_encoder feature"), as the model uses it


def embed_text(dm, negative, timestep, options):
    """The negative's main text (a raw (1, L, width) prompt) as the model embeds the positive's: the token
    refiner at this forward's timestep (each row's own), no mask (the negative has no padding; ComfyUI encodes a
    single prompt unpadded and drops an all-ones mask), plus the main text's condition-type vector where the model
    has a ``cond_type_embedding`` (HunyuanVideo 1.5; never in the 1.0 models :func:`matches` claims). That vector
    is looked up on the embedding's own device (ComfyUI moves the module to the text's device inside its forward)
    and cast to the text's dtype, as the model adds it."""
    txt = dm.txt_in(negative, timestep, None, transformer_options=options)
    cond_type = getattr(dm, "cond_type_embedding", None)
    if cond_type is not None:
        ids = torch.full((txt.shape[1],), TEXT_TYPE, dtype=torch.long, device=cond_type.weight.device)
        txt = txt + cond_type(ids).to(device=txt.device, dtype=txt.dtype)
    return txt


def _start_forward(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper of HunyuanVideo._forward, its arguments bound by name: embed the negative(s)
    (:func:`embed_text`) at this forward's timestep; record the image side of the joint sequence:
    [reference latent][guiding frame][video or image]."""
    call = wrapped_call(executor, args, kwargs, "HunyuanVideo._forward",
                        needs=("x", "timestep", "context", "guiding_frame_index", "ref_latent", "transformer_options"))
    options = call["transformer_options"]
    if not options or options.get(RUN_KEY) is None:
        return executor(*args, **kwargs)
    options = dict(options)      # this forward's own: the streams are not written into the caller's options
    dm = executor.class_obj
    x, timestep, context, ref = call["x"], call["timestep"], call["context"], call["ref_latent"]
    n_ref = 0 if ref is None else _tokens(ref, dm.patch_size)
    n_guide = 0
    if call["guiding_frame_index"] is not None:      # the tokens of one latent frame, as the model counts them
        n_guide = (x.shape[-1] // dm.patch_size[-1]) * (x.shape[-2] // dm.patch_size[-2])
    n_image = n_ref + _tokens(x, dm.patch_size)
    state = joint.start_forward(options, x.shape[0], x.device, context.dtype,
                                lambda neg: embed_text(dm, neg, timestep, options))
    state.info.update(image=n_image, steer=n_ref + n_guide)
    call["transformer_options"] = options
    return call.invoke(executor)


def _groups(dims, start: int, length: int, where: str) -> list:
    """The modulation group of each of the ``length`` tokens at ``start`` of a sequence, as ComfyUI's flux
    ``apply_mod`` assigns ``modulation_dims`` ranges ((first, end or None, group)) to positions. A token no
    range covers, or several do, is not a modulation NASA can reproduce: an error."""
    groups = [None] * length
    for first, end, group in dims:
        lo, hi = max(first - start, 0), length if end is None else min(end - start, length)
        for i in range(lo, hi):
            if groups[i] is not None:
                raise RuntimeError(f"NASA: {where}: modulation ranges {dims} overlap. This ComfyUI version changed "
                                   f"the model: please report it.")
            groups[i] = group
    if None in groups:
        raise RuntimeError(f"NASA: {where}: modulation ranges {dims} leave text tokens unmodulated. This ComfyUI "
                           f"version changed the model: please report it.")
    return groups


def _modulation(module, vec, dims, start: int, where: str):
    """``modulation(stream)`` for flux's text-stream steps: ``module`` (txt_mod or a single block's modulation)
    on each stream row's ``vec``. With per-token modulation (a guiding frame: ``vec`` is (B, groups, D) and
    ``dims`` maps token ranges to groups) every stream token gets the group its position ``start + i`` in the
    block's sequence gets, as the block modulates its own text there."""
    if dims is None:
        return lambda s: module(joint.rows_of(vec, s.rows))

    def per_token(s):
        groups = _groups(dims, start, s.x.shape[1], where)
        mods = module(joint.rows_of(vec, s.rows))       # ModulationOuts of (R, groups, D)
        if len(set(groups)) == 1:
            index = slice(groups[0], groups[0] + 1)
        else:
            index = torch.tensor(groups, device=vec.device)
        return tuple(None if m is None else dataclasses.replace(m, shift=m.shift[:, index], scale=m.scale[:, index],
                                                                 gate=m.gate[:, index]) for m in mods)
    return per_token


def _check_text_rope(pe, text: slice, where: str) -> None:
    """The joint sequence's RoPE (``pe``, (B, 1, tokens, D/2, 2, 2)) is the identity on the positions NASA takes
    for the text: the text's ids are zeros, so nothing rotates the negative stream. Image tokens have distinct
    ids (at most one of them zeros), so positions taken from the wrong side of the sequence fail this too. Checked
    in eager runs only: traced by torch.compile, a check of values would break the graph."""
    rot = pe[:, :, text]
    if rot.device.type == "meta" or torch.compiler.is_compiling():
        return      # shapes only (FLOP counting), or traced by torch.compile (a check of values breaks the graph)
    eye = torch.eye(2, dtype=rot.dtype, device=rot.device)
    if not torch.equal(rot, eye.expand_as(rot)):
        raise RuntimeError(f"NASA: {where}: the joint sequence's tokens {text.start}..{text.stop - 1}, where NASA "
                           f"takes the text to be, are rotated by RoPE; the text's positions are zeros. This ComfyUI "
                           f"version changed the model: please report it.")


def _check_order(state, args, index: int, text_len: int, n_image: int) -> bool:
    """Whether single block ``index`` gets [text; image]: the order the double blocks join them in (ComfyUI
    concatenates their outputs the same way: image first in older releases, text first in newer ones), held
    against ``img_slice`` where ComfyUI gives it. Read from structure, not from the tensors' values, so the
    check costs nothing and holds on any device."""
    where = f"HunyuanVideo single block {index}"
    text_first = state.info.get(TEXT_FIRST_KEY)
    if text_first is None:
        raise RuntimeError(f"NASA: {where}: the order of text and image tokens is unknown (no double block ran "
                           f"before it). This ComfyUI version changed the model: please report it.")
    img_slice = (args.get("transformer_options") or {}).get("img_slice")
    if img_slice is not None:
        want = [text_len, text_len + n_image] if text_first else [0, n_image]
        if list(img_slice) != want:
            raise RuntimeError(f"NASA: {where}: ComfyUI places the image at {list(img_slice)}, NASA at {want}. This "
                               f"ComfyUI version changed the model: please report it.")
    return text_first


def _run(args, extra, prior, index: int, kind: str):
    run_block, state, dm = joint.steered_block(args, extra, prior)
    if state is None:
        return run_block(args)
    where = f"HunyuanVideo {kind} block {index}"
    n_image, steer_from = state.info["image"], state.info["steer"]
    if kind == "double":
        block = dm.double_blocks[index]
        if args["img"].shape[1] != n_image:
            raise RuntimeError(f"NASA: {where} got {args['img'].shape[1]} image tokens, expected {n_image}. This "
                               f"ComfyUI version changed the model: please report it.")
        text_len = args["txt"].shape[1]
        text_first = not getattr(block, "flipped_img_txt", False)   # ComfyUI's DoubleStreamBlock joins [txt; img]
        state.info.update(text_len=text_len)                          # unless flipped (older releases)
        state.info[TEXT_FIRST_KEY] = text_first
        if index == 0:
            _check_text_rope(args["pe"], slice(0, text_len) if text_first else slice(n_image, n_image + text_len),
                             where)
        prepare, finish = double_single.text_stream_double(
            block, _modulation(block.txt_mod, args["vec"], args.get("modulation_dims_txt"), 0, where))
    else:
        block = dm.single_blocks[index]
        text_len = state.info["text_len"]
        if args["img"].shape[1] != n_image + text_len:
            raise RuntimeError(f"NASA: {where} got {args['img'].shape[1]} tokens, expected {n_image} image and "
                               f"{text_len} text tokens. This ComfyUI version changed the model: please report it.")
        text_first = _check_order(state, args, index, text_len, n_image)
        modulation = _modulation(lambda v: block.modulation(v)[:1], args["vec"], args.get("modulation_dims"),
                                 0 if text_first else n_image, where)
        prepare, finish = double_single.text_stream_single(block, lambda s: modulation(s)[0])
    offset = text_len if text_first else 0
    image = slice(offset, offset + n_image)
    last = index == len(dm.single_blocks) - 1 if kind == "single" else (
        index == len(dm.double_blocks) - 1 and len(dm.single_blocks) == 0)
    return joint.run_block(state, args, run_block, slice(offset + steer_from, offset + n_image), image, prepare,
                           None if last else finish, where, layer=(kind, index))


def _make_double(index):
    def make(prior):
        def nasa_double_block(args, extra):
            return _run(args, extra, prior, index, "double")
        return nasa_double_block
    return make


def _make_single(index):
    def make(prior):
        def nasa_single_block(args, extra):
            return _run(args, extra, prior, index, "single")
        return nasa_single_block
    return make


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: the token refiner on the negative (its vectors and
    self-attention counted once), then FLUX's stream through the double and single blocks over the video tokens
    (``latent``: (C, T, H, W), or (C, H, W) for 2D patches; the condition-type vector is an addition, no FLOPs)."""
    from ..nasa_core.flops import Embedding, module_linear_weights
    dm = model_patcher.model.diffusion_model
    refiner = dm.txt_in
    blocks = refiner.individual_token_refiner.blocks
    embedding = Embedding(
        weights=module_linear_weights(refiner.input_embedder, *[m for b in blocks for m in (b.self_attn, b.mlp)]),
        vector_weights=module_linear_weights(refiner.t_embedder, refiner.c_embedder,
                                             *[b.adaLN_modulation for b in blocks]),
        attention=[dm.hidden_size] * len(blocks))
    n = patch_tokens(latent[1:], dm.patch_size)
    return embedding, double_single.stream_layers(dm, n, n)


def install(model_patcher) -> int:
    """NASA's ``"dit"`` replace on every double and single block and the DIFFUSION_MODEL wrapper; the same for
    every model of ComfyUI's HunyuanVideo class NASA claims (:mod:`.hunyuan_video15` and :mod:`.hunyuan_image21`
    use it too)."""
    return double_single.install_double_single(model_patcher, _make_double, _make_single, _start_forward)


FAMILY = Family(
    name="HunyuanVideo", supported=("HunyuanVideo T2V/I2V, SkyReels I2V",),
    model_classes=("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V"), matches=matches,
    model_name=model_name,
    context_dim=context_dim, block_groups=double_single.double_single_groups, install=install,
    flop_layers=flop_layers, video=True, joint_stream=True)
