"""NASA's extra FLOPs over the plain forward, counted on ComfyUI's own models at their published sizes, and
the same figure computed from the model's shapes by nasa_core.flops (each adapter's ``flop_layers``).

Each model is built on PyTorch's ``meta`` device (shapes only: no memory, no weights, seconds even
for 12B-parameter models) and one forward runs under ``torch.utils.flop_counter.FlopCounterMode``
twice: the plain model, then its NASA clone with one negative prompt. The counter sees every
matrix multiply, convolution and attention kernel the real code runs, so the figure is counted
from the shapes, not estimated. CFG, for comparison, runs a second full forward: +100%.

Used by ``scripts/nasa_cost.py`` (prints the table in docs/cost.md) and by the tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..adapters import apply_nasa, find_adapter, nasa_flops
from ..adapters.run import RUN_KEY, NasaRun, negative_prompt
from ..runner.random_weights.models import FLUX_FULL_WIDTH

META = torch.device("meta")


@dataclass
class CostCase:
    name: str                 # what the cost table calls the model
    config_class: str         # comfy.supported_models class
    unet_config: dict         # the published configuration, or {"random_weights": family} (the UNet families)
    setting: str              # resolution / frames / prompt lengths, as shown in the table
    latent: tuple             # latent shape of one sample
    context: tuple            # (tokens, width) of the positive prompt
    neg_tokens: int           # length of the negative prompt
    extra: Callable[[torch.dtype], dict] = field(default=lambda dtype: {})   # other model conds (pooled, ...)


def meta_tensor(*shape, dtype=torch.bfloat16):
    """An empty tensor of ``shape`` on the meta device (shapes only: FLOPs are counted, nothing computed)."""
    return torch.empty(*shape, device=META, dtype=dtype)


_FLUX = dict(FLUX_FULL_WIDTH, depth=19, depth_single_blocks=38)     # FLUX.1 as published

_SD35_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, input_size=None, num_patches=36864,
                   pos_embed_max_size=192, adm_in_channels=2048, qk_norm="rms", pos_embed_scaling_factor=None,
                   x_block_self_attn_layers=[],
                   context_embedder_config={"target": "torch.nn.Linear",
                                            "params": {"in_features": 4096, "out_features": 2432}})
_PIXART_ALPHA_512 = dict(image_model="pixart_alpha", input_size=64, patch_size=2, in_channels=4, hidden_size=1152,
                         depth=28, num_heads=16, caption_channels=4096, micro_condition=True, pe_interpolation=1.0)
_WAN21_1_3B = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=1536, ffn_dim=8960,
                   freq_dim=256, text_dim=4096, out_dim=16, num_heads=12, num_layers=30, window_size=(-1, -1),
                   qk_norm=True, cross_attn_norm=True, eps=1e-6)
_WAN21_14B = dict(_WAN21_1_3B, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
_QWEN_IMAGE = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=60,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))
_LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26,
                n_refiner_layers=2, n_heads=24, n_kv_heads=8, qk_norm=True, axes_dims=[32, 32, 32],
                axes_lens=[300, 512, 512])
_LTXV_2B = dict(image_model="ltxv", in_channels=128, cross_attention_dim=2048, attention_head_dim=64,
                num_attention_heads=32, caption_channels=4096, num_layers=28)
_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=3072,
               mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
               patch_size=2, qkv_bias=True, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5)
_HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768,
                      context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20,
                      depth_single_blocks=40, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                      guidance_embed=True, byt5=False, meanflow=False)

CASES = [
    CostCase("SD1.5 / SD-Turbo-class UNet", "SD15", {"random_weights": "sd15"}, "512², 77 + 77 tokens", (4, 64, 64), (77, 768), 77),
    CostCase("SDXL / DMD2 / Turbo", "SDXL", {"random_weights": "sdxl"}, "1024², 77 + 77 tokens", (4, 128, 128), (77, 2048), 77,
             lambda dtype: {"y": meta_tensor(1, 2816, dtype=dtype)}),
    CostCase("FLUX.1 schnell/dev", "FluxSchnell", _FLUX, "1024², T5 256 + 256 tokens", (16, 128, 128), (256, 4096),
             256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype)}),
    CostCase("Chroma", "Chroma", _CHROMA, "1024², T5 256 + 256 tokens", (16, 128, 128), (256, 4096), 256,
             lambda dtype: {"guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("SD3.5 Large / Turbo", "SD3", _SD35_LARGE, "1024², 154 + 154 tokens", (16, 128, 128), (154, 4096), 154,
             lambda dtype: {"y": meta_tensor(1, 2048, dtype=dtype)}),
    CostCase("PixArt-α 512", "PixArtAlpha", _PIXART_ALPHA_512, "512², T5 120 + 120 tokens", (4, 64, 64),
             (120, 4096), 120),
    CostCase("Wan 2.1 1.3B (CausVid)", "WAN21_T2V", _WAN21_1_3B, "832×480×81, umT5 512 + 512 tokens",
             (16, 21, 60, 104), (512, 4096), 512),
    CostCase("Wan 2.1 14B", "WAN21_T2V", _WAN21_14B, "832×480×81, umT5 512 + 512 tokens", (16, 21, 60, 104),
             (512, 4096), 512),
    CostCase("Qwen-Image", "QwenImage", _QWEN_IMAGE, "1024², 128 + 128 tokens", (16, 1, 128, 128), (128, 3584), 128),
    CostCase("Lumina 2", "Lumina2", _LUMINA2, "1024², 256 + 256 tokens", (16, 128, 128), (256, 2304), 256,
             lambda dtype: {"num_tokens": 256}),
    CostCase("HunyuanVideo", "HunyuanVideo", _HUNYUAN_VIDEO, "848×480×61, 256 + 256 tokens", (16, 16, 60, 106),
             (256, 4096), 256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype), "guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("LTX-Video 2B", "LTXV", _LTXV_2B, "768×512×97, T5 128 + 128 tokens", (128, 13, 16, 24), (128, 4096), 128,
             lambda dtype: {"attention_mask": None}),
]


@dataclass
class CostRow:
    case: CostCase
    plain: int
    nasa: int
    counted: Optional[int] = None     # NASA's extra FLOPs from the model's shapes (nasa_core.flops), if described
    nasa_reused: Optional[int] = None     # a later step of a multi-step run (the negative's projections reused)
    counted_reused: Optional[int] = None

    @property
    def extra(self) -> float:
        return self.nasa / self.plain - 1.0


class _MetaSampling(torch.nn.Module):
    """Stands in for the model's sigma <-> timestep conversion, which reads buffers a meta model has no
    data for. It does no matrix work, so the count is unchanged; the diffusion model itself runs as is."""

    def calculate_input(self, sigma, x):
        return x

    def timestep(self, sigma):
        return sigma

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output


def meta_model(case: CostCase, dtype):
    """The case's model at its published size on the meta device (shapes only), as a ModelPatcher."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    if "random_weights" in case.unet_config:
        from ..runner.random_weights.models import model_config
        config = model_config(case.unet_config["random_weights"], "full", dtype)
    else:
        from ..runner.random_weights.models import detected_config
        config = getattr(sm, case.config_class)(detected_config(case.unet_config))
        config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "", device=META)
    model.model_sampling = _MetaSampling()
    return comfy.model_patcher.ModelPatcher(model, load_device=META, offload_device=META)


def _forward_flops(model_patcher, case: CostCase, options: dict, dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    x = meta_tensor(1, *case.latent, dtype=dtype)
    context = meta_tensor(1, *case.context, dtype=dtype)
    model_patcher.patch_model(load_weights=False)     # object patches (PixArt) are applied here, as at sampling
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model_patcher.model.apply_model(x, meta_tensor(1, dtype=dtype), c_crossattn=context,
                                            transformer_options=options, **case.extra(dtype))
    finally:
        model_patcher.unpatch_model()
    return counter.get_total_flops()


def direct_options(nasa_model, negative: torch.Tensor, alpha: float, reuse_projections: bool = False) -> dict:
    """``transformer_options`` for calling a NASA clone's ``apply_model`` directly (no sampler): what the sampler
    puts there (comfy.samplers, comfy.sampler_helpers) plus a NasaRun steering one positive row with ``negative``
    (``reuse_projections``: as the sampler wrapper sets it for multi-step runs)."""
    run = NasaRun(negative_prompt([(negative, {})], alpha), {}, "nasa_direct",
                  layers=find_adapter(nasa_model).layers(nasa_model.model), reuse_projections=reuse_projections)
    return {**nasa_model.model_options.get("transformer_options", {}), "cond_or_uncond": [0],
            "wrappers": nasa_model.wrappers, RUN_KEY: run}


def count(case: CostCase, alpha: float = 0.5, dtype=torch.bfloat16) -> CostRow:
    """FLOPs of one forward, plain and with NASA."""
    plain_model = meta_model(case, dtype)
    plain = _forward_flops(plain_model, case, {"cond_or_uncond": [0]}, dtype)
    nasa_model = apply_nasa(plain_model, negative=None, alpha=alpha, use_sampler_negative=True,
                                     node="nasa_cost")
    options = direct_options(nasa_model, meta_tensor(1, case.neg_tokens, case.context[1], dtype=dtype), alpha,
                             reuse_projections=True)     # as the sampler wrapper sets it for multi-step runs
    counted = nasa_flops(plain_model, case.latent, case.neg_tokens)
    nasa = _forward_flops(nasa_model, case, options, dtype)  # the first step computes (and keeps) the projections
    reused = _forward_flops(nasa_model, case, options, dtype)
    return CostRow(case, plain, nasa, counted, reused,
                   nasa_flops(plain_model, case.latent, case.neg_tokens, reused=True))


def markdown(rows) -> str:
    lines = ["| model | setting | plain forward | NASA | NASA extra | from shapes (nasa_core.flops) | NASA extra, "
             "steps 2+ | CFG extra |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        counted = "—" if r.counted is None else f"+{r.counted / 1e9:,.1f} GFLOP ({100 * r.counted / r.plain:.2f}%)"
        later = "—" if r.nasa_reused is None else f"+{100 * (r.nasa_reused / r.plain - 1):.2f}%"
        lines.append(f"| {r.case.name} | {r.case.setting} | {r.plain / 1e12:.2f} TFLOP | {r.nasa / 1e12:.2f} TFLOP "
                     f"| +{100 * r.extra:.1f}% | {counted} | {later} | +100% |")
    return "\n".join(lines)


def find_case(name: str) -> Optional[CostCase]:
    return next((c for c in CASES if c.config_class == name or c.name == name), None)
