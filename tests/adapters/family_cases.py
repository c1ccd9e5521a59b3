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


def _sharpen_pads(mp, seed):
    """Z-Image: :func:`_sharpen`, and its learned caption/image pad tokens drawn N(0, 1) (the builder zeroes them)."""
    _sharpen(mp, seed)
    g = torch.Generator().manual_seed(7)
    dm = mp.model.diffusion_model
    with torch.no_grad():
        for token in (dm.cap_pad_token, dm.x_pad_token):
            token.copy_(torch.randn(token.shape, generator=g).to(token.dtype))


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


def _ltx2_options(rm, name, g, n):
    """LTX-2's text encoder hands its Gemma features unprocessed: the model's connectors run in extra_conds."""
    return {"unprocessed_ltxav_embeds": True}


def _token_mask(valid):
    """An attention mask over the tokens as the family's encoder gives it (Lumina 2: Gemma; LTX-Video: padded T5)."""
    def options(rm, name, g, n):
        mask = torch.zeros(1, n, dtype=torch.long)
        mask[:, :valid(n)] = 1
        return {"attention_mask": mask}
    return options


def _hidream_text(rm, name, g, n):
    """HiDream: a pooled CLIP-L + CLIP-G vector (text_emb_dim) and the Llama 3.1 layers' states
    (``conditioning_llama3``: (1, layers, tokens, width); as many layers as the config reads, a token count of
    the prompt's own), drawn after its T5 tokens."""
    config = _config(rm, name)
    return {"pooled_output": torch.randn(1, config["text_emb_dim"], generator=g),
            "conditioning_llama3": torch.randn(1, max(config["llama_layers"]) + 1, n // 2 + 3,
                                               config["caption_channels"][1], generator=g)}


def _t5_ids(rm, name, g, n):
    """Anima: the prompt's T5 token ids and weights (Anima's text encoder puts them in the conditioning's options),
    fewer than its Qwen3 tokens, drawn after them."""
    m = n // 2 + 3
    return {"t5xxl_ids": torch.randint(0, 32128, (m,), generator=g, dtype=torch.int32),
            "t5xxl_weights": 0.5 + torch.rand(m, generator=g)}


def _clip_vision(rm, name, g):
    """Wan I2V: CLIP-vision tokens on both prompts, drawn after them."""
    return {"clip_vision_output": SimpleNamespace(penultimate_hidden_states=torch.randn(1, 5, 1280, generator=g))}


def _byt5(rm, name, g, n):
    """HunyuanVideo 1.5 / HunyuanImage 2.1: ByT5 glyph tokens (1472 wide) of the prompt's quoted text, as the
    text encoder gives them (``conditioning_byt5small``), a few per prompt, drawn after its tokens; the Qwen2.5-VL
    encoder's pooled output is None (HunyuanVideo 1.5's model reads the key, as 1.0's does)."""
    return {"pooled_output": None, "conditioning_byt5small": torch.randn(1, n // 4 + 2, 1472, generator=g)}


def _siglip(rm, name, g):
    """HunyuanVideo 1.5 I2V: SigLIP-like vision tokens of the start image on both prompts (``last_hidden_state``,
    the config's vision width), drawn after them."""
    return {"clip_vision_output": SimpleNamespace(
        last_hidden_state=torch.randn(1, 5, _config(rm, name)["vision_in_dim"], generator=g))}


def _wan_extras(*names):
    """Wan variants' conditioning on both prompts (latent 2 frames of 8x8), drawn after them in this order: the
    variant's inputs as ComfyUI's nodes give them to ``extra_conds``."""
    def draw(g, key):
        if key in ("clip_vision_output", "clip_vision_output_ref"):    # WanDancer: also a reference image's
            return SimpleNamespace(penultimate_hidden_states=torch.randn(1, 5, 1280, generator=g))
        if key in ("driving_mask_28ch", "ref_mask_28ch"):   # SCAIL-2 identity masks (frames first): pose, ref+video
            return torch.rand(1, 1 if key == "driving_mask_28ch" else 3, 28, 8, 8, generator=g)
        if key in ("vace_frames", "vace_mask"):      # VACE: control frames (32 ch), mask (64 ch)
            return [torch.randn(1, 32, 2, 8, 8, generator=g) if key == "vace_frames"
                    else torch.rand(1, 64, 2, 8, 8, generator=g)]
        shapes = {"camera_conditions": (1, 24, 2, 64, 64),          # Plücker embedding at pixel size
                  "reference_latents": (1, 16, 1, 8, 8), "reference_motion": (1, 16, 3, 8, 8),
                  "control_video": (1, 16, 2, 8, 8), "pose_video_latent": (1, 16, 1, 8, 8),
                  "s2v_audio": (1, 25, 1024, 8), "humo_audio": (1, 2, 8, 5, 1280), "music": (1, 12, 35),
                  "pose_video_latent_2": (1, 16, 2, 8, 8)}
        t = torch.randn(*shapes[key], generator=g)
        return [t] if key == "reference_latents" else t

    def options(rm, name, g):
        out = {key: draw(g, key) for key in names}
        for key in ("s2v_audio", "humo_audio", "music"):    # audio features, as the S2V / HuMo / WanDancer nodes
            # give them
            if key in out:
                out["audio_embed"] = out.pop(key)
        if "pose_video_latent_2" in out:       # Animate 2: a pose frame for each frame after the reference slot
            out["pose_video_latent"] = out.pop("pose_video_latent_2")
        return out
    return options


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
    """Absolute tolerance of a batch-2 row against its batch-1 forward (rtol 1e-4); 1e-4 for the UNet and LTX-2,
    whose rows already differ by ~1e-5 (outputs ~2 and ~5) between a batch of 2 and of 1 without NASA."""
    requires: Optional[Callable] = None
    """``requires()``: what the case needs of ComfyUI beyond its config class, as ``(ok, what)``; a ComfyUI where
    ``ok`` is False skips the case by name (e.g. Wan S2V, whose blocks get no transformer_options in 0.3.64)."""
    audio: Optional[tuple] = None
    """Audio + video models (LTX-2): the audio latent's shape at batch 1; the case's latent is then ComfyUI's
    NestedTensor (video, audio), as LTXVConcatAVLatent builds it, and :func:`sample` returns it packed as the
    sampler packs it (one tensor)."""
    row_percents: tuple = (0.3, 0.6)
    """The sampling percents of the two rows of the contract's batch-2 check. LTX-2 samples both at one percent:
    ComfyUI's LTXAVModel couples the rows of a batch (its audio<->video gates take the timestep's maximum over the
    whole batch), so rows at different timesteps differ from their batch-1 forwards without NASA too."""
    embeds_text_in_conds: bool = False
    """ComfyUI's extra_conds runs the text through model layers (LTX-2's connectors): a negative of the wrong width
    fails there, in ComfyUI, before any sampler wrapper runs, with or without NASA (the contract checks both)."""


def _unet_case(name, config_class, options):
    return Case(name, "adapters.unet", config_class, config_class, (1, 4, 8, 8), 77, 20, _unet_width, options,
                _unet_blocks, build=_unet, cfgs=(3.0, 4.0), scheduler="sgm_uniform", batch_atol=1e-4)


def _wan_case(name, config_class, latent, shared=None, prepare=_rms_in_range, requires=None):
    return Case(name, "adapters.wan", config_class, f"Wan ({config_class})", latent, 16, 20, _key("text_dim"),
                _no_options, _indexed(blocks="blocks"), prepare=prepare, shared=shared, cfgs=(4.0,), requires=requires)


def _s2v_blocks_get_options():
    """Wan S2V's forward hands transformer_options to its blocks (block replace args included) - not in 0.3.64,
    where nothing reaches the blocks' attention calls (NASA raises there, see adapters/wan.py)."""
    import inspect
    from comfy.ldm.wan.model import WanModel_S2V
    return ('"transformer_options": transformer_options}' in inspect.getsource(WanModel_S2V.forward_orig),
            "WanModel_S2V's blocks getting transformer_options")


def _wan_s2v_weights(mp, seed):
    """Wan S2V: also the audio encoder's layer weights (silu'd and normalised by their sum: 0 from the builder gives
    NaN) and its padding tokens."""
    _rms_in_range(mp, seed)
    g = torch.Generator().manual_seed(200 + seed)
    enc = mp.model.diffusion_model.casual_audio_encoder
    for p in (enc.weights, enc.encoder.padding_tokens):
        p.copy_((0.5 + torch.rand(p.shape, generator=g)).to(p.dtype))


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
    # Z-Image: 3 x 5 = 15 image tokens (one image pad token at the tiny pad multiple 8), prompts padded to 24 and 32;
    # pixel space: 5 x 7 = 35 RGB patches of 4 x 4 (five pad tokens)
    Case("z_image", "adapters.z_image", "ZImage", "Z-Image (ZImage)", (1, 16, 6, 10), 20, 27, _key("cap_feat_dim"),
         _token_mask(lambda n: n), _indexed(layers="layers"), prepare=_sharpen_pads,
         dtypes=(torch.float32, torch.bfloat16)),
    Case("z_image_pixel", "adapters.z_image", "ZImagePixelSpace", "Z-Image (ZImagePixelSpace)", (1, 3, 20, 28), 20, 27,
         _key("cap_feat_dim"), _token_mask(lambda n: n), _indexed(layers="layers"), prepare=_sharpen_pads),
    _wan_case("wan21_t2v", "WAN21_T2V", (1, 16, 2, 8, 8)),
    _wan_case("wan21_i2v", "WAN21_I2V", (1, 16, 2, 8, 8), shared=_clip_vision),
    _wan_case("wan22_t2v", "WAN22_T2V", (1, 48, 2, 8, 8)),
    _wan_case("wan21_fun_control", "WAN21_FunControl2V", (1, 16, 2, 8, 8), shared=_clip_vision),
    _wan_case("wan21_flowrvs", "WAN21_FlowRVS", (1, 16, 2, 8, 8)),
    _wan_case("wan21_vace", "WAN21_Vace", (1, 16, 2, 8, 8), shared=_wan_extras("vace_frames", "vace_mask")),
    _wan_case("wan21_camera", "WAN21_Camera", (1, 16, 2, 8, 8),
              shared=_wan_extras("clip_vision_output", "camera_conditions")),
    _wan_case("wan22_camera", "WAN22_Camera", (1, 16, 2, 8, 8), shared=_wan_extras("camera_conditions")),
    _wan_case("wan22_s2v", "WAN22_S2V", (1, 16, 2, 8, 8),
              shared=_wan_extras("s2v_audio", "reference_latents", "reference_motion", "control_video"),
              prepare=_wan_s2v_weights, requires=_s2v_blocks_get_options),
    _wan_case("wan22_animate", "WAN22_Animate", (1, 16, 2, 8, 8),
              shared=_wan_extras("clip_vision_output", "pose_video_latent")),
    _wan_case("wan21_humo", "WAN21_HuMo", (1, 16, 2, 8, 8), shared=_wan_extras("humo_audio", "reference_latents")),
    _wan_case("wan21_scail", "WAN21_SCAIL", (1, 16, 2, 8, 8),
              shared=_wan_extras("clip_vision_output", "reference_latents", "pose_video_latent")),
    _wan_case("wan21_scail2", "WAN21_SCAIL2", (1, 16, 2, 8, 8),
              shared=_wan_extras("clip_vision_output", "reference_latents", "pose_video_latent", "driving_mask_28ch",
                                 "ref_mask_28ch")),
    _wan_case("wan22_wandancer", "WAN22_WanDancer", (1, 16, 2, 8, 8),
              shared=_wan_extras("clip_vision_output", "clip_vision_output_ref", "music")),
    _wan_case("wan21_causal", "WAN21_CausalAR_T2V", (1, 16, 2, 8, 8)),   # its AR sampler: test_wan_adapter.py
    _wan_case("wan_animate2", "WAN_Animate2", (1, 16, 3, 8, 8),          # pose: the frames after the reference slot
              shared=_wan_extras("clip_vision_output", "pose_video_latent_2")),
    # Cosmos Predict2 (T2I: one latent frame; I2V: three) and Anima (Qwen3 1024 wide + T5 ids, its LLM adapter)
    Case("cosmos_predict2_t2i", "adapters.cosmos", "CosmosT2IPredict2", "Cosmos Predict2 (CosmosT2IPredict2)",
         (1, 16, 1, 8, 8), 16, 20, _key("crossattn_emb_channels"), _no_options, _indexed(blocks="blocks"),
         prepare=_rms_in_range, dtypes=(torch.float32, torch.bfloat16)),
    Case("cosmos_predict2_i2v", "adapters.cosmos", "CosmosI2VPredict2", "Cosmos Predict2 (CosmosI2VPredict2)",
         (1, 16, 3, 8, 8), 16, 20, _key("crossattn_emb_channels"), _no_options, _indexed(blocks="blocks"),
         prepare=_rms_in_range, cfgs=(4.0,)),
    Case("anima", "adapters.cosmos", "Anima", "Anima (Anima)", (1, 16, 1, 8, 8), 16, 20, lambda rm, name: 1024,
         _t5_ids, _indexed(blocks="blocks"), prepare=_rms_in_range, dtypes=(torch.float32, torch.bfloat16)),
    Case("ltxv", "adapters.ltxv", "LTXV", "LTX-Video (LTXV)", (1, 128, 2, 4, 4), 16, 20, _key("caption_channels"),
         _token_mask(lambda n: 2 * n // 3 + 1), _indexed(blocks="transformer_blocks"), prepare=_rms_in_range,
         cfgs=(4.0,)),
    # LTX-2: a video latent (4 x 4 x 2 = 32 tokens) and an audio latent (8 channels x 5 frames x 16 bins: 5 tokens)
    # in one NestedTensor; the raw Gemma-like features, flagged as ComfyUI's LTXAV text encoder flags them
    # (the connectors' registers pad every prompt to at least 1024 tokens: a negative of 1100 makes its own pass)
    Case("ltx2", "adapters.ltx2", "LTXAV", "LTX-2 (LTXAV)", (1, 128, 2, 4, 4), 16, 1100, _key("caption_channels"),
         _ltx2_options, _indexed(video="transformer_blocks", audio="transformer_blocks"), prepare=_rms_in_range,
         cfgs=(4.0,), audio=(1, 8, 5, 16), row_percents=(0.3, 0.3), embeds_text_in_conds=True,
         batch_atol=1e-4),   # its rows differ by up to 3.5e-5 (outputs ~5) between a batch of 2 and of 1 without
                             # NASA on 2 CPU threads (1.4e-5 with it: over 1e-5), as the UNet's do
    # HiDream-I1: T5 tokens + pooled CLIP + Llama 3.1 layers' states per prompt (4 x 4 image tokens), on the dense
    # variant of the tiny model (DIT_FAMILIES "hidream_dense"). ComfyUI's MoE feed-forward (the published model's)
    # couples the rows of a batch at rounding level and graph-breaks torch.compile on its routing (nonzero) by
    # itself, at every call, so NASA's extra MoE calls on the stream add breaks; the bit-exact cfg > 1 check and the
    # compile check cannot hold there. test_hidream_adapter.py runs the MoE model ("hidream") against its reference
    # and the generic checks that do hold for it.
    Case("hidream_dense", "adapters.hidream", "HiDream", "HiDream-I1 (HiDream)", (1, 16, 8, 8), 24, 40,
         lambda rm, name: _config(rm, name)["caption_channels"][0], _hidream_text,
         _indexed(double="double_stream_blocks", single="single_stream_blocks"), prepare=_sharpen,
         dtypes=(torch.float32, torch.bfloat16)),
    # Kandinsky 5: Qwen2.5-VL tokens + pooled CLIP-L (in_text_dim2); video 2 frames of 4x4 tokens, image 4x4 tokens
    Case("kandinsky5", "adapters.kandinsky5", "Kandinsky5", "Kandinsky 5 (Kandinsky5)", (1, 16, 2, 8, 8), 16, 20,
         _key("in_text_dim"), _pooled("in_text_dim2"), _indexed(blocks="visual_transformer_blocks"),
         prepare=_rms_in_range, cfgs=(4.0,), dtypes=(torch.float32, torch.bfloat16)),
    Case("kandinsky5_image", "adapters.kandinsky5", "Kandinsky5Image", "Kandinsky 5 (Kandinsky5Image)", (1, 16, 8, 8),
         16, 20, _key("in_text_dim"), _pooled("in_text_dim2"), _indexed(blocks="visual_transformer_blocks"),
         prepare=_rms_in_range, dtypes=(torch.float32, torch.bfloat16)),
    Case("hunyuan_video", "adapters.hunyuan_video", "HunyuanVideo", "HunyuanVideo (HunyuanVideo)", (1, 16, 2, 8, 8),
         24, 40, _key("context_in_dim"), _pooled("vec_in_dim"), _DOUBLE_SINGLE, prepare=_sharpen,
         dtypes=(torch.float32, torch.bfloat16)),
    # HunyuanVideo 1.5 (double blocks only, 1x1x1 patches: 2 frames of 4x4 = 32 video tokens), glyph tokens per
    # prompt and vision tokens on both; HunyuanImage 2.1 (2D 1x1 patches: 6x6 = 36 image tokens), glyph tokens
    Case("hunyuan_video15", "adapters.hunyuan_video15", "HunyuanVideo15", "HunyuanVideo 1.5 (HunyuanVideo15)",
         (1, 32, 2, 4, 4), 24, 40, _key("context_in_dim"), _byt5, _DOUBLE_SINGLE, prepare=_sharpen, shared=_siglip,
         dtypes=(torch.float32, torch.bfloat16)),
    Case("hunyuan_image21", "adapters.hunyuan_image21", "HunyuanImage21", "HunyuanImage 2.1 (HunyuanImage21)",
         (1, 64, 6, 6), 24, 40, _key("context_in_dim"), _byt5, _DOUBLE_SINGLE, prepare=_sharpen,
         dtypes=(torch.float32, torch.bfloat16)),
    # HunyuanVideo 1.5 super-resolution (its own concatenated channels) and HunyuanImage 2.1's refiner (3D patches
    # on a one-frame latent, its base image concatenated)
    Case("hunyuan_video15_sr", "adapters.hunyuan_video15", "HunyuanVideo15_SR_Distilled",
         "HunyuanVideo 1.5 (HunyuanVideo15_SR_Distilled)", (1, 32, 2, 4, 4), 24, 40, _key("context_in_dim"), _byt5,
         _DOUBLE_SINGLE, prepare=_sharpen, shared=_siglip),
    Case("hunyuan_image21_refiner", "adapters.hunyuan_image21", "HunyuanImage21Refiner",
         "HunyuanImage 2.1 (HunyuanImage21Refiner)", (1, 64, 1, 4, 4), 24, 40, _key("context_in_dim"), _byt5,
         _DOUBLE_SINGLE, prepare=_sharpen),
    # FLUX.2: ComfyUI left-pads prompts to 512 tokens (model_base.Flux2.extra_conds): a short positive, a negative
    # past 512 (two prompts under 512 would be padded to each other); Klein: no guidance embedding
    Case("flux2", "adapters.flux2", "Flux2", "FLUX.2 (Flux2)", (1, 128, 8, 8), 20, 530, _key("context_in_dim"),
         _no_pooled, _DOUBLE_SINGLE, prepare=_sharpen, dtypes=(torch.float32, torch.bfloat16)),
    Case("klein", "adapters.flux2", "Flux2", "FLUX.2 (Flux2)", (1, 128, 8, 8), 520, 530, _key("context_in_dim"),
         _no_pooled, _DOUBLE_SINGLE, prepare=_sharpen),
    Case("longcat_image", "adapters.longcat_image", "LongCatImage", "LongCat-Image (LongCatImage)", (1, 16, 8, 8), 20,
         27, _key("context_in_dim"), _no_pooled, _DOUBLE_SINGLE, prepare=_sharpen,
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
    """The case's empty latent; an audio + video case's is ComfyUI's NestedTensor (video, audio)."""
    video = torch.zeros((batch,) + CASES[name].latent[1:])
    if CASES[name].audio is None:
        return video
    import comfy.nested_tensor
    return comfy.nested_tensor.NestedTensor((video, torch.zeros((batch,) + CASES[name].audio[1:])))


def model_input_shape(name, batch=1) -> tuple:
    """The shape of the latent as the sampler hands it to the model: the case's latent, or an audio + video
    case's streams packed into one (batch, 1, n) tensor (comfy.utils.pack_latents)."""
    return tuple(support.flat(latent(name, batch)).shape)


def sample(mp, name, pos, neg, cfg=1.0, steps=1, batch=1, capture=None, **kwargs):
    """support.sample on the case's empty latent with the case's scheduler (an audio + video result packed into
    one tensor, support.flat)."""
    return support.flat(support.sample(mp, latent(name, batch), pos, neg, cfg, steps, capture, CASES[name].scheduler,
                                       **kwargs))


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
    if case.requires is not None and not case.requires()[0]:
        support.skip_missing_family(name, case.requires()[1])
