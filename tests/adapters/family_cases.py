"""The model lines the adapter tests run on, declared once (imported as ``nasa_family_cases``; registered by
tests/adapters/conftest.py).

One :class:`Case` per model line a family test file tests: the tiny random-weight model as the family tests build it
(RMS norm weights drawn where the random builder leaves them at 0, so attention is not uniform), text-encoder outputs
of the family's width and options, the latent, the sampler's scheduler, and the layers NASA must steer, walked here on
ComfyUI's modules (not read from the adapter's ``block_groups``). tests/adapters/test_contract.py runs every generic
check over every case; the family files take their models, prompts and latents from here and keep only their
independent references and their family's quirks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import torch

import nasa_test_support as support


# ----------------------------------------------------------------------------- model preparation

def _sharpen(mp, seed):
    """RMSNorm weights around 1 (Chroma, Qwen-Image, Lumina 2, HunyuanVideo): queries and keys are not all zero."""
    support.sharpen_rms_norms(mp.model.diffusion_model)


def _qk_norms(mp, seed):
    """Random RMS qk-norm weights of SD3's ln_q/ln_k (ComfyUI's own RMSNorm class, which the builder zeroes)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, module in mp.model.diffusion_model.named_modules():
            if name.endswith((".ln_q", ".ln_k")) and getattr(module, "weight", None) is not None:
                module.weight.copy_((1.0 + 0.5 * torch.randn(module.weight.shape, generator=g)).to(module.weight.dtype))


def _rms_in_range(mp, seed):
    """RMSNorm weights in [0.5, 2) (Wan, LTX-Video): a softmax that is not trivial."""
    g = torch.Generator().manual_seed(100 + seed)
    for m in mp.model.diffusion_model.modules():
        if isinstance(m, torch.nn.RMSNorm):
            m.weight.copy_((0.5 + 1.5 * torch.rand(m.weight.shape, generator=g)).to(m.weight.dtype))


def _unet(rm, name, dtype, seed, overrides):
    return rm.build_unet_model(name, "tiny", dtype=dtype, seed=seed, **overrides)


def _dit(rm, name, dtype, seed, overrides):
    return rm.build_dit_model(name, dtype=dtype, seed=seed, **overrides)


# ----------------------------------------------------------------------------- text widths and options

def _config(rm, name):
    return rm.DIT_FAMILIES[name][1]


def _key(key):
    """The context width of a DiT config key."""
    return lambda rm, name: _config(rm, name)[key]


def _sd3_width(rm, name):
    return _config(rm, name)["context_embedder_config"]["params"]["in_features"]


def _unet_width(rm, name):
    return rm.unet_config(name)["context_dim"]


def _no_options(rm, name, g, n):
    return {}


def _no_pooled(rm, name, g, n):
    return {"pooled_output": None}          # Chroma's T5 gives none; SD1.x / SD2.x UNets read none


def _pooled(key):
    """A pooled CLIP output of the config's ``key`` width (FLUX, SD3, HunyuanVideo), drawn after the tokens."""
    return lambda rm, name, g, n: {"pooled_output": torch.randn(1, _config(rm, name)[key], generator=g)}


def _sdxl_pooled(rm, name, g, n):
    return {"pooled_output": torch.randn(1, rm.unet_config(name)["adm_in_channels"] - rm.SDXL_SIZE_EMBEDDINGS,
                                         generator=g)}


def _token_mask(valid):
    """An attention mask over the tokens as the family's encoder gives it (Lumina 2: Gemma; LTX-Video: padded T5)."""
    def options(rm, name, g, n):
        mask = torch.zeros(1, n, dtype=torch.long)
        mask[:, :valid(n)] = 1
        return {"attention_mask": mask}
    return options


def _clip_vision(rm, name, g):
    """Wan I2V: CLIP-vision tokens on both prompts, drawn after them."""
    return {"clip_vision_output": SimpleNamespace(penultimate_hidden_states=torch.randn(1, 5, 1280, generator=g))}


# ----------------------------------------------------------------------------- layers, walked here

def _indexed(**groups):
    """``{group: attribute}`` -> every (group, index) of the diffusion model's block lists."""
    return lambda dm: frozenset((group, i) for group, attr in groups.items() for i in range(len(getattr(dm, attr))))


def _unet_blocks(dm):
    """UNet block ids that hold a SpatialTransformer (one cross-attention call site each)."""
    from comfy.ldm.modules.attention import SpatialTransformer
    groups = (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks))
    return frozenset((name, i) for name, blocks in groups for i, block in enumerate(blocks)
                     if any(isinstance(m, SpatialTransformer) for m in block))


_DOUBLE_SINGLE = _indexed(double="double_blocks", single="single_blocks")


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    name: str
    """The test id and the random-weight builder's family name."""
    adapter: str
    """The pack's family module that must claim the model."""
    config_class: str
    """ComfyUI's comfy.supported_models class: a ComfyUI without it skips the case (support.skip_missing_family)."""
    shown: str
    """How NASA's errors name the model."""
    latent: tuple
    """Latent shape at batch 1."""
    pos_len: int
    neg_len: int
    """Token counts of the prompts: different, and not padded to each other by ComfyUI (cfg > 1 runs separate
    passes for cond and uncond: comfy.conds.CONDCrossAttn.can_concat), e.g. SD3 154 and 100 (not SD3's test file's
    231, which pads to 154). The family files' hook checks use the same counts."""
    width: Callable
    """``width(rm, name)``: the text width the model takes."""
    options: Callable
    """``options(rm, name, g, n)``: a prompt's conditioning options, drawn after its tokens."""
    layers: Callable
    """``layers(diffusion_model)``: every (group, index) layer NASA must steer."""
    build: Callable = _dit
    prepare: Optional[Callable] = None
    """``prepare(mp, seed)``: the family tests' fix of weights the random builder leaves degenerate."""
    shared: Optional[Callable] = None
    """``shared(rm, name, g)``: options both prompts carry, drawn after both."""
    cfgs: tuple = (3.0,)
    """The cfgs above one the family's tests sample at."""
    dtypes: tuple = (torch.float32,)
    """The dtypes the family's tests sample in (bfloat16 with a bfloat16 compute dtype)."""
    scheduler: str = "simple"
    batch_atol: float = 1e-5
    """Absolute tolerance of a batch-2 row against its batch-1 forward (rtol 1e-4); 1e-4 for the UNet, whose rows
    already differ by ~1e-5 (outputs ~2) between a batch of 2 and of 1 without NASA."""


def _unet_case(name, config_class, options):
    return Case(name, "adapters.unet", config_class, config_class, (1, 4, 8, 8), 77, 20, _unet_width, options,
                _unet_blocks, build=_unet, cfgs=(3.0, 4.0), scheduler="sgm_uniform", batch_atol=1e-4)


def _wan_case(name, config_class, latent, shared=None):
    return Case(name, "adapters.wan", config_class, f"Wan ({config_class})", latent, 16, 20, _key("text_dim"),
                _no_options, _indexed(blocks="blocks"), prepare=_rms_in_range, shared=shared, cfgs=(4.0,))


_CASES = [
    _unet_case("sd15", "SD15", _no_pooled),
    _unet_case("sd21v", "SD20", _no_pooled),
    _unet_case("sdxl", "SDXL", _sdxl_pooled),
    Case("flux", "adapters.flux", "FluxSchnell", "FLUX (FluxSchnell)", (1, 16, 8, 8), 256, 300,
         _key("context_in_dim"), _pooled("vec_in_dim"), _DOUBLE_SINGLE, dtypes=(torch.float32, torch.bfloat16)),
    Case("chroma", "adapters.chroma", "Chroma", "Chroma (Chroma)", (1, 16, 8, 8), 64, 80, _key("context_in_dim"),
         _no_pooled, _DOUBLE_SINGLE, prepare=_sharpen, dtypes=(torch.float32, torch.bfloat16)),
    Case("chroma_radiance", "adapters.chroma", "ChromaRadiance", "Chroma (ChromaRadiance)", (1, 3, 16, 16), 64, 80,
         _key("context_in_dim"), _no_pooled, _DOUBLE_SINGLE, prepare=_sharpen, dtypes=(torch.float32, torch.bfloat16)),
    Case("sd3", "adapters.sd3", "SD3", "SD3/SD3.5", (1, 16, 8, 8), 154, 100, _sd3_width, _pooled("adm_in_channels"),
         _indexed(joint="joint_blocks"), prepare=_qk_norms),
    Case("sd35m", "adapters.sd3", "SD3", "SD3/SD3.5", (1, 16, 8, 8), 154, 100, _sd3_width, _pooled("adm_in_channels"),
         _indexed(joint="joint_blocks"), prepare=_qk_norms, dtypes=(torch.float32, torch.bfloat16)),
    # PixArt: 34x34 latents, as its on-the-fly position embedding needs (H + W) / 2 >= 33
    Case("pixart", "adapters.pixart", "PixArtAlpha", "PixArt (PixArtAlpha)", (1, 4, 34, 34), 12, 7,
         _key("caption_channels"), _no_options, _indexed(blocks="blocks"), dtypes=(torch.float32, torch.bfloat16)),
    Case("pixart_sigma", "adapters.pixart", "PixArtSigma", "PixArt (PixArtSigma)", (1, 4, 34, 34), 12, 7,
         _key("caption_channels"), _no_options, _indexed(blocks="blocks")),
    Case("qwen_image", "adapters.qwen_image", "QwenImage", "Qwen-Image (QwenImage)", (1, 16, 1, 8, 12), 20, 27,
         _key("joint_attention_dim"), _no_options, _indexed(blocks="transformer_blocks"), prepare=_sharpen,
         dtypes=(torch.float32, torch.bfloat16)),
    Case("lumina2", "adapters.lumina2", "Lumina2", "Lumina 2 (Lumina2)", (1, 16, 8, 12), 20, 27, _key("cap_feat_dim"),
         _token_mask(lambda n: n), _indexed(layers="layers"), prepare=_sharpen, dtypes=(torch.float32, torch.bfloat16)),
    _wan_case("wan21_t2v", "WAN21_T2V", (1, 16, 2, 8, 8)),
    _wan_case("wan21_i2v", "WAN21_I2V", (1, 16, 2, 8, 8), shared=_clip_vision),
    _wan_case("wan22_t2v", "WAN22_T2V", (1, 48, 2, 8, 8)),
    Case("ltxv", "adapters.ltxv", "LTXV", "LTX-Video (LTXV)", (1, 128, 2, 4, 4), 16, 20, _key("caption_channels"),
         _token_mask(lambda n: 2 * n // 3 + 1), _indexed(blocks="transformer_blocks"), prepare=_rms_in_range,
         cfgs=(4.0,)),
    Case("hunyuan_video", "adapters.hunyuan_video", "HunyuanVideo", "HunyuanVideo (HunyuanVideo)", (1, 16, 2, 8, 8),
         24, 40, _key("context_in_dim"), _pooled("vec_in_dim"), _DOUBLE_SINGLE, prepare=_sharpen,
         dtypes=(torch.float32, torch.bfloat16)),
]
CASES = {case.name: case for case in _CASES}


# ----------------------------------------------------------------------------- what the tests take from here

_MODELS: dict = {}


def model(rm, name, dtype=torch.float32, seed=0, **overrides):
    """The case's random-weight ModelPatcher (``overrides``: config keys, or the UNet builder's weight_scale), built
    once per session; callers clone it before changing anything."""
    key = (name, dtype, seed, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        case = CASES[name]
        mp = case.build(rm, name, dtype, seed, overrides)
        if case.prepare is not None:
            case.prepare(mp, seed)
        _MODELS[key] = mp
    return _MODELS[key]


def width(rm, name) -> int:
    return CASES[name].width(rm, name)


def prompts(rm, name, lengths, width=None, seed=0) -> list:
    """Random text-encoder outputs, one conditioning per entry of ``lengths``, of the case's width (or ``width``)
    and options: each prompt's drawn after its tokens, the options all prompts share after all of them."""
    case = CASES[name]
    g = torch.Generator().manual_seed(seed)
    width = width or case.width(rm, name)
    out = []
    for n in lengths:
        tokens = torch.randn(1, n, width, generator=g)
        out.append([[tokens, case.options(rm, name, g, n)]])
    if case.shared is not None:
        shared = case.shared(rm, name, g)
        for c in out:
            c[0][1].update(shared)
    return out


def conds(rm, name, pos_len=None, neg_len=None, width=None, seed=0):
    """``(positive, negative)``: :func:`prompts` of the case's lengths (or ``pos_len``, ``neg_len``)."""
    case = CASES[name]
    return tuple(prompts(rm, name, (pos_len or case.pos_len, neg_len or case.neg_len), width, seed))


def latent(name, batch=1) -> torch.Tensor:
    return torch.zeros((batch,) + CASES[name].latent[1:])


def sample(mp, name, pos, neg, cfg=1.0, steps=1, batch=1, capture=None, **kwargs):
    """support.sample on the case's empty latent with the case's scheduler."""
    return support.sample(mp, latent(name, batch), pos, neg, cfg, steps, capture, CASES[name].scheduler, **kwargs)


def family_env(comfyui, name, **modules) -> dict:
    """What a family test file's ``env`` fixture holds for a DiT case: the random-weight builders (``rm``), the
    pack's ``nasa_run`` (adapters.run), ``model(dtype, **overrides)``, ``apply`` (Apply NASA Attention), the tiny
    ``config``, and ``modules`` (key -> pack module, e.g. ``lumina="adapters.lumina2"``)."""
    rm = comfyui.mod("runner.random_weights.models")
    return dict(rm=rm, nasa_run=comfyui.mod("adapters.run"), model=functools.partial(model, rm, name),
                apply=support.apply_nasa, config=rm.DIT_FAMILIES[name][1],
                **{key: comfyui.mod(module) for key, module in modules.items()})


def skip_if_missing(name) -> None:
    """Skip on a ComfyUI that lacks the case's model class (the one skip CI accepts)."""
    import comfy.supported_models
    case = CASES[name]
    if not hasattr(comfy.supported_models, case.config_class):
        support.skip_missing_family(name, case.config_class)
