"""HunyuanVideo adapter: T2V, I2V (concat, replace and reference-latent guidance), SkyReels I2V
(``comfy.ldm.hunyuan_video``).

HunyuanVideo uses FLUX's double and single block classes with the image FIRST in the joint
sequence ([video; text]) and embeds its text with a token refiner (``txt_in``: two self-attention
blocks modulated by the timestep and the prompt's mean token). NASA's negative flows through the
text-stream weights as a stream of its own (see :mod:`.joint`):

* embedded per forward by ``txt_in`` exactly as the model embeds the prompt: the same timestep
  (each row's own), no mask (the negative has no padding; ComfyUI 0.3.64 encodes a single prompt
  unpadded and drops an all-ones mask); text RoPE ids are zeros, so nothing to rotate;
* double and single blocks: FLUX's text-stream steps (:func:`.flux._double_prepare` /
  :func:`.flux._single_prepare`, the same classes) with the row's ``vec`` (timestep + guidance +
  pooled CLIP-L of the positive). With a guiding frame (I2V "v2 (replace)") ``vec`` holds one
  vector per token group and the text uses the last group's, as the blocks do;
* every block's joint attention subtracts alpha * softmax(Q_vid K-^T) V- on the generated video's
  query rows only. Conditioning tokens are keys the negative stream attends to but are never
  steered: the reference latent's tokens (prepended, "custom" I2V) and the guiding frame's tokens
  (the first latent frame, which the model modulates as a clean frame, "v2 (replace)").
  The positive's text mask stays on the positive's own attention.

Hooks: a ``DIFFUSION_MODEL`` wrapper that starts the negative streams (the token refiner needs the
timestep, which blocks are not given) and records where the video tokens are, and a ``"dit"``
replace per double and single block (chaining any replace installed before).
HunyuanImage 2.1 (same diffusion-model class, ByT5 glyph tokens, 2D patches) is not covered.
"""
from __future__ import annotations

from typing import Optional

from . import flux, joint
from .negatives import RUN_KEY, attach_model, set_wrapper
from ..nasa_core.flops import patch_tokens

FAMILY = "HunyuanVideo"
VIDEO = True     # a mask's batch is frames
JOINT_STREAM = True     # a negative stream through the text-stream weights (joint.STREAMS applies)
SUPPORTED = ("HunyuanVideo T2V/I2V, SkyReels I2V",)

# HunyuanVideo._forward's parameters, in order (its DIFFUSION_MODEL executor passes them positionally)
_FORWARD_ARGS = ("x", "timestep", "context", "y", "txt_byt5", "guidance", "attention_mask", "guiding_frame_index",
                 "ref_latent", "disable_time_r", "control", "transformer_options")


def matches(model_patcher) -> bool:
    import comfy.model_base
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    return (isinstance(model_patcher.model, comfy.model_base.HunyuanVideo)
            and type(getattr(model_patcher.model, "diffusion_model", None)) is HunyuanVideo)


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.diffusion_model.params.context_in_dim


def family_name(model_patcher) -> str:
    return f"HunyuanVideo ({type(model_patcher.model.model_config).__name__})"


def _tokens(latent, patch_size) -> int:
    """Tokens of a (B, C, T, H, W) latent after the patch embedding (padded up to the patch size)."""
    return patch_tokens(latent.shape[2:], patch_size)


def _text_vec(vec, modulation_dims):
    """The text tokens' modulation vector. With a guiding frame ``vec`` is (B, groups, D) and
    ``modulation_dims`` maps token ranges to groups; the text is the range running to the end."""
    if modulation_dims is None:
        return vec
    start, end, group = modulation_dims[-1]
    if end is not None:
        raise RuntimeError(f"NASA: HunyuanVideo's modulation ranges {modulation_dims} do not cover the text tokens. "
                           f"This ComfyUI version changed the model: please report it.")
    return vec[:, group]


def _start_forward(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: embed the negative(s) with the token refiner at this forward's
    timestep; record the joint sequence's video tokens: [reference latent][guiding frame][video]."""
    a = {**dict(zip(_FORWARD_ARGS, args)), **kwargs}
    options = a.get("transformer_options")
    if options is not None and options.get(RUN_KEY) is not None:
        dm = executor.class_obj
        x, timestep, context = a["x"], a["timestep"], a["context"]
        n_ref = 0 if a.get("ref_latent") is None else _tokens(a["ref_latent"], dm.patch_size)
        n_guide = 0
        if a.get("guiding_frame_index") is not None:      # the tokens of one latent frame, as the model counts them
            n_guide = (x.shape[-1] // dm.patch_size[-1]) * (x.shape[-2] // dm.patch_size[-2])
        n_image = n_ref + _tokens(x, dm.patch_size)
        state = joint.start_forward(options, x.shape[0], x.device, context.dtype,
                                    lambda neg: dm.txt_in(neg, timestep, None, transformer_options=options))
        state.info.update(image=slice(0, n_image), steer=slice(n_ref + n_guide, n_image))
    return executor(*args, **kwargs)


def _run(args, extra, prior, index: int, kind: str, dims_key: str, prepare_for):
    run_block, state, dm = joint.steered_block(args, extra, prior)
    if state is None:
        return run_block(args)
    if kind == "double" and args["img"].shape[1] != state.info["image"].stop:
        raise RuntimeError(f"NASA: HunyuanVideo double block {index} got {args['img'].shape[1]} image tokens, expected "
                           f"{state.info['image'].stop}. This ComfyUI version changed the model: please report it.")
    blocks = dm.double_blocks if kind == "double" else dm.single_blocks
    prepare, finish = prepare_for(blocks[index], _text_vec(args["vec"], args.get(dims_key)))
    last = index == len(blocks) - 1 and (kind == "single" or len(dm.single_blocks) == 0)
    return joint.run_block(state, args, run_block, state.info["steer"], state.info["image"], prepare,
                           None if last else finish, f"HunyuanVideo {kind} block {index}", layer=(kind, index))


def _make_double(index):
    def make(prior):
        def nasa_double_block(args, extra):
            return _run(args, extra, prior, index, "double", "modulation_dims_txt", flux._double_prepare)
        return nasa_double_block
    return make


def _make_single(index):
    def make(prior):
        def nasa_single_block(args, extra):
            return _run(args, extra, prior, index, "single", "modulation_dims", flux._single_prepare)
        return nasa_single_block
    return make


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: the token refiner on the negative (its vectors and
    self-attention counted once), then FLUX's stream through the double and single blocks over the video tokens."""
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
    return embedding, flux.stream_layers(dm, n, n)


def install(model_patcher) -> int:
    count = joint.install_double_single(model_patcher, _make_double, _make_single)
    set_wrapper(model_patcher, "DIFFUSION_MODEL", _start_forward)
    return count


block_groups = joint.double_single_groups
attach_layers = attach_model     # the blocks read the model being sampled from the run
