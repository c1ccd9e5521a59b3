"""Random-weight Stable Diffusion models built from ComfyUI's own classes.

These are real ComfyUI objects - a :class:`comfy.model_patcher.ModelPatcher` around
``comfy.model_base.BaseModel``/``SDXL`` with ComfyUI's ``SD15``/``SD20``/``SDXL`` model configs, a
:class:`comfy.sd.CLIP` with the real CLIP tokenizer and a :class:`comfy.sd.VAE` - whose weights are
drawn from a seeded random generator instead of being read from a checkpoint file. They serve

* the pack's tests, which need SD1.5, SD2.1 and SDXL UNets with the true block structure, and
* the headless runner's ``--random-weights`` smoke mode, which swaps every ``CheckpointLoaderSimple``
  of a workflow for :func:`random_checkpoint_node_class`'s node, so a workflow runs end to end
  without downloading a checkpoint.

Two sizes exist. ``"tiny"`` keeps every family's real structure (levels, ResBlocks, transformer
depths, so SD1.5/SD2.1 have 16 cross-attention layers and SDXL 70) with narrow widths; ``"full"``
uses the published configurations (SD1.5, SD2.1 512-base / 768-v, SDXL base 1.0) and the real
text-encoder configs, for benchmarks::

    family  size  model_channels  heads                context  adm   UNet params  text enc.
    sd15    tiny  32              8 (ComfyUI's SD15)   64       -     8.6M         CLIP-L 64 wide, 3 layers
    sd21*   tiny  32              8 channels each      64       -     8.6M         CLIP-H 64 wide, 3 layers
    sdxl    tiny  32              8 channels each      32+32    1568  23.6M        CLIP-L + CLIP-G 32 wide
    sd15    full  320             8                    768      -     859.5M       CLIP-L
    sd21*   full  320             64 channels each     1024     -     865.9M       OpenCLIP-H
    sdxl    full  320             64 channels each     768+1280 2816  2567.5M      CLIP-L + OpenCLIP-bigG

(sd21* = sd21 and sd21v, which differ only in the prediction type.)

A tiny UNet forward takes a few hundredths of a second on a 16x16 or 32x32 latent on a CPU. The
VAE (:func:`build_vae`) is ComfyUI's AutoencoderKL: 4 latent channels, 8x scale; tiny has 1M
parameters, full the SD VAE's 83.7M.

Weight initialisation (:func:`init_random_weights`) keeps activations O(1) through the network:
linear and convolution weights are N(0, 1/fan_in), biases 0, normalisation layers weight 1 and bias
0, embeddings N(0, 1). No layer is zero-initialised (the original recipe zeroes the UNet's output
projections, which would hide every effect a test looks for), so the text path visibly moves the
UNet output. The weights depend only on the seed and the parameter's name, not on the device or
the order of construction.

Importing this module imports nothing from ComfyUI; every function does so on first use, after the
caller has brought ComfyUI up (see :mod:`.comfy_env`).
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

FAMILIES = ("sd15", "sd21", "sd21v", "sdxl")
"""sd15 = SD1.5; sd21 = SD2.1 512-base (eps prediction); sd21v = SD2.1 768-v (v prediction); sdxl = SDXL base."""
SIZES = ("tiny", "full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Weight dtypes offered by the node, by name. The builders also accept torch.float16."""
RANDOM_CHECKPOINT_NODE_ID = "NASA_RandomWeightCheckpoint"

# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

# The UNet structure of each family, as ComfyUI's model detection reads it from real checkpoints.
# transformer_depth has one entry per input ResBlock, transformer_depth_output one per output ResBlock
# (ComfyUI pops the latter from the end, so its first entries belong to the highest resolution).
_SD_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "use_checkpoint": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
_SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "use_checkpoint": False,
    "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential",
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_linear_in_transformer": True,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
_UNET_STRUCTURE = {
    "sd15": {**_SD_UNET, "use_linear_in_transformer": False},
    "sd21": {**_SD_UNET, "use_linear_in_transformer": True},
    "sdxl": _SDXL_UNET,
}

# Width of each family and size. context_dim is not listed: it is the text encoders' output width.
# Attention heads: SD1.5 always has 8 heads (ComfyUI's SD15 config), SD2.x and SDXL have 64-channel
# heads; the tiny models keep SD1.5's 8 heads and shrink the head width of the others.
_UNET_WIDTH = {
    ("sd15", "full"): {"model_channels": 320},
    ("sd21", "full"): {"model_channels": 320},
    ("sdxl", "full"): {"model_channels": 320},
    ("sd15", "tiny"): {"model_channels": 32},
    ("sd21", "tiny"): {"model_channels": 32, "num_head_channels": 8},
    ("sdxl", "tiny"): {"model_channels": 32, "num_head_channels": 8},
}

# Text encoders: ComfyUI's model_name of each encoder and the overrides of its JSON config
# (comfy/sd1_clip.py reads model_options["<model_name>_model_config"]). The UNet's context_dim is
# the sum of the hidden sizes; SDXL's pooled output is CLIP-G's hidden size (ComfyUI's text
# projection is hidden_size x hidden_size), so adm_in_channels = that + 6 x 256 size embeddings.
_TINY_TEXT = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
              "num_hidden_layers": 3, "projection_dim": 64}
# Tiny widths differ per family, as the real ones do (SD1.5 768, SD2.x 1024, SDXL 768+1280), so a
# negative encoded for the wrong family is a real width mismatch in tests too.
_TINY_TEXT_BY_ENCODER = {
    ("sd15", "clip_l"): _TINY_TEXT,
    ("sd21", "clip_h"): {**_TINY_TEXT, "hidden_size": 48, "intermediate_size": 192, "projection_dim": 48},
    ("sdxl", "clip_l"): {**_TINY_TEXT, "hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 2,
                         "projection_dim": 32},
    ("sdxl", "clip_g"): _TINY_TEXT,
}
_TEXT_ENCODERS = {
    # family base: (model names, hidden sizes of the published encoders)
    "sd15": (("clip_l",), {"clip_l": 768}),
    "sd21": (("clip_h",), {"clip_h": 1024}),
    "sdxl": (("clip_l", "clip_g"), {"clip_l": 768, "clip_g": 1280}),
}
SDXL_SIZE_EMBEDDINGS = 6 * 256
"""Width of the six size/crop embeddings SDXL's encode_adm appends to the pooled text output."""

# The VAE: ComfyUI's AutoencoderKL. Four levels = 8x down/upscaling of a 4-channel latent.
# ComfyUI's VAE blocks use GroupNorm(32, ...), so every width must be a multiple of 32.
_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                 "attn_resolutions": [], "dropout": 0.0}
_VAE_SIZE = {
    "tiny": {"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1},
    "full": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2},
}

# SD2.x v-prediction: ComfyUI's SD20.model_type() calls a checkpoint v-prediction when this LayerNorm
# bias has a standard deviation above 0.09. The sd21v model gets such a bias (std 0.1), so that
# its weights, saved and reloaded by ComfyUI, are detected as v-prediction again.
_V_PRED_MARKER_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
_V_PRED_MARKER_STD = 0.1


_BUILD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _base_family(family: str) -> str:
    return "sd21" if family == "sd21v" else family


def _check(family: Optional[str], size: str, dtype: torch.dtype) -> None:
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    if dtype not in _BUILD_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {_BUILD_DTYPES}")


def text_encoder_configs(family: str, size: str = "tiny") -> dict:
    """``{model_name: config overrides}`` of the family's text encoders (empty dicts for "full")."""
    _check(family, size, torch.float32)
    names, _ = _TEXT_ENCODERS[_base_family(family)]
    if size == "full":
        return {name: {} for name in names}
    return {name: dict(_TINY_TEXT_BY_ENCODER[(_base_family(family), name)]) for name in names}


def _text_widths(family: str, size: str) -> dict:
    names, full = _TEXT_ENCODERS[_base_family(family)]
    configs = text_encoder_configs(family, size)
    return {name: configs[name].get("hidden_size", full[name]) for name in names}


def unet_config(family: str, size: str = "tiny") -> dict:
    """The UNet configuration (ComfyUI's ``unet_config`` keys, before the model class adds its
    ``unet_extra_config``) of a family and size, with context and adm widths matching
    :func:`build_clip` of the same family and size."""
    _check(family, size, torch.float32)
    base = _base_family(family)
    config = dict(_UNET_STRUCTURE[base])
    config["model_channels"] = _UNET_WIDTH[(base, size)]["model_channels"]
    widths = _text_widths(family, size)
    config["context_dim"] = sum(widths.values())
    if base == "sdxl":
        config["adm_in_channels"] = widths["clip_g"] + SDXL_SIZE_EMBEDDINGS
    return config


def _model_config_class(family: str):
    import comfy.supported_models as sm
    return {"sd15": sm.SD15, "sd21": sm.SD20, "sdxl": sm.SDXL}[_base_family(family)]


def model_config(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32):
    """ComfyUI's model config object (``SD15``, ``SD20`` or ``SDXL``) for a family and size, with
    the inference dtype set the way ComfyUI's checkpoint loader sets it."""
    import comfy.model_management as mm
    _check(family, size, dtype)
    config = _model_config_class(family)(unet_config(family, size))
    # The class's unet_extra_config (heads, attention precision) is in config.unet_config now;
    # tiny models override the head width.
    head = {k: v for k, v in _UNET_WIDTH[(_base_family(family), size)].items() if k != "model_channels"}
    config.unet_config.update(head)
    manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), config.supported_inference_dtypes)
    config.set_inference_dtype(dtype, manual_cast)
    return config


# ---------------------------------------------------------------------------------------------
# Weight initialisation
# ---------------------------------------------------------------------------------------------

def param_seed(seed: int, scope: str, name: str) -> int:
    """A 63-bit seed for one parameter, from the user seed, the component and the parameter name."""
    digest = hashlib.blake2b(f"{int(seed)}/{scope}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


_NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
_NORM_SCALES = ("weight", "scale", "gamma")


def _is_norm(module: torch.nn.Module) -> bool:
    """torch's norms, and ComfyUI's own (RMSNorm, T5LayerNorm, FLUX's RMSNorm 'scale', the Wan VAE's
    RMS_norm 'gamma'), which are plain Modules: by class name."""
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


@torch.no_grad()  # also inside worker threads: grad mode is thread-local
def fill_normal(param: torch.Tensor, std: float, seed: int) -> None:
    """Fill ``param`` with N(0, std^2) draws from a CPU generator seeded with ``seed``. The draws
    are made in float32 on the CPU, so a bf16 or GPU parameter gets the same values, rounded."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if param.dtype == torch.float32 and param.device.type == "cpu":
        param.normal_(0.0, std, generator=generator)
    else:
        param.copy_(torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))


@torch.no_grad()
def init_random_weights(module: torch.nn.Module, seed: int, scope: str,
                        std_scale: Optional[dict] = None, keep=lambda name: False,
                        workers: Optional[int] = None) -> int:
    """Fill every parameter of ``module`` deterministically; return how many were filled.

    Linear/convolution weights (any parameter named ``weight`` with two or more dimensions) are
    N(0, 1/fan_in); normalisation weights 1; embeddings N(0, 1); every other parameter (biases,
    scalars) 0. ``std_scale`` maps parameter names to a factor on their standard deviation;
    parameters for which ``keep(name)`` is true keep the value their constructor gave them.
    ``scope`` separates the random streams of different components built with the same seed.
    Each parameter has its own generator, so the values do not depend on the order of filling:
    ``workers`` threads draw them (torch releases the GIL while drawing); by default up to 8 for
    modules over 50M parameters, else 1.
    """
    std_scale = std_scale or {}
    draws = []
    count = 0
    for module_name, sub in module.named_modules():
        for param_name, param in sub.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if keep(full_name):
                continue
            count += 1
            if _is_norm(sub):
                param.fill_(1.0 if param_name in _NORM_SCALES else 0.0)
            elif isinstance(sub, torch.nn.Embedding) and param_name == "weight":
                draws.append((param, 1.0, param_seed(seed, scope, full_name)))
            elif param_name == "weight" and param.dim() >= 2:
                std = std_scale.get(full_name, 1.0) / math.sqrt(param[0].numel())
                draws.append((param, std, param_seed(seed, scope, full_name)))
            else:
                param.zero_()
    total = sum(p.numel() for p, _, _ in draws)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if total > 50_000_000 else 1
    if workers > 1:
        # Inference mode is thread-local too: a module built inside it (a node executing) holds
        # inference tensors, which the workers may only write in inference mode.
        inference = torch.is_inference_mode_enabled()

        def fill(job):
            with torch.inference_mode(inference):
                fill_normal(*job)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, draws))
    else:
        for job in draws:
            fill_normal(*job)
    return count


def _attn2_projection_names(diffusion_model: torch.nn.Module) -> list:
    from comfy.ldm.modules.attention import BasicTransformerBlock
    names = []
    for name, sub in diffusion_model.named_modules():
        if _is_cross_attention_block(sub, BasicTransformerBlock):
            names += [f"{name}.attn2.{p}.weight" for p in ("to_q", "to_k", "to_v")]
    return names


def _is_cross_attention_block(module, block_type) -> bool:
    return (isinstance(module, block_type) and getattr(module, "attn2", None) is not None
            and not getattr(module, "switch_temporal_ca_to_sa", False))


def _v_marker_for(shape, seed: int) -> torch.Tensor:
    """The LayerNorm bias that makes ComfyUI detect an SD2.x checkpoint as v-prediction: mean 0,
    population standard deviation exactly ``_V_PRED_MARKER_STD``."""
    value = torch.empty(shape)
    fill_normal(value, 1.0, param_seed(seed, "unet", _V_PRED_MARKER_KEY))
    value = value - value.mean()
    return value / value.std(unbiased=False) * _V_PRED_MARKER_STD


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

def build_unet_model(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32, seed: int = 0,
                     weight_scale: Optional[float] = None):
    """A ComfyUI ModelPatcher around the family's diffusion model with random weights.

    ``weight_scale`` multiplies the init standard deviation of the cross-attention projections
    (attn2 to_q/to_k/to_v) only: above 1 the attention over the prompt tokens gets sharper.
    The model sits on ComfyUI's offload device (the CPU) with ComfyUI's compute device as load
    device, like a freshly loaded checkpoint.
    """
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    _check(family, size, dtype)
    config = model_config(family, size, dtype)

    # ComfyUI decides the prediction type from the checkpoint's weights (SD20.model_type); give it
    # the weight that marks an SD2.x v-prediction checkpoint, so ComfyUI's own rule picks it.
    detect_from = {}
    if family == "sd21v":
        width = config.unet_config["model_channels"] * config.unet_config["channel_mult"][0]
        detect_from[_V_PRED_MARKER_KEY] = _v_marker_for((width,), seed)
    model = config.get_model(detect_from, "")
    expected = comfy.model_base.ModelType.V_PREDICTION if family == "sd21v" else comfy.model_base.ModelType.EPS
    if model.model_type != expected:
        raise RuntimeError(f"ComfyUI built a {model.model_type.name} model for {family}, expected {expected.name}")

    diffusion_model = model.diffusion_model
    scale = {}
    if weight_scale is not None:
        scale = {name: float(weight_scale) for name in _attn2_projection_names(diffusion_model)}
    init_random_weights(diffusion_model, seed, "unet", std_scale=scale)
    if family == "sd21v":
        marker = diffusion_model.get_parameter(_V_PRED_MARKER_KEY)
        with torch.no_grad():
            marker.copy_(detect_from[_V_PRED_MARKER_KEY])
    # Checkpoint weights are loaded into modules that require grad, harmless under ComfyUI's
    # inference mode; frozen here so that callers outside it (tests) build no autograd graph.
    model.requires_grad_(False)
    check_finite(model, f"{family} UNet")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


# ---------------------------------------------------------------------------------------------
# DiT families (FLUX, SD3, PixArt, Wan, ...): ComfyUI's own model classes from a unet_config
# ---------------------------------------------------------------------------------------------

# family -> (comfy.supported_models class name, tiny unet_config). Tiny configs keep each family's
# real block types and joint/cross-attention structure at small widths; family adapters' tests and
# the runner's --random-weights build from here. Add a family by adding its entry.
_WAN_TINY = dict(image_model="wan2.1", patch_size=(1, 2, 2), in_dim=16, dim=32, ffn_dim=64, freq_dim=32, text_dim=24,
                 out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
                 eps=1e-6)    # the Wan 2.1 tiny layout (wan21_t2v), for the Wan variants
_COSMOS_TINY = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, out_channels=16,
                    patch_spatial=2, patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=2,
                    num_heads=4, crossattn_emb_channels=24, pos_emb_cls="rope3d", pos_emb_learnable=True,
                    pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=16,
                    extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
                    rope_t_extrapolation_ratio=1.0, extra_h_extrapolation_ratio=1.0, extra_w_extrapolation_ratio=1.0,
                    extra_t_extrapolation_ratio=1.0, rope_enable_fps_modulation=False)   # Cosmos Predict2 / Anima
DIT_FAMILIES = {
    # Qwen-Image: joint blocks with separate text weights; text RoPE ids start at half the image's token side.
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=3, attention_head_dim=16, num_attention_heads=4,
                                     joint_attention_dim=56, axes_dims_rope=(4, 6, 6))),
    # Lumina Image 2.0 (NextDiT): caption refiner, noise refiner, single-stream layers; GQA (4 heads, 2 kv heads).
    "lumina2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=36,
                                n_layers=3, n_refiner_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True,
                                axes_dims=[4, 6, 6], axes_lens=[300, 512, 512])),
    # Z-Image (NextDiT with Z-Image's modulation, time scale, RoPE theta and learned caption/image pad tokens): dim
    # 256 at least (its adaLN reads min(dim, 256) features of a 256-wide timestep embedding); pad multiple 8, not the
    # published 32, so the tests' prompts (20 and 27 tokens) pad to different lengths.
    "z_image": ("ZImage", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=40,
                               n_layers=3, n_refiner_layers=2, n_heads=16, n_kv_heads=16, qk_norm=True,
                               axes_dims=[4, 6, 6], axes_lens=[1536, 512, 512], rope_theta=256.0,
                               ffn_dim_multiplier=8.0 / 3.0, multiple_of=64, z_image_modulation=True,
                               time_scale=1000.0, pad_tokens_multiple=8)),
    # Z-Image pixel space: the same backbone on RGB 4x4 patches, a per-patch MLP decoder (dec_net) for final_layer.
    "z_image_pixel": ("ZImagePixelSpace", dict(image_model="zimage_pixel", patch_size=4, in_channels=3, dim=256,
                                               cap_feat_dim=40, n_layers=3, n_refiner_layers=2, n_heads=16,
                                               n_kv_heads=16, qk_norm=True, axes_dims=[4, 6, 6],
                                               axes_lens=[1536, 512, 512], rope_theta=256.0,
                                               ffn_dim_multiplier=8.0 / 3.0, multiple_of=64, z_image_modulation=True,
                                               time_scale=1000.0, pad_tokens_multiple=8, decoder_hidden_size=32,
                                               decoder_num_res_blocks=2, decoder_max_freqs=4,
                                               decoder_in_channels=48)),
    "flux": ("FluxSchnell", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32,
                                 context_in_dim=48, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
                                 depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
                                 qkv_bias=True, guidance_embed=False)),
    # Chroma: FLUX blocks without per-block modulation layers; distilled_guidance_layer (in_dim 64 = 16 + 16 + 32
    # embedding features, out_dim = hidden) gives every block's modulation. in_channels = 16 latent channels * 2 * 2.
    "chroma": ("Chroma", dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=48, hidden_size=64,
                              mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6],
                              theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32,
                              n_layers=2)),
    # Chroma Radiance: the same blocks in pixel space (3 channels, conv patch embedding, NeRF decoder head).
    "chroma_radiance": ("ChromaRadiance", dict(image_model="chroma_radiance", in_channels=3, out_channels=3,
                                               context_in_dim=48, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
                                               depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=4,
                                               qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=2,
                                               nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=2, nerf_max_freqs=4,
                                               nerf_tile_size=0, nerf_final_head_type="linear",
                                               nerf_embedder_dtype=None)),
    # HunyuanVideo: FLUX blocks with [video; text] order, token-refiner text embedding, 3D patches (1, 2, 2),
    # guidance embedding, pooled CLIP-L (vec_in_dim) in vec.
    "hunyuan_video": ("HunyuanVideo", dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
                                           context_in_dim=48, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
                                           depth_single_blocks=2, axes_dim=[4, 6, 6], theta=256,
                                           patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False,
                                           meanflow=False)),
    # HunyuanVideo 1.5 (step-distilled-like): the same class with double blocks only, 3D patches (1, 1, 1), no
    # pooled vector, ByT5 glyph tokens (byt5_in: 1472 wide), SigLIP-like vision tokens (vision_in_dim, 1152 real),
    # the condition-type embedding and MeanFlow (time_r_in, summed). in_channels = 32 latent + 32 image + 1 mask.
    "hunyuan_video15": ("HunyuanVideo15", dict(image_model="hunyuan_video", in_channels=65, out_channels=32,
                                               vec_in_dim=None, context_in_dim=48, hidden_size=64, mlp_ratio=4.0,
                                               num_heads=4, depth=2, depth_single_blocks=0, axes_dim=[4, 6, 6],
                                               theta=256, patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False,
                                               byt5=True, meanflow=True, use_cond_type_embedding=True,
                                               vision_in_dim=24, meanflow_sum=True)),
    # HunyuanImage 2.1 (distilled-like): the same class with 2D patches (1, 1) on 64 latent channels, ByT5 glyph
    # tokens after the text, guidance embedding and MeanFlow (time_r_in, averaged), no pooled vector. (ComfyUI 0.3.6x
    # has it too, without the parameters 1.5 added: detected_config fills them in where they exist.)
    "hunyuan_image21": ("HunyuanImage21", dict(image_model="hunyuan_video", in_channels=64, out_channels=64,
                                               vec_in_dim=None, context_in_dim=48, hidden_size=64, mlp_ratio=4.0,
                                               num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[8, 8],
                                               theta=256, patch_size=[1, 1], qkv_bias=True, guidance_embed=True,
                                               byt5=True, meanflow=True)),
    # HunyuanVideo 1.5 super-resolution: the 1.5 layout on 98 input channels (32 latent + 32 * 2 + 2 concatenated).
    "hunyuan_video15_sr": ("HunyuanVideo15_SR_Distilled", dict(
        image_model="hunyuan_video", in_channels=98, out_channels=32, vec_in_dim=None, context_in_dim=48,
        hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=0, axes_dim=[4, 6, 6], theta=256,
        patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False, byt5=True, meanflow=True,
        use_cond_type_embedding=True, vision_in_dim=24, meanflow_sum=True)),
    # HunyuanImage 2.1 refiner: 3D patches (1, 1, 1) on a one-frame latent of 64 channels + 64 concatenated, no
    # glyph mapper, no guidance embedding, no MeanFlow.
    "hunyuan_image21_refiner": ("HunyuanImage21Refiner", dict(
        image_model="hunyuan_video", in_channels=128, out_channels=64, vec_in_dim=None, context_in_dim=48,
        hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=256,
        patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False)),
    # SD3.5 Large-like: hidden = 64 * depth with depth heads (MMDiT's rule), RMS qk norm, last context block pre_only.
    "sd3": ("SD3", dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=32,
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": 48, "out_features": 128}},
                        qk_norm="rms", pos_embed_scaling_factor=None, x_block_self_attn_layers=[])),
    # SD3.5 Medium-like: also a second (image-only) self-attention in the x blocks of x_block_self_attn_layers.
    "sd35m": ("SD3", dict(in_channels=16, out_channels=16, patch_size=2, depth=3, input_size=None, adm_in_channels=32,
                          context_embedder_config={"target": "torch.nn.Linear",
                                                   "params": {"in_features": 48, "out_features": 192}},
                          qk_norm="rms", pos_embed_scaling_factor=None, x_block_self_attn_layers=[0, 1])),
    # PixArt-α: micro-conditioning (size, aspect ratio); PixArt-Σ: none. caption_channels = T5 width (4096 real).
    "pixart": ("PixArtAlpha", dict(image_model="pixart_alpha", in_channels=4, patch_size=2, hidden_size=48,
                                   num_heads=4, depth=3, caption_channels=40, micro_condition=True)),
    "pixart_sigma": ("PixArtSigma", dict(image_model="pixart_sigma", in_channels=4, patch_size=2, hidden_size=48,
                                         num_heads=4, depth=3, caption_channels=40, micro_condition=False)),
    # Wan 2.1 T2V-like (also the layout of each Wan 2.2 A14B expert): UMT5 text through text_embedding, a separate
    # cross-attention (q/k/v/o, RMS norm_q/norm_k) per block. Head width 16 keeps Wan's 3-axis RoPE split.
    "wan21_t2v": ("WAN21_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=32,
                                    ffn_dim=64, freq_dim=32, text_dim=24, out_dim=16, num_heads=2, num_layers=2,
                                    window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    # Wan 2.1 I2V-like: CLIP-vision tokens (img_emb, 1280 wide) before the text; the I2V cross-attention's k_img/v_img.
    "wan21_i2v": ("WAN21_I2V", dict(image_model="wan2.1", model_type="i2v", patch_size=(1, 2, 2), in_dim=36, dim=32,
                                    ffn_dim=64, freq_dim=32, text_dim=24, out_dim=16, num_heads=2, num_layers=2,
                                    window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    # Wan 2.2 TI2V 5B-like: 48 latent channels (Wan 2.2 VAE), T2V cross-attention.
    "wan22_t2v": ("WAN22_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=48, dim=32,
                                    ffn_dim=64, freq_dim=32, text_dim=24, out_dim=48, num_heads=2, num_layers=2,
                                    window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    # Wan variants on the Wan 2.1 tiny layout, with what ComfyUI's detection sets for each (model_type, in_dim, ...):
    # Fun Control (I2V, 48 input channels), FlowRVS (T2V as an image-to-image flow), VACE (2 vace blocks, control
    # frames 32 + mask 64 channels), Fun Camera 2.1 (I2V) / 2.2 (T2V) (camera adapter on 24 Plücker channels),
    # S2V (audio injector, frame packer), Animate (I2V, pose + face adapter), HuMo 1.7B (audio cross-attention).
    "wan21_fun_control": ("WAN21_FunControl2V", {**_WAN_TINY, "model_type": "i2v", "in_dim": 48}),
    "wan21_flowrvs": ("WAN21_FlowRVS", {**_WAN_TINY, "model_type": "flow_rvs"}),
    "wan21_vace": ("WAN21_Vace", {**_WAN_TINY, "model_type": "vace", "vace_layers": 2, "vace_in_dim": 96}),
    "wan21_camera": ("WAN21_Camera", {**_WAN_TINY, "model_type": "camera", "in_dim": 32,
                                      "in_dim_control_adapter": 24}),
    "wan22_camera": ("WAN22_Camera", {**_WAN_TINY, "model_type": "camera_2.2", "in_dim": 36,
                                      "in_dim_control_adapter": 24}),
    "wan22_s2v": ("WAN22_S2V", {**_WAN_TINY, "model_type": "s2v"}),
    "wan22_animate": ("WAN22_Animate", {**_WAN_TINY, "model_type": "animate", "in_dim": 36, "num_layers": 5}),
    "wan21_humo": ("WAN21_HuMo", {**_WAN_TINY, "model_type": "humo"}),
    # SCAIL / SCAIL-2 (I2V; video + 4 mask channels, reference frames before the video, pose tokens after it) and
    # WanDancer (I2V; music injector, a reference image's CLIP tokens).
    "wan21_scail": ("WAN21_SCAIL", {**_WAN_TINY, "model_type": "scail", "in_dim": 20}),
    "wan21_scail2": ("WAN21_SCAIL2", {**_WAN_TINY, "model_type": "scail2", "in_dim": 20}),
    "wan22_wandancer": ("WAN22_WanDancer", {**_WAN_TINY, "model_type": "wandancer", "in_dim": 36}),
    # The causal (autoregressive) Wan 2.1 T2V: WanModel's weights, KV-cached blocks (ComfyUI's detection reads
    # causal_ar from the checkpoint's metadata).
    "wan21_causal": ("WAN21_CausalAR_T2V", {**_WAN_TINY, "model_type": "t2v", "causal_ar": True}),
    # Wan Animate 2 (I2V; a pose branch through the same blocks, frame 0 the reference image's slot).
    "wan_animate2": ("WAN_Animate2", {**_WAN_TINY, "model_type": "animate2", "in_dim": 36}),
    # Cosmos Predict2-like (MiniTrainDIT, as ComfyUI's detection writes its config): blocks with self-attention
    # (3D RoPE), text cross-attention (RMS q/k norms) and MLP, AdaLN-LoRA; T5 text (crossattn_emb_channels) as is.
    # Head width 16 (4 heads) keeps the RoPE's h/w/t split. I2V: 16 latent + 1 mask_inverted input channels.
    "cosmos_predict2_t2i": ("CosmosT2IPredict2", {**_COSMOS_TINY, "in_channels": 16}),
    "cosmos_predict2_i2v": ("CosmosI2VPredict2", {**_COSMOS_TINY, "in_channels": 17, "rope_h_extrapolation_ratio": 3.0,
                                                  "rope_w_extrapolation_ratio": 3.0}),
    # Anima-like: the same DiT; its LLM adapter (Qwen3 hidden states + T5 ids -> context) has ComfyUI's fixed
    # published size (1024 wide, 6 blocks), so the context is 1024 wide.
    "anima": ("Anima", {**_COSMOS_TINY, "image_model": "anima", "in_channels": 16, "crossattn_emb_channels": 1024}),
    # LTX-Video-like: 128 latent channels, T5 text through caption_projection, an attn2 cross-attention per block.
    "ltxv": ("LTXV", dict(image_model="ltxv", in_channels=128, cross_attention_dim=32, attention_head_dim=16,
                          num_attention_heads=2, caption_channels=72, num_layers=2)),
    # LTX-2-like (audio + video): Gemma features (caption_channels) through the video's and the audio's connector
    # (2 heads x 16 = caption_channels, one layer), then caption_projection (video 32 wide) and
    # audio_caption_projection (audio 16 wide: 2 heads x 8, unlike the video's so no call of one stream looks
    # like the other's); an attn2 and an audio_attn2 per block.
    "ltx2": ("LTXAV", dict(image_model="ltxav", in_channels=128, audio_in_channels=128, cross_attention_dim=32,
                           attention_head_dim=16, num_attention_heads=2, audio_cross_attention_dim=16,
                           audio_attention_head_dim=8, audio_num_attention_heads=2, caption_channels=32,
                           connector_attention_head_dim=16, connector_num_attention_heads=2, connector_num_layers=1,
                           num_layers=2)),
    # HiDream-I1-like: T5 (caption_channels[0]) and 3 Llama layers' states (caption_channels[1] wide) through one
    # caption projection per block, 2 double + 2 single blocks (the last Llama layer repeated, as published),
    # MoE feed-forwards (4 routed experts, top 2), pooled CLIP (text_emb_dim). Head width = sum(axes_dims_rope).
    "hidream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
                                caption_channels=[48, 40], text_emb_dim=32, num_routed_experts=4,
                                num_activated_experts=2, axes_dims_rope=[8, 4, 4], max_resolution=[128, 128],
                                llama_layers=[0, 1, 2, 2])),
    # The same with dense SwiGLU feed-forwards (num_routed_experts 0, which the class also builds): ComfyUI's MoE
    # routes the tokens of all rows of a batch through each expert together, so a row's output depends on the other
    # rows' routing at float rounding level even without NASA; the dense model's rows are independent, bit for bit.
    "hidream_dense": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16,
                                      num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
                                      caption_channels=[48, 40], text_emb_dim=32, num_routed_experts=0,
                                      num_activated_experts=2, axes_dims_rope=[8, 4, 4], max_resolution=[128, 128],
                                      llama_layers=[0, 1, 2, 2])),
    # Kandinsky 5 Video Lite-like: Qwen2.5-VL text (in_text_dim) through text_embeddings and 2 time-modulated text
    # blocks, pooled CLIP-L (in_text_dim2) in time_embed, visual blocks with self- and text cross-attention. Head
    # width = sum(axes_dims) = 16 (4 heads); visual_embed_dim = (16 latent + 16 image + 1 mask channels) * 1*2*2.
    "kandinsky5": ("Kandinsky5", dict(image_model="kandinsky5", in_text_dim=48, in_text_dim2=40, time_dim=32,
                                      model_dim=64, ff_dim=128, visual_embed_dim=132, patch_size=(1, 2, 2),
                                      num_text_blocks=2, num_visual_blocks=2, axes_dims=(4, 6, 6))),
    # Kandinsky 5 Image Lite-like: 16 latent channels (Flux latents), no concatenated image, RoPE scale 1.
    "kandinsky5_image": ("Kandinsky5Image", dict(image_model="kandinsky5", in_text_dim=48, in_text_dim2=40,
                                                 time_dim=32, model_dim=64, ff_dim=128, visual_embed_dim=64,
                                                 patch_size=(1, 2, 2), num_text_blocks=2, num_visual_blocks=2,
                                                 axes_dims=(4, 6, 6), rope_scale_factor=(1.0, 1.0, 1.0))),
    # FLUX.2 dev-like (ComfyUI's detection of a FLUX.2 checkpoint at small width): 128 latent channels, patch 1,
    # 4-axis RoPE with text positions on axis 3, global modulation (no per-block modulation layers), gated SiLU
    # MLPs without biases, guidance embedding, no pooled vector, references at index 10, 20, ...
    "flux2": ("Flux2", dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=48,
                            hidden_size=64, mlp_ratio=3.0, num_heads=4, depth=2, depth_single_blocks=2,
                            axes_dim=[4, 4, 4, 4], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                            global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                            ref_index_scale=10.0, txt_ids_dims=[3])),
    # FLUX.2 Klein-like: the same classes without guidance embedding (step-distilled), another depth and text width
    # (Qwen3's 3 stacked layers).
    "klein": ("Flux2", dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=36,
                            hidden_size=64, mlp_ratio=3.0, num_heads=4, depth=1, depth_single_blocks=3,
                            axes_dim=[4, 4, 4, 4], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=False,
                            global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                            ref_index_scale=10.0, txt_ids_dims=[3])),
    # LongCat-Image: FLUX.1's blocks without pooled vector or guidance embedding; text ids (0, i, i).
    "longcat_image": ("LongCatImage", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=None,
                                           context_in_dim=48, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
                                           depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
                                           qkv_bias=True, guidance_embed=False, txt_ids_dims=[1, 2])),
}

# FLUX.1 at its published width (hidden 3072, 24 heads, T5 4096, CLIP-L pooled 768) with few blocks.
FLUX_FULL_WIDTH = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                       hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1,
                       axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)


# What ComfyUI's own checkpoint detection (comfy/model_detection.py) writes into the config of the checkpoints the
# tiny models imitate (FLUX.1, Chroma, Chroma Radiance, HunyuanVideo 1.0), for parameters that newer ComfyUI versions
# added to the model's params dataclass without a default: image_model -> (module, dataclass, values).
DETECTED_PARAMS = {
    "flux": ("comfy.ldm.flux.model", "FluxParams", {"txt_ids_dims": [], "yak_mlp": False, "txt_norm": False}),
    "chroma": ("comfy.ldm.chroma.model", "ChromaParams", {"txt_ids_dims": [], "vec_in_dim": None}),
    "chroma_radiance": ("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams",
                        {"txt_ids_dims": [], "vec_in_dim": None, "use_x0": False, "use_sequential_txt_ids": False}),
    "hunyuan_video": ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams",
                      {"use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}),
}


def detected_config(config: dict) -> dict:
    """``config`` completed as the running ComfyUI's detection completes a real checkpoint's: the
    :data:`DETECTED_PARAMS` values of its image_model that this version's params dataclass declares and
    ``config`` does not set (one table serves every ComfyUI version)."""
    import dataclasses
    import importlib
    entry = DETECTED_PARAMS.get(config.get("image_model"))
    if entry is None:
        return dict(config)
    module, name, values = entry
    declared = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    return {**{k: v for k, v in values.items() if k in declared}, **config}


def build_diffusion_model(config_class: str, config: dict, dtype: torch.dtype = torch.float32, seed: int = 0,
                          std_scale: Optional[dict] = None, scope: str = "dit"):
    """A ComfyUI ModelPatcher around ``comfy.supported_models.<config_class>(config)``'s model with
    random weights (see :func:`init_random_weights`), inference dtype set as ComfyUI's loader sets it."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm
    if dtype not in _BUILD_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {_BUILD_DTYPES}")
    model_config = getattr(sm, config_class)(detected_config(config))
    manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    init_random_weights(model.diffusion_model, seed, scope, std_scale=std_scale)
    model.requires_grad_(False)  # see build_unet_model
    check_finite(model, f"{config_class} diffusion model")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_dit_model(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    """The tiny random-weight model of a DiT family in :data:`DIT_FAMILIES`; ``overrides`` change
    unet_config keys (e.g. ``depth=3``)."""
    if family not in DIT_FAMILIES:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {tuple(DIT_FAMILIES)}")
    config_class, config = DIT_FAMILIES[family]
    return build_diffusion_model(config_class, {**config, **overrides}, dtype, seed, scope=f"dit_{family}")


def build_clip(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ComfyUI CLIP (text encoder + real tokenizer) with random weights. Its output width is the
    context_dim of :func:`build_unet_model` for the same family and size."""
    import comfy.sd
    _check(family, size, dtype)
    target = _model_config_class(family)(unet_config(family, size)).clip_target()
    options = {"dtype": dtype}
    for name, overrides in text_encoder_configs(family, size).items():
        if overrides:
            options[f"{name}_model_config"] = dict(overrides)
    # Build on the CPU; ComfyUI moves the encoder to its load device when it encodes.
    options["initial_device"] = torch.device("cpu")
    clip = comfy.sd.CLIP(target=target, model_options=options)
    # SDClipModel's logit_scale is constructed with its real value (ln 100), not left empty.
    init_random_weights(clip.cond_stage_model, seed, f"clip_{_base_family(family)}",
                        keep=lambda name: name.endswith("logit_scale"))
    check_finite(clip.cond_stage_model, f"{family} text encoder")
    return clip


def build_vae(size: str = "tiny", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ComfyUI VAE (AutoencoderKL, 4 latent channels, 8x scale) with random weights.

    "full" has the SD/SDXL VAE's layout (ch 128, ch_mult 1,2,4,4); "tiny" ch 32, ch_mult 1,1,2,2.
    """
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    _check(None, size, dtype)
    params = {"ddconfig": {**_VAE_DDCONFIG, **_VAE_SIZE[size]}, "embed_dim": 4}
    # comfy.sd.VAE builds the autoencoder from `config` and loads its weights from `sd`; draw
    # those on a scratch copy so that the VAE loads a complete state dict.
    scratch = AutoencoderKL(**params)
    init_random_weights(scratch, seed, "vae")
    state_dict = {k: v.to(dtype) for k, v in scratch.state_dict().items()}
    del scratch
    vae = comfy.sd.VAE(sd=state_dict, config={"params": params}, dtype=dtype)
    vae.first_stage_model.requires_grad_(False)  # see build_unet_model
    check_finite(vae.first_stage_model, "VAE")
    return vae


def build_checkpoint(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32, seed: int = 0):
    """``(model, clip, vae)`` as ComfyUI's CheckpointLoaderSimple returns them, with random weights."""
    return (build_unet_model(family, size, dtype, seed), build_clip(family, size, dtype, seed),
            build_vae(size, dtype, seed))


def count_attn2_layers(model_patcher) -> int:
    """How many BasicTransformerBlock.attn2 modules of the diffusion model do cross-attention.

    Accepts a ModelPatcher, a ComfyUI BaseModel or the diffusion model itself.
    """
    from comfy.ldm.modules.attention import BasicTransformerBlock
    model = getattr(model_patcher, "model", model_patcher)
    diffusion_model = getattr(model, "diffusion_model", model)
    return sum(1 for m in diffusion_model.modules() if _is_cross_attention_block(m, BasicTransformerBlock))


def parameter_count(module) -> int:
    """Number of parameters of a module, ModelPatcher, CLIP or VAE."""
    for attr in ("model", "cond_stage_model", "first_stage_model"):
        if hasattr(module, attr) and isinstance(getattr(module, attr), torch.nn.Module):
            module = getattr(module, attr)
            break
    return sum(p.numel() for p in module.parameters())


def check_finite(module: torch.nn.Module, what: str) -> None:
    """Every buffer is finite (parameters are finite by construction: all of them are written)."""
    for name, tensor in module.named_buffers():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"{what}: {name} is not finite after random initialisation")


# ---------------------------------------------------------------------------------------------
# The smoke-test node
# ---------------------------------------------------------------------------------------------

_NODE_CACHE: dict = {}
_NODE_CACHE_LOCK = threading.Lock()
_NODE_CLASS = None


def cached_checkpoint(family: str, size: str = "tiny", seed: int = 0, dtype: str = "float32"):
    """:func:`build_checkpoint`, built once per (family, size, seed, dtype name) in this process."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    key = (family, size, int(seed), dtype)
    with _NODE_CACHE_LOCK:
        if key not in _NODE_CACHE:
            _NODE_CACHE[key] = build_checkpoint(family, size, DTYPES[dtype], int(seed))
        return _NODE_CACHE[key]


def random_checkpoint_node_class():
    """The V3 node ``NASA_RandomWeightCheckpoint``: a drop-in for CheckpointLoaderSimple that
    outputs random-weight models. Not part of the pack's node list; the headless runner registers
    it in ``--random-weights`` mode only. Imports ComfyUI's node API on first call."""
    global _NODE_CLASS
    if _NODE_CLASS is not None:
        return _NODE_CLASS
    from comfy_api.latest import io

    class RandomWeightCheckpoint(io.ComfyNode):
        """Random-weight MODEL, CLIP and VAE of a Stable Diffusion family, for smoke tests."""

        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=RANDOM_CHECKPOINT_NODE_ID,
                display_name="Random-Weight Checkpoint (NASA smoke test)",
                category="loaders/nasa",
                description=("Stands in for Load Checkpoint in smoke tests: ComfyUI's own SD1.5, SD2.1 or "
                             "SDXL model classes with seeded random weights, so a workflow runs end to end "
                             "without a checkpoint file. Images are noise-like; only the plumbing is real."),
                inputs=[
                    io.Combo.Input("family", options=list(FAMILIES), default="sd15",
                                   tooltip="Model family: sd15 = SD1.5, sd21 = SD2.1 512-base (eps), "
                                           "sd21v = SD2.1 768-v (v-prediction), sdxl = SDXL base."),
                    io.Combo.Input("size", options=list(SIZES), default="tiny",
                                   tooltip="tiny: the family's real block structure with narrow layers "
                                           "(fast on a CPU). full: the published model sizes (benchmarks)."),
                    io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1,
                                 tooltip="Seed of the random weights; the same seed gives the same models."),
                    io.Combo.Input("dtype", options=list(DTYPES), default="float32",
                                   tooltip="Weight dtype of the diffusion model, text encoder and VAE."),
                ],
                outputs=[
                    io.Model.Output(tooltip="The diffusion model (random weights), as Load Checkpoint gives it."),
                    io.Clip.Output(tooltip="The text encoder with the real CLIP tokenizer (random weights)."),
                    io.Vae.Output(tooltip="A VAE with 4 latent channels and 8x upscaling (random weights)."),
                ],
            )

        @classmethod
        def execute(cls, family, size="tiny", seed=0, dtype="float32") -> io.NodeOutput:
            return io.NodeOutput(*cached_checkpoint(family, size, seed, dtype))

    _NODE_CLASS = RandomWeightCheckpoint
    return _NODE_CLASS
