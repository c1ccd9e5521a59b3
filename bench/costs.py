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

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..adapters import apply_nasa, find_adapter, nasa_flops
from ..adapters.run import RUN_KEY, NasaRun, negative_prompt
from ..runner.random_weights.models import FLUX_FULL_WIDTH
from .meta_moe import balanced_moe

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
    negative_options: Callable[[torch.dtype], dict] = field(default=lambda dtype: {})   # the negative's conditioning
    # options, where the model embeds them with its text (HiDream's Llama 3 features)
    meta_patches: Optional[Callable] = None   # meta_patches(model_patcher): equal-FLOPs stand-ins for code the meta
    # device cannot run (HiDream's MoE routing: bench/meta_moe.py)
    flop_latent: Optional[tuple] = None       # the latent as the family's flop_layers reads it, where the model
    # input packs several streams into ``latent`` (LTX-2: the video's (C, F, H, W) and the audio's latent frames)
    neg_width: Optional[int] = None           # the negative's width where the positive's ``context`` is handed as
    # extra_conds already processed it (LTX-2: its connectors' output) and the negative is the text encoder's


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
# Z-Image / Z-Image Turbo 6B as comfy/model_detection.py reads its checkpoint (Qwen3-4B text: 2560 wide)
_Z_IMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30,
                n_refiner_layers=2, n_heads=30, n_kv_heads=30, qk_norm=True, axes_dims=[32, 48, 48],
                axes_lens=[1536, 512, 512], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True,
                time_scale=1000.0, pad_tokens_multiple=32)
# Cosmos Predict2 2B text-to-image as comfy/model_detection.py reads its checkpoint; Anima 2B the same DiT (its LLM
# adapter has ComfyUI's fixed size: Qwen3 0.6B 1024 wide, T5 ids)
_COSMOS_PREDICT2_2B = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128,
                           in_channels=16, out_channels=16, patch_spatial=2, patch_temporal=1, concat_padding_mask=True,
                           model_channels=2048, num_blocks=28, num_heads=16, crossattn_emb_channels=1024,
                           pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1,
                           max_fps=30, use_adaln_lora=True, adaln_lora_dim=256, extra_per_block_abs_pos_emb=False,
                           rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
                           rope_t_extrapolation_ratio=1.0, extra_h_extrapolation_ratio=1.0,
                           extra_w_extrapolation_ratio=1.0, extra_t_extrapolation_ratio=1.0,
                           rope_enable_fps_modulation=False)
_ANIMA_2B = dict(_COSMOS_PREDICT2_2B, image_model="anima")
_LTXV_2B = dict(image_model="ltxv", in_channels=128, cross_attention_dim=2048, attention_head_dim=64,
                num_attention_heads=32, caption_channels=4096, num_layers=28)
# LTX-2 19B: ComfyUI's LTXAVModel defaults are its published config (48 blocks, video 32 x 128, audio 32 x 64, Gemma 3
# 12B features 3840 wide through two 2-layer connectors); 1280x720 (ComfyUI's latent: 40 x 22) x 121 frames at 25 fps,
# 4.84 s of audio = 121 audio latents (8 channels x 16 bins), packed into one input as ComfyUI's sampler packs them.
_LTX2_19B = dict(image_model="ltxav", in_channels=128, audio_in_channels=128, cross_attention_dim=4096,
                 audio_cross_attention_dim=2048, attention_head_dim=128, audio_attention_head_dim=64,
                 num_attention_heads=32, audio_num_attention_heads=32, caption_channels=3840, num_layers=48)
_LTX2_VIDEO, _LTX2_AUDIO = (1, 128, 16, 22, 40), (1, 8, 121, 16)
# HiDream-I1 Full/Dev/Fast 17B as comfy/model_detection.py reads its checkpoint (T5-XXL and Llama 3.1 8B, 32 layers)
_HIDREAM_I1 = dict(image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32],
                   caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16,
                   llama_layers=list(range(32)) + [31] * 16, num_attention_heads=20, num_routed_experts=4,
                   num_activated_experts=2, num_layers=16, num_single_layers=32, out_channels=16, patch_size=2,
                   text_emb_dim=2048)
# Kandinsky 5.0 Video Lite 2B and Image Lite 6B as published (kandinsky-5 configs; comfy/model_detection.py reads the
# same): Qwen2.5-VL 3584 wide, pooled CLIP-L 768; the video model's input is 16 latent + 16 image + 1 mask channels
_KANDINSKY5_LITE = dict(image_model="kandinsky5", model_dim=1792, ff_dim=7168, time_dim=512, visual_embed_dim=132,
                        num_text_blocks=2, num_visual_blocks=32, axes_dims=(16, 24, 24))
_KANDINSKY5_IMAGE = dict(image_model="kandinsky5", model_dim=2560, ff_dim=10240, time_dim=512, visual_embed_dim=64,
                         num_text_blocks=2, num_visual_blocks=50, axes_dims=(32, 48, 48),
                         rope_scale_factor=(1.0, 1.0, 1.0))
_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=3072,
               mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
               patch_size=2, qkv_bias=True, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5)
# Chroma Radiance as comfy/model_detection.py reads its checkpoint: Chroma's blocks on 16x16 pixel patches (1024² =
# 64 x 64 tokens, as Chroma's latent patches) and the NeRF decoder head on each patch's pixels (use_x0, which newer
# versions read from the file, changes no FLOP: models.detected_config sets it where this ComfyUI has it)
_CHROMA_RADIANCE = dict(_CHROMA, image_model="chroma_radiance", in_channels=3, out_channels=3, patch_size=16,
                        nerf_hidden_size=64, nerf_mlp_ratio=4, nerf_depth=4, nerf_max_freqs=8, nerf_tile_size=512,
                        nerf_final_head_type="conv", nerf_embedder_dtype=torch.float32)
_HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768,
                      context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20,
                      depth_single_blocks=40, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                      guidance_embed=True, byt5=False, meanflow=False)
# HunyuanVideo 1.5 8.3B (480p / 720p T2V) as comfy/model_detection.py reads its checkpoint: 54 double blocks, no
# single block, 1x1x1 patches, Qwen2.5-VL 3584 wide, ByT5 glyph and SigLIP vision mappers, condition-type embedding;
# its input is 32 latent + 32 image + 1 mask channels
_HUNYUAN_VIDEO15 = dict(image_model="hunyuan_video", in_channels=65, out_channels=32, vec_in_dim=None,
                        context_in_dim=3584, hidden_size=2048, mlp_ratio=4.0, num_heads=16, depth=54,
                        depth_single_blocks=0, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 1, 1], qkv_bias=True,
                        guidance_embed=False, byt5=True, meanflow=False, use_cond_type_embedding=True,
                        vision_in_dim=1152, meanflow_sum=True)
# HunyuanImage 2.1 17B (base) the same way: 20 double + 40 single blocks, 2D 1x1 patches on 64 channels (32x VAE)
_HUNYUAN_IMAGE21 = dict(image_model="hunyuan_video", in_channels=64, out_channels=64, vec_in_dim=None,
                        context_in_dim=3584, hidden_size=3584, mlp_ratio=4.0, num_heads=28, depth=20,
                        depth_single_blocks=40, axes_dim=[64, 64], theta=256, patch_size=[1, 1], qkv_bias=True,
                        guidance_embed=False, byt5=True, meanflow=False)
# FLUX.2 dev 32B as comfy/model_detection.py reads its checkpoint (BFL's Flux2Params): 8 double + 48 single blocks,
# hidden 6144 (48 heads of 128), Mistral 3 features 3 x 5120, 128 latent channels at 1x1 patches (16x VAE);
# Klein 4B / 9B (Qwen3 4B / 8B, 3 layers) are the same classes smaller and without guidance embedding
_FLUX2_DEV = dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=15360,
                  hidden_size=6144, mlp_ratio=3.0, num_heads=48, depth=8, depth_single_blocks=48,
                  axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                  global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                  ref_index_scale=10.0, txt_ids_dims=[3])
_FLUX2_KLEIN_4B = dict(_FLUX2_DEV, context_in_dim=7680, hidden_size=3072, num_heads=24, depth=5, depth_single_blocks=20,
                       guidance_embed=False)
_FLUX2_KLEIN_9B = dict(_FLUX2_DEV, context_in_dim=12288, hidden_size=4096, num_heads=32, depth=8,
                       depth_single_blocks=24, guidance_embed=False)
# LongCat-Image 6B: FLUX.1's blocks (10 double + 20 single, hidden 3072), Qwen2.5-VL 3584 wide, text ids (0, i, i)
_LONGCAT_IMAGE = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=None, context_in_dim=3584,
                      hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=10, depth_single_blocks=20,
                      axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
                      txt_ids_dims=[1, 2])

CASES = [
    CostCase("SD1.5 / SD-Turbo-class UNet", "SD15", {"random_weights": "sd15"}, "512², 77 + 77 tokens", (4, 64, 64), (77, 768), 77),
    CostCase("SDXL / DMD2 / Turbo", "SDXL", {"random_weights": "sdxl"}, "1024², 77 + 77 tokens", (4, 128, 128), (77, 2048), 77,
             lambda dtype: {"y": meta_tensor(1, 2816, dtype=dtype)}),
    CostCase("FLUX.1 schnell/dev", "FluxSchnell", _FLUX, "1024², T5 256 + 256 tokens", (16, 128, 128), (256, 4096),
             256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype)}),
    CostCase("Chroma", "Chroma", _CHROMA, "1024², T5 256 + 256 tokens", (16, 128, 128), (256, 4096), 256,
             lambda dtype: {"guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("Chroma Radiance", "ChromaRadiance", _CHROMA_RADIANCE, "1024² (pixel space), T5 256 + 256 tokens",
             (3, 1024, 1024), (256, 4096), 256, lambda dtype: {"guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("SD3.5 Large / Turbo", "SD3", _SD35_LARGE, "1024², 154 + 154 tokens", (16, 128, 128), (154, 4096), 154,
             lambda dtype: {"y": meta_tensor(1, 2048, dtype=dtype)}),
    CostCase("PixArt-α 512", "PixArtAlpha", _PIXART_ALPHA_512, "512², T5 120 + 120 tokens", (4, 64, 64),
             (120, 4096), 120),
    CostCase("Wan 2.1 1.3B (CausVid)", "WAN21_T2V", _WAN21_1_3B, "832×480×81, umT5 512 + 512 tokens",
             (16, 21, 60, 104), (512, 4096), 512),
    CostCase("Wan 2.1 14B", "WAN21_T2V", _WAN21_14B, "832×480×81, umT5 512 + 512 tokens", (16, 21, 60, 104),
             (512, 4096), 512),
    # Wan 2.2 S2V 14B (ComfyUI's defaults are its published audio settings): audio features of 84 frames, a reference
    # frame and 19 motion latent frames (WanSoundImageToVideo's 73 pixel frames) beside the video
    CostCase("Wan 2.2 S2V 14B", "WAN22_S2V", dict(_WAN21_14B, model_type="s2v"),
             "832×480×81 + reference + 73 motion frames, audio, umT5 512 + 512 tokens", (16, 21, 60, 104),
             (512, 4096), 512, lambda dtype: {"audio_embed": meta_tensor(1, 25, 1024, 84, dtype=dtype),
                                              "reference_latent": meta_tensor(1, 16, 1, 60, 104, dtype=dtype),
                                              "reference_motion": meta_tensor(1, 16, 19, 60, 104, dtype=dtype)}),
    # Wan 2.2 Animate 14B: I2V (CLIP-vision 257 tokens, 20 channels by concatenation) with the pose video's latent
    # (the face video's motion encoder is left out: it adds to the plain forward only)
    CostCase("Wan 2.2 Animate 14B", "WAN22_Animate", dict(_WAN21_14B, model_type="animate", in_dim=36),
             "832×480×81, pose video, CLIP-vision 257 + umT5 512 + 512 tokens", (16, 21, 60, 104), (512, 4096), 512,
             lambda dtype: {"c_concat": meta_tensor(1, 20, 21, 60, 104, dtype=dtype),
                            "clip_fea": meta_tensor(1, 257, 1280, dtype=dtype),
                            "pose_latents": meta_tensor(1, 16, 20, 60, 104, dtype=dtype)}),
    # Wan 2.1 VACE 14B: 8 VACE blocks (one per 5 main blocks) on the control video's latents (16 inactive + 16 reactive
    # channels + the 8x8 mask's 64), as WanVaceToVideo makes them; they attend to the positive text only
    CostCase("Wan 2.1 VACE 14B", "WAN21_Vace", dict(_WAN21_14B, model_type="vace", vace_in_dim=96, vace_layers=8),
             "832×480×81 + control video, umT5 512 + 512 tokens", (16, 21, 60, 104), (512, 4096), 512,
             lambda dtype: {"vace_context": meta_tensor(1, 1, 96, 21, 60, 104, dtype=dtype), "vace_strength": [1.0]}),
    CostCase("Qwen-Image", "QwenImage", _QWEN_IMAGE, "1024², 128 + 128 tokens", (16, 1, 128, 128), (128, 3584), 128),
    CostCase("Lumina 2", "Lumina2", _LUMINA2, "1024², 256 + 256 tokens", (16, 128, 128), (256, 2304), 256,
             lambda dtype: {"num_tokens": 256}),
    CostCase("HunyuanVideo", "HunyuanVideo", _HUNYUAN_VIDEO, "848×480×61, 256 + 256 tokens", (16, 16, 60, 106),
             (256, 4096), 256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype), "guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("HunyuanVideo 1.5 480p", "HunyuanVideo15", _HUNYUAN_VIDEO15, "848×480×121, Qwen2.5-VL 256 + 256 tokens",
             (65, 31, 30, 53), (256, 3584), 256),
    CostCase("HunyuanVideo 1.5 720p", "HunyuanVideo15", _HUNYUAN_VIDEO15, "1280×720×121, Qwen2.5-VL 256 + 256 tokens",
             (65, 31, 45, 80), (256, 3584), 256),
    CostCase("HunyuanImage 2.1", "HunyuanImage21", _HUNYUAN_IMAGE21, "2048², Qwen2.5-VL 256 + 256 tokens",
             (64, 64, 64), (256, 3584), 256),
    CostCase("LTX-Video 2B", "LTXV", _LTXV_2B, "768×512×97, T5 128 + 128 tokens", (128, 13, 16, 24), (128, 4096), 128,
             lambda dtype: {"attention_mask": None}),
    # LTX-2: the positive as extra_conds hands it (connectors run: 1024 tokens, video + audio halves); the negative's
    # Gemma features (up to 1024 tokens; the connectors' registers pad shorter ones to 1024) go through the
    # connectors and projections in the forward, once per run
    CostCase("LTX-2 19B (audio + video)", "LTXAV", _LTX2_19B, "1280×720×121 + 4.8 s audio, Gemma 1024 + 1024 tokens",
             (1, math.prod(_LTX2_VIDEO[1:]) + math.prod(_LTX2_AUDIO[1:])), (1024, 7680), 1024,
             lambda dtype: {"attention_mask": None, "latent_shapes": [torch.Size(_LTX2_VIDEO), torch.Size(_LTX2_AUDIO)]},
             flop_latent=_LTX2_VIDEO[1:] + (_LTX2_AUDIO[2],), neg_width=3840),
    # HiDream-I1: T5 padded to 128 tokens, Llama 3.1 to 128 (127 after its start token), both on each prompt
    CostCase("HiDream-I1 Full/Dev/Fast 17B", "HiDream", _HIDREAM_I1, "1024², T5 128 + Llama 127 tokens per prompt",
             (16, 128, 128), (128, 4096), 128,
             lambda dtype: {"y": meta_tensor(1, 2048, dtype=dtype),
                            "encoder_hidden_states_llama3": meta_tensor(1, 32, 127, 4096, dtype=dtype)},
             negative_options=lambda dtype: {"conditioning_llama3": meta_tensor(1, 32, 127, 4096, dtype=dtype)},
             meta_patches=balanced_moe),
    CostCase("Kandinsky 5 Video Lite 2B", "Kandinsky5", _KANDINSKY5_LITE,
             "768×512×121 (5 s), Qwen2.5-VL 256 + 256 tokens", (33, 31, 64, 96), (256, 3584), 256,
             lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype)}),
    CostCase("Kandinsky 5 Image Lite 6B", "Kandinsky5Image", _KANDINSKY5_IMAGE, "1024², Qwen2.5-VL 256 + 256 tokens",
             (16, 128, 128), (256, 3584), 256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype)}),
    CostCase("Z-Image Turbo 6B", "ZImage", _Z_IMAGE, "1024², Qwen3 128 + 128 tokens", (16, 128, 128), (128, 2560), 128,
             lambda dtype: {"num_tokens": 128}),
    CostCase("Cosmos Predict2 2B", "CosmosT2IPredict2", _COSMOS_PREDICT2_2B, "1024², T5 512 + 512 tokens",
             (16, 1, 128, 128), (512, 1024), 512),
    # Anima: the positive's context is already adapted (extra_conds). The negative's pass through the LLM adapter
    # (once per run) is left out: ComfyUI's adapter cannot run on the meta device (see adapters/cosmos.flop_layers)
    CostCase("Anima 2B", "Anima", _ANIMA_2B, "1024², 512 + 512 context tokens (LLM adapter pass not counted)",
             (16, 1, 128, 128), (512, 1024), 512),
    # FLUX.2: ComfyUI pads every prompt to 512 tokens (model_base.Flux2.extra_conds), the negative too
    CostCase("FLUX.2 dev 32B", "Flux2", _FLUX2_DEV, "1024², Mistral 3 512 + 512 tokens (padded)", (128, 64, 64),
             (512, 15360), 512, lambda dtype: {"guidance": meta_tensor(1, dtype=dtype)}),
    CostCase("FLUX.2 Klein 4B", "Flux2", _FLUX2_KLEIN_4B, "1024², Qwen3 512 + 512 tokens", (128, 64, 64),
             (512, 7680), 512),
    CostCase("FLUX.2 Klein 9B", "Flux2", _FLUX2_KLEIN_9B, "1024², Qwen3 512 + 512 tokens", (128, 64, 64),
             (512, 12288), 512),
    CostCase("LongCat-Image 6B", "LongCatImage", _LONGCAT_IMAGE, "1024², Qwen2.5-VL 512 + 512 tokens", (16, 128, 128),
             (512, 3584), 512),
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
    model_patcher = comfy.model_patcher.ModelPatcher(model, load_device=META, offload_device=META)
    if case.meta_patches is not None:
        case.meta_patches(model_patcher)
    return model_patcher


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


def direct_options(nasa_model, negative: torch.Tensor, alpha: float, reuse_projections: bool = False,
                   negative_options: Optional[dict] = None, method=None) -> dict:
    """``transformer_options`` for calling a NASA clone's ``apply_model`` directly (no sampler): what the sampler
    puts there (comfy.samplers, comfy.sampler_helpers) plus a NasaRun steering one positive row with ``negative``
    (``reuse_projections``: as the sampler wrapper sets it for multi-step runs; ``negative_options``: its
    conditioning options; ``method``: nasa_core.Nag / Vsf, with ``alpha`` its strength)."""
    run = NasaRun(negative_prompt([(negative, negative_options or {})], alpha), {}, "nasa_direct",
                  layers=find_adapter(nasa_model).layers(nasa_model.model), reuse_projections=reuse_projections,
                  method=method)
    return {**nasa_model.model_options.get("transformer_options", {}), "cond_or_uncond": [0],
            "wrappers": nasa_model.wrappers, RUN_KEY: run}


def count(case: CostCase, alpha: float = 0.5, dtype=torch.bfloat16) -> CostRow:
    """FLOPs of one forward, plain and with NASA."""
    plain_model = meta_model(case, dtype)
    plain = _forward_flops(plain_model, case, {"cond_or_uncond": [0]}, dtype)
    nasa_model = apply_nasa(plain_model, negative=None, alpha=alpha, use_sampler_negative=True,
                                     node="nasa_cost")
    options = direct_options(nasa_model, meta_tensor(1, case.neg_tokens, case.neg_width or case.context[1],
                                                     dtype=dtype), alpha,
                             reuse_projections=True,     # as the sampler wrapper sets it for multi-step runs
                             negative_options=case.negative_options(dtype))
    counted = nasa_flops(plain_model, case.flop_latent or case.latent, case.neg_tokens)
    nasa = _forward_flops(nasa_model, case, options, dtype)  # the first step computes (and keeps) the projections
    reused = _forward_flops(nasa_model, case, options, dtype)
    return CostRow(case, plain, nasa, counted, reused,
                   nasa_flops(plain_model, case.flop_latent or case.latent, case.neg_tokens, reused=True))


def markdown(rows) -> str:
    lines = ["| model | setting | plain forward | NASA | NASA extra | from shapes (nasa_core.flops) | NASA extra, "
             "steps 2+ | CFG extra |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        counted = "—" if r.counted is None else f"+{r.counted / 1e9:,.1f} GFLOP ({100 * r.counted / r.plain:.2f}%)"
        later = "—" if r.nasa_reused is None else f"+{100 * (r.nasa_reused / r.plain - 1):.2f}%"
        lines.append(f"| {r.case.name} | {r.case.setting} | {r.plain / 1e12:.2f} TFLOP | {r.nasa / 1e12:.2f} TFLOP "
                     f"| +{100 * r.extra:.1f}% | {counted} | {later} | +100% |")
    return "\n".join(lines)


def unavailable(case: CostCase) -> Optional[str]:
    """Why the running ComfyUI cannot count ``case`` (its model class is missing, or NASA cannot steer that model
    on this version), or None."""
    import inspect
    import comfy.supported_models as sm
    if not hasattr(sm, case.config_class):
        return f"{case.config_class} is not in this ComfyUI"
    if case.config_class == "WAN22_S2V":       # older releases hand S2V's blocks no transformer_options
        from comfy.ldm.wan.model import WanModel_S2V
        if '"transformer_options": transformer_options}' not in inspect.getsource(WanModel_S2V.forward_orig):
            return "this ComfyUI's Wan S2V runs its blocks without transformer_options (NASA refuses it)"
    return None


def find_case(name: str) -> Optional[CostCase]:
    return next((c for c in CASES if c.config_class == name or c.name == name), None)
