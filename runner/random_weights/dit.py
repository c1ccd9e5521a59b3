"""Random-weight DiT pipelines for the runner's ``--random-weights FAMILY``: the diffusion model, the
text encoder(s), the VAE and LoRAs of FLUX.1-schnell, Chroma, SD3.5, PixArt, Wan 2.1, Qwen-Image,
HiDream-I1, HunyuanImage 2.1 (distilled) and Lumina 2 (and, on ComfyUI 0.33+, Z-Image Turbo, FLUX.2 Klein 4B, Anima,
LongCat-Image, Kandinsky 5.0 Image Lite, LTX-2 19B with its audio VAE and HunyuanVideo 1.5), built from ComfyUI's own classes with seeded random weights.

A real workflow of these families loads its parts separately - UNETLoader (or CheckpointLoaderSimple),
CLIPLoader / DualCLIPLoader / TripleCLIPLoader with a ``type`` (or QuadrupleCLIPLoader), VAELoader,
LoraLoaderModelOnly - and
the runner swaps each of those nodes for the matching node of this module, whose output is the same
kind of ComfyUI object the real loader would give:

* MODEL: ``models.build_dit_model`` of the family's tiny :data:`~.models.DIT_FAMILIES`
  entry (ComfyUI's ``supported_models`` class, e.g. ``FluxSchnell``, ``SD3``, ``WAN21_T2V``).
* CLIP: ``comfy.sd.CLIP`` around the text-encoder class ComfyUI's loader builds for that ``type``
  (``model_config.clip_target()`` of the family), shrunk through ComfyUI's own per-encoder config
  overrides (``model_options["<name>_model_config"]``). Its output width is the model's context width
  read from the DIT_FAMILIES config (``context_in_dim``, ``text_dim``, ...), its pooled width the
  model's pooled input where the model takes one (FLUX ``vec_in_dim`` = CLIP-L's width; SD3
  ``adm_in_channels`` = CLIP-L + CLIP-G pooled). Tokenizers are ComfyUI's shipped ones (CLIP, T5,
  Qwen2.5; Z-Image's and Klein's Qwen3-4B use ComfyUI's shipped Qwen2.5 tokenizer files, as ComfyUI does), with
  these exceptions (Anima's Qwen3 0.6B also uses the Qwen2.5 files, HiDream's Llama 3.1 the shipped Llama 3 one):

  - **UMT5 (Wan), Gemma 2 (Lumina 2) and Gemma 3 (LTX-2) read their SentencePiece model from the checkpoint
    file, and ComfyUI ships none of them. These random encoders use the SentencePiece model ComfyUI ships for
    Pile-T5 (``comfy/text_encoders/t5_pile_tokenizer/tokenizer.model``, 32000 pieces) instead, with
    the vocabulary sized to it. The token ids are therefore NOT the real UMT5/Gemma ids.**
  - **HiDream's Llama 3.1 tokenizer is ComfyUI's shipped one (``llama_tokenizer/tokenizer.json``) where the
    install has that file; where it is missing (a copy of ComfyUI without its files of 4 MiB and more, as on the
    development machine), the Llama part tokenizes with ComfyUI's CLIP BPE files instead
    (:func:`hidream_tokenizer_class`): NOT the real Llama ids.**
  - SD3's text encoder zero-pads CLIP-L+G to 4096 channels (hard-coded in ComfyUI's SD3ClipModel)
    and stacks T5's tokens after them, so SD3's context is 4096 wide whatever the tiny config says:
    the runner's SD3 model takes ``context_embedder`` in_features 4096 and T5 is 4096 wide
    (its vocabulary table is then the largest tensor built here, 131M numbers).
  - Qwen2.5-VL (Qwen-Image, LongCat-Image, Kandinsky 5) carries a vision tower whose size ComfyUI hard-codes
    (1280 wide, 32 blocks); it is replaced by ComfyUI's same ``Qwen2VLVisionTransformer`` class at tiny width.
  - HunyuanImage 2.1 / HunyuanVideo 1.5 (DualCLIPLoader type ``hunyuan_image`` / ``hunyuan_video_15``): Qwen2.5-VL
    7B (its hidden state third from last, so the tiny Qwen keeps 4 layers; vision tower shrunk as above) + ByT5-small,
    the glyph encoder of the prompt's quoted words, with ComfyUI's shipped ByT5 tokenizer. ByT5 stays 1472 wide (the
    model's glyph mapper fixes that width), narrow inside and 2 layers deep; ComfyUI builds it without a model name,
    so its overrides go under ``model_options["_model_config"]``.
  - Kandinsky 5.0 Image Lite (DualCLIPLoader type ``kandinsky5_image``): Qwen2.5-VL's tokens (``in_text_dim``)
    and CLIP-L's unprojected pooled output (``in_text_dim2``, the model's time embedding takes it).
  - FLUX.2 Klein's encoder (``klein_te``, CLIPLoader type ``flux2``) concatenates Qwen3-4B's hidden
    states at layers 9, 18 and 27 (fixed in ComfyUI's ``Qwen3_4BModel``), so the model's
    ``context_in_dim`` is 3x the encoder's width and the tiny encoder keeps 28 (narrow) layers. Its
    ``clip_target`` is built here: FLUX.2's ``clip_target()`` of an empty state dict finds no encoder.
  - Anima's Qwen3 0.6B feeds the model's LLM adapter, whose source width ComfyUI fixes (1024, read from
    ``LLMAdapter``), so this encoder is 1024 wide (3 layers): its vocabulary table (151936 x 1024, 156M
    numbers) is the largest tensor built here. The T5 ids and weights it adds to the conditioning are the
    shipped T5 tokenizer's, as in a real Anima workflow.
  - HiDream-I1 (QuadrupleCLIPLoader): CLIP-L + CLIP-G pooled (``text_emb_dim``), T5-XXL tokens
    (``caption_channels[0]``) and every Llama 3.1 layer's states (``caption_channels[1]`` wide; the tiny Llama
    keeps enough layers for the model's ``llama_layers``). ComfyUI's HiDream ``clip_target()`` is None, so
    the target is built here as ComfyUI's loader builds it from four files.
  - LTX-2 (LTXAVTextEncoderLoader: Gemma 3 12B + the checkpoint) gets ComfyUI's ``ltxav_te`` with the single
    linear ``text_embedding_projection`` of LTX-2 19B (all Gemma layers' states -> ``caption_channels``), its output
    flagged ``unprocessed_ltxav_embeds`` (the model's connectors embed it). Gemma 3's SigLIP tower (fixed 1152 wide
    in ComfyUI) is replaced by the same classes at tiny width. **Not reproduced: ComfyUI's ``LTXAVTEModel.load_sd``
    switches to a "compat mode" (the text encoder runs copies of the checkpoint's two 3840-wide connectors and
    returns the processed, 2 x ``caption_channels`` wide context, no flag) when the checkpoint it is given has
    exactly that connector shape, which reads as LTX-2 19B's; at tiny width that condition cannot hold. Checked by
    reading ComfyUI's code only, not with the real file.** NASA takes such a processed negative as the model does
    (tests/adapters/test_ltx2_adapter.py builds one with the model's own connectors).
* VAE: a ``comfy.sd.VAE`` that ComfyUI set up from the family's real VAE file keys (class, latent
  channels, spatial/temporal scale, working dtypes), whose autoencoder is then swapped for a tiny
  instance of the same class (ComfyUI hard-codes those widths): ``AutoencodingEngine`` with 16
  latent channels (FLUX/SD3/Lumina 2/Z-Image/Chroma/HiDream/LongCat-Image/Kandinsky 5 Image), ``WanVAE`` with 16 (Wan 2.1, Qwen-Image, Anima), and the SD
  ``AutoencoderKL`` with 4 (PixArt) - or, for FLUX.2 Klein, with 32 and the latent batch norm over 2x2
  patches that makes FLUX.2's 128 latent channels (16x downscale; its running statistics stay 0 and 1).
  HunyuanImage 2.1 / HunyuanVideo 1.5: ``AutoencodingEngine`` around ComfyUI's Hunyuan encoder / decoder
  (``hunyuan_video.vae``: 64 latent channels, 32x; ``hunyuan_video.vae_refiner`` with plain 3D convs: 32 channels,
  16x in space and 4x in time), at narrow widths with the real number of levels.
  LTX-2: ComfyUI's ``VideoVAE`` (128 latent channels, 32x space, 8x time) and, for LTXVAudioVAELoader,
  ``AudioVAE`` (causal mel autoencoder, 8 channels x 16 frequency bins = the model's 128 audio channels, + a
  HiFi-GAN vocoder), both set up by ``comfy.sd.VAE`` from checkpoint metadata holding a tiny config, as ComfyUI
  reads a real LTX-2 checkpoint's.
* LoRA: :func:`random_lora` makes a rank-4 LoRA over every linear layer of the diffusion model and
  applies it through ``comfy.sd.load_lora_for_models``, exactly as LoraLoaderModelOnly does.

Weights follow :func:`.models.init_random_weights`. Everything is tiny: a whole pipeline builds
in seconds on two CPU cores.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from . import models as rm


@dataclass(frozen=True)
class Pipeline:
    dit: str                 # key of models.DIT_FAMILIES
    text: str                # text-encoder kind, see text_encoder_configs
    clip_loaders: tuple      # (loader class, its `type` or None) a real workflow of the family uses
    vae: str                 # VAE kind, see build_vae
    what: str                # for messages and the node tooltips


PIPELINES = {
    "flux": Pipeline("flux", "flux", (("DualCLIPLoader", "flux"),), "flux16", "FLUX.1 schnell/dev"),
    "chroma": Pipeline("chroma", "t5_chroma", (("CLIPLoader", "chroma"),), "flux16", "Chroma"),
    "sd35": Pipeline("sd3", "sd3", (("TripleCLIPLoader", None), ("DualCLIPLoader", "sd3"), ("CLIPLoader", "sd3")),
                     "flux16", "SD3.5 Large/Turbo/Medium"),
    "pixart": Pipeline("pixart", "t5_pixart", (("CLIPLoader", "pixart"),), "sd4", "PixArt-alpha/sigma"),
    "wan21": Pipeline("wan21_t2v", "umt5", (("CLIPLoader", "wan"),), "wan21", "Wan 2.1 text-to-video"),
    # Wan 2.1 VACE (also on ComfyUI 0.3.64): Wan 2.1's encoder and VAE; WanVaceToVideo encodes the control video with
    # that VAE (control frames + 8x8 mask channels: the model's vace_in_dim).
    "wan21_vace": Pipeline("wan21_vace", "umt5", (("CLIPLoader", "wan"),), "wan21", "Wan 2.1 VACE"),
    "qwen_image": Pipeline("qwen_image", "qwen25_7b", (("CLIPLoader", "qwen_image"),), "wan21", "Qwen-Image"),
    "lumina2": Pipeline("lumina2", "gemma2_2b", (("CLIPLoader", "lumina2"),), "flux16", "Lumina Image 2.0"),
    # ComfyUI 0.33+. Its template loads Qwen3-4B with CLIPLoader type "lumina2": ComfyUI's loader detects
    # Qwen3-4B from the file and builds Z-Image's encoder for every type but flux/flux2.
    "z_image": Pipeline("z_image", "qwen3_4b", (("CLIPLoader", "lumina2"),), "flux16", "Z-Image (Turbo)"),
    # ComfyUI 0.33+. Its template loads Qwen3-4B with CLIPLoader type "flux2"; ComfyUI builds Klein's encoder
    # (klein_te) from a Qwen3-4B file for type "flux" too.
    "klein": Pipeline("klein", "klein_qwen3_4b", (("CLIPLoader", "flux2"), ("CLIPLoader", "flux")), "flux2",
                      "FLUX.2 Klein 4B"),
    # Also on ComfyUI 0.3.64. Its workflow loads Qwen2.5-VL 7B + ByT5 (glyphs) with DualCLIPLoader type "hunyuan_image"
    # (hunyuan_image.te with ByT5) and its 32x VAE (64 latent channels).
    "hunyuan_image21": Pipeline("hunyuan_image21", "qwen25_7b_byt5", (("DualCLIPLoader", "hunyuan_image"),),
                                "hunyuan_image21", "HunyuanImage 2.1 (distilled)"),
    # ComfyUI 0.33+. Its template loads Qwen2.5-VL 7B + ByT5 with DualCLIPLoader type "hunyuan_video_15" (the same
    # encoder, the video prompt template) and its 16x / 4x-in-time video VAE (32 latent channels).
    "hunyuan_video15": Pipeline("hunyuan_video15", "qwen25_7b_byt5", (("DualCLIPLoader", "hunyuan_video_15"),),
                                "hunyuan_video15", "HunyuanVideo 1.5 text-to-video"),
    # ComfyUI 0.33+. Its template loads Qwen3 0.6B with CLIPLoader type "stable_diffusion" (ComfyUI detects Qwen3
    # 0.6B from the file and builds Anima's encoder whatever the type) and the Qwen-Image VAE (Wan 2.1's).
    "anima": Pipeline("anima", "anima_qwen3_06b", (("CLIPLoader", "stable_diffusion"),), "wan21", "Anima"),
    # The MoE model a real HiDream-I1 checkpoint gives ComfyUI; its template loads CLIP-L, CLIP-G, T5-XXL and
    # Llama 3.1 8B with QuadrupleCLIPLoader (no type) and the FLUX VAE.
    "hidream": Pipeline("hidream", "hidream", (("QuadrupleCLIPLoader", None),), "flux16", "HiDream-I1 Full/Dev/Fast"),
    # ComfyUI 0.33+. Its template loads Qwen2.5-VL 7B with CLIPLoader type "longcat_image" and the FLUX VAE.
    "longcat_image": Pipeline("longcat_image", "longcat_qwen25_7b", (("CLIPLoader", "longcat_image"),), "flux16",
                              "LongCat-Image"),
    # ComfyUI 0.33+. Its template loads Qwen2.5-VL 7B + CLIP-L with DualCLIPLoader type "kandinsky5_image" (CLIPLoader
    # has no Kandinsky type) and the FLUX VAE.
    "kandinsky5_image": Pipeline("kandinsky5_image", "kandinsky5_qwen25_7b_clip_l",
                                 (("DualCLIPLoader", "kandinsky5_image"),), "flux16", "Kandinsky 5.0 Image Lite"),
    # ComfyUI 0.33+. Its template (video_ltx2_t2v_distilled) loads the 19B checkpoint with CheckpointLoaderSimple (model,
    # video VAE), LTXVAudioVAELoader (the audio VAE inside the checkpoint) and LTXAVTextEncoderLoader (Gemma 3 12B +
    # the checkpoint's text projection; no type: ComfyUI's loader uses CLIPType.LTXV).
    "ltx2": Pipeline("ltx2", "ltxav_gemma3_12b", (("LTXAVTextEncoderLoader", None),), "ltx2", "LTX-2 19B (audio + video)"),
}
FAMILIES = tuple(PIPELINES)
SD3_CONTEXT_WIDTH = 4096
"""SD3ClipModel pads CLIP-L+G to this width (hard-coded in ComfyUI), so SD3's context is this wide."""
LORA_RANK = 4
NODE_IDS = {"audio_vae": "NASA_RandomWeightAudioVAE", "model": "NASA_RandomWeightDiffusionModel", "clip": "NASA_RandomWeightTextEncoder",
            "vae": "NASA_RandomWeightVAE", "checkpoint": "NASA_RandomWeightDiTCheckpoint",
            "lora": "NASA_RandomWeightLoraModelOnly"}


def _pipeline(family: str) -> Pipeline:
    if family not in PIPELINES:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {FAMILIES}")
    pipe = PIPELINES[family]
    if pipe.dit not in rm.DIT_FAMILIES:
        raise ValueError(f"--random-weights {family}: models.DIT_FAMILIES has no {pipe.dit!r} entry yet "
                         f"(the tiny {pipe.what} model configuration)")
    import comfy.supported_models as sm
    config_class = rm.DIT_FAMILIES[pipe.dit][0]
    if not hasattr(sm, config_class):   # a family newer than this ComfyUI (Z-Image: 0.33+, not 0.3.64)
        import comfyui_version
        raise ValueError(f"--random-weights {family}: this ComfyUI ({comfyui_version.__version__}) has no "
                         f"{pipe.what} (comfy.supported_models.{config_class}); update ComfyUI to run it")
    return pipe


# ---------------------------------------------------------------------------------------------
# Diffusion model
# ---------------------------------------------------------------------------------------------

def model_overrides(family: str) -> dict:
    """unet_config keys the runner changes in the family's DIT_FAMILIES entry so that the model takes
    the text encoder's real output: only SD3, whose context is always SD3_CONTEXT_WIDTH wide."""
    pipe = _pipeline(family)
    if pipe.text != "sd3":
        return {}
    embedder = rm.DIT_FAMILIES[pipe.dit][1]["context_embedder_config"]
    return {"context_embedder_config": {**embedder, "params": {**embedder["params"], "in_features": SD3_CONTEXT_WIDTH}}}


def dit_config(family: str) -> dict:
    """The unet_config the runner builds the family's model from (DIT_FAMILIES entry + overrides)."""
    pipe = _pipeline(family)
    return {**rm.DIT_FAMILIES[pipe.dit][1], **model_overrides(family)}


def build_model(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    pipe = _pipeline(family)
    return rm.build_dit_model(pipe.dit, dtype, seed, **model_overrides(family))


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------

def _text_encoders_file(*parts) -> str:
    import comfy.text_encoders.spiece_tokenizer as spiece   # comfy.text_encoders is a namespace package
    return os.path.join(os.path.dirname(spiece.__file__), *parts)


def sentencepiece_stand_in() -> torch.Tensor:
    """The SentencePiece model the random UMT5/Gemma encoders tokenize with: Pile-T5's, shipped by
    ComfyUI. NOT the real UMT5 or Gemma tokenizer (those come inside the real checkpoint files)."""
    with open(_text_encoders_file("t5_pile_tokenizer", "tokenizer.model"), "rb") as f:
        return torch.ByteTensor(list(f.read()))


def _sentencepiece_size(model: torch.Tensor) -> int:
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_proto=model.numpy().tobytes()).get_piece_size()


def _t5(width: int, vocab: Optional[int] = None) -> dict:
    config = {"d_model": width, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 2}
    return config if vocab is None else {**config, "vocab_size": vocab}


def _clip(width: int) -> dict:
    return {"hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": 2,
            "num_hidden_layers": 3, "projection_dim": width}


def _llm(width: int, vocab: Optional[int] = None) -> dict:
    # head_dim is fixed by ComfyUI's config classes (128 Qwen2.5, 256 Gemma 2): few heads keep it small.
    config = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 3,
              "num_attention_heads": 2, "num_key_value_heads": 1}
    return config if vocab is None else {**config, "vocab_size": vocab}


def _need(config: dict, key: str, family: str) -> int:
    if key not in config:
        raise ValueError(f"{family}: the DIT_FAMILIES config has no {key!r}: the random text encoder's width "
                         f"is read from it, so the entry must state it")
    return int(config[key])


def klein_text_layers() -> list:
    """The Qwen3-4B layers whose hidden states FLUX.2 Klein's text encoder stacks (``Qwen3_4BModel``'s
    default ``layer``, read from ComfyUI: [9, 18, 27])."""
    import inspect
    import comfy.text_encoders.flux as flux_te
    return list(inspect.signature(flux_te.Qwen3_4BModel.__init__).parameters["layer"].default)


def anima_text_width() -> int:
    """The width of the Qwen3 0.6B states Anima's LLM adapter takes (``LLMAdapter``'s ``source_dim``, which
    ComfyUI's Anima builds at its default, read from ComfyUI: 1024)."""
    import inspect
    from comfy.ldm.anima.model import LLMAdapter
    return int(inspect.signature(LLMAdapter.__init__).parameters["source_dim"].default)


def llama_tokenizer_file() -> str:
    """ComfyUI's shipped Llama 3 tokenizer (``comfy/text_encoders/llama_tokenizer/tokenizer.json``, 9 MB)."""
    return _text_encoders_file("llama_tokenizer", "tokenizer.json")


def hidream_tokenizer_class():
    """ComfyUI's ``HiDreamTokenizer``, or, where ComfyUI's Llama 3 tokenizer file is missing (an install without
    it: the file is 9 MB), the same class whose Llama part tokenizes with ComfyUI's CLIP BPE files instead, with
    ``LLAMA3Tokenizer``'s settings and HiDream's length and pad token (NOT the real Llama ids)."""
    import comfy.text_encoders.hidream as hidream_te
    if os.path.isfile(llama_tokenizer_file()):
        return hidream_te.HiDreamTokenizer
    logging.warning("NASA random weights: %s is missing; HiDream's Llama tokens come from ComfyUI's CLIP tokenizer "
                    "instead (not the real Llama ids)", llama_tokenizer_file())
    import comfy.text_encoders.hunyuan_video as hunyuan_video
    import comfy.text_encoders.sd3_clip as sd3_clip
    from comfy import sd1_clip, sdxl_clip

    class LlamaTokenizerStandIn(hunyuan_video.LLAMA3Tokenizer):
        """LLAMA3Tokenizer's settings on ComfyUI's CLIP tokenizer (start token kept, no end token, ids < 49408)."""
        def __init__(self, embedding_directory=None, tokenizer_data={}, min_length=256, pad_token=128258):
            sd1_clip.SDTokenizer.__init__(
                self, None, embedding_directory=embedding_directory, pad_with_end=False, embedding_size=4096,
                embedding_key="llama", has_start_token=True, has_end_token=False, pad_to_max_length=False,
                max_length=99999999, pad_token=pad_token, min_length=min_length, tokenizer_data=tokenizer_data)

    class HiDreamTokenizerLlamaStandIn(hidream_te.HiDreamTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            # HiDreamTokenizer.__init__ (ComfyUI 0.3.64 to 0.33), its Llama tokenizer swapped for the stand-in
            self.clip_l = sd1_clip.SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
            self.clip_g = sdxl_clip.SDXLClipGTokenizer(embedding_directory=embedding_directory,
                                                       tokenizer_data=tokenizer_data)
            self.t5xxl = sd3_clip.T5XXLTokenizer(embedding_directory=embedding_directory, min_length=128,
                                                 max_length=128, tokenizer_data=tokenizer_data)
            self.llama = LlamaTokenizerStandIn(embedding_directory=embedding_directory, min_length=128,
                                               pad_token=128009, tokenizer_data=tokenizer_data)
    return HiDreamTokenizerLlamaStandIn


def text_encoder_configs(family: str) -> tuple:
    """``(clip_target, {model_name: config overrides}, tokenizer_data)`` of the family's tiny text
    encoder, widths read from :func:`dit_config`."""
    import comfy.supported_models as sm
    import comfy.text_encoders.sd3_clip as sd3_clip
    pipe = _pipeline(family)
    config = dit_config(family)
    model_config = getattr(sm, rm.DIT_FAMILIES[pipe.dit][0])(rm.detected_config(config))
    target = model_config.clip_target()
    tokenizer_data = {}
    if pipe.text == "flux":       # T5-XXL tokens + CLIP-L pooled (unprojected)
        configs = {"t5xxl": _t5(_need(config, "context_in_dim", family)),
                   "clip_l": _clip(_need(config, "vec_in_dim", family))}
    elif pipe.text in ("t5_chroma", "t5_pixart"):
        key = "context_in_dim" if pipe.text == "t5_chroma" else "caption_channels"
        configs = {"t5xxl": _t5(_need(config, key, family))}
    elif pipe.text == "sd3":      # CLIP-L + CLIP-G + T5-XXL; pooled = CLIP-L's + CLIP-G's pooled output,
        pooled = _need(config, "adm_in_channels", family)   # each as wide as its encoder (ComfyUI's CLIP text
        l_width = pooled // 2                               # projection is square)
        configs = {"clip_l": _clip(l_width), "clip_g": _clip(pooled - l_width),
                   "t5xxl": _t5(SD3_CONTEXT_WIDTH)}
        # Built from an empty state dict, SD3's clip_target has no encoder; the TripleCLIPLoader has all three.
        target = type(target)(target.tokenizer, sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True))
    elif pipe.text == "umt5":
        tokenizer_data["spiece_model"] = sentencepiece_stand_in()
        configs = {"umt5xxl": _t5(_need(config, "text_dim", family),
                                  _sentencepiece_size(tokenizer_data["spiece_model"]))}
    elif pipe.text == "qwen25_7b":
        configs = {"qwen25_7b": _llm(_need(config, "joint_attention_dim", family))}
    elif pipe.text == "gemma2_2b":
        tokenizer_data["spiece_model"] = sentencepiece_stand_in()
        configs = {"gemma2_2b": _llm(_need(config, "cap_feat_dim", family),
                                     _sentencepiece_size(tokenizer_data["spiece_model"]))}
    elif pipe.text == "qwen3_4b":   # Z-Image: Qwen3-4B's second-to-last hidden state, Qwen2.5's shipped tokenizer
        configs = {"qwen3_4b": _llm(_need(config, "cap_feat_dim", family))}
    elif pipe.text == "klein_qwen3_4b":   # FLUX.2 Klein: 3 hidden states of Qwen3-4B side by side, Qwen2.5's tokenizer
        import comfy.supported_models_base as smb
        import comfy.text_encoders.flux as flux_te
        width, taps = _need(config, "context_in_dim", family), klein_text_layers()
        if width % len(taps):
            raise ValueError(f"{family}: context_in_dim {width} must be {len(taps)} x the text encoder's width")
        # The taps are layer indices, so the tiny encoder keeps enough layers to reach the last one.
        configs = {"qwen3_4b": {**_llm(width // len(taps)), "num_hidden_layers": max(taps) + 1}}
        # Built from an empty state dict, Flux2's clip_target finds no encoder; CLIPLoader builds this one from a
        # Qwen3-4B file with type flux2 (or flux).
        target = smb.ClipTarget(flux_te.KleinTokenizer, flux_te.klein_te(model_type="qwen3_4b"))
    elif pipe.text == "qwen25_7b_byt5":   # HunyuanImage 2.1 / Video 1.5: Qwen2.5-VL 7B + ByT5-small (quoted words)
        # ByT5's output stays 1472 wide (the model's glyph mapper, ByT5Mapper, takes that fixed width); ComfyUI builds
        # ByT5SmallModel with the encoder's model options and no model_name, so it reads its overrides from
        # "_model_config". Its vocabulary (1510 bytes and specials) is the shipped ByT5 tokenizer's.
        # Its Qwen takes the hidden state at layer_idx (-3: the third from last), so the tiny Qwen keeps one layer more.
        import inspect
        import comfy.text_encoders.hunyuan_image as hunyuan_te
        tap = inspect.signature(hunyuan_te.Qwen25_7BVLIModel.__init__).parameters["layer_idx"].default
        configs = {"qwen25_7b": {**_llm(_need(config, "context_in_dim", family)), "num_hidden_layers": abs(tap) + 1},
                   "": {"d_kv": 8, "num_heads": 2, "d_ff": 32, "num_layers": 2}}
    elif pipe.text == "anima_qwen3_06b":   # Anima: Qwen3 0.6B's last hidden state (+ the prompt's T5 token ids)
        # The model's LLM adapter takes ComfyUI's fixed source width (its published 1024), whatever the tiny config.
        configs = {"qwen3_06b": _llm(anima_text_width())}
    elif pipe.text == "hidream":   # HiDream-I1: T5-XXL tokens, every Llama 3.1 layer's states, CLIP-L + CLIP-G pooled
        import comfy.supported_models_base as smb
        import comfy.text_encoders.hidream as hidream_te
        pooled = _need(config, "text_emb_dim", family)   # CLIP-L's + CLIP-G's projected pooled outputs, side by side
        l_width = pooled // 2
        if "caption_channels" not in config or "llama_layers" not in config:
            raise ValueError(f"{family}: the DIT_FAMILIES config must state caption_channels ([T5, Llama] widths) "
                             f"and llama_layers: the random text encoder is built from them")
        t5_width, llama_width = config["caption_channels"]
        # The model picks Llama layers by index (llama_layers), so the tiny Llama keeps enough layers to reach the last.
        configs = {"clip_l": _clip(l_width), "clip_g": _clip(pooled - l_width), "t5xxl": _t5(int(t5_width)),
                   "llama": {**_llm(int(llama_width)), "num_hidden_layers": max(config["llama_layers"]) + 1}}
        # HiDream's clip_target() is None in ComfyUI; QuadrupleCLIPLoader builds this one from the four files.
        target = smb.ClipTarget(hidream_tokenizer_class(),
                                hidream_te.hidream_clip(clip_l=True, clip_g=True, t5=True, llama=True))
    elif pipe.text == "longcat_qwen25_7b":   # LongCat-Image: Qwen2.5-VL's last hidden state, template tokens cut off
        configs = {"qwen25_7b": _llm(_need(config, "context_in_dim", family))}
    elif pipe.text == "kandinsky5_qwen25_7b_clip_l":   # Kandinsky 5: Qwen2.5-VL tokens + CLIP-L's (unprojected) pooled
        configs = {"qwen25_7b": _llm(_need(config, "in_text_dim", family)),
                   "clip_l": _clip(_need(config, "in_text_dim2", family))}
    elif pipe.text == "ltxav_gemma3_12b":   # LTX-2: all Gemma 3 12B hidden states -> text_embedding_projection
        import comfy.supported_models_base as smb
        import comfy.text_encoders.lt as lt_te
        tokenizer_data["spiece_model"] = sentencepiece_stand_in()
        # LTXAVTEModel builds its Gemma without a model_name, so ComfyUI reads its overrides from "_model_config".
        configs = {"": _llm(16, _sentencepiece_size(tokenizer_data["spiece_model"]))}
        # LTXAVTextEncoderLoader (CLIPType.LTXV, Gemma 3 12B + the checkpoint) builds ltxav_te with the checkpoint's
        # single linear text projection (sd_detect), as wide as the model's caption_channels.
        target = smb.ClipTarget(lt_te.LTXAVGemmaTokenizer,
                                lt_te.ltxav_te(video_projection_dim=_need(config, "caption_channels", family)))
    else:
        raise AssertionError(pipe.text)
    return target, configs, tokenizer_data


def build_text_encoder(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ComfyUI CLIP: the family's text-encoder classes at tiny width, real tokenizers (see the
    module docstring for the SentencePiece stand-in), random weights."""
    import comfy.sd
    pipe = _pipeline(family)
    target, configs, tokenizer_data = text_encoder_configs(family)
    options = {"dtype": dtype, "initial_device": torch.device("cpu")}
    options.update({f"{name}_model_config": cfg for name, cfg in configs.items()})
    clip = comfy.sd.CLIP(target=target, tokenizer_data=tokenizer_data, model_options=options)
    encoder = clip.cond_stage_model
    if pipe.text in ("qwen25_7b", "longcat_qwen25_7b", "kandinsky5_qwen25_7b_clip_l", "qwen25_7b_byt5"):   # Qwen2.5-VL's vision tower
        _shrink_vision_tower(encoder.qwen25_7b, configs["qwen25_7b"]["hidden_size"], dtype)
    if pipe.text == "ltxav_gemma3_12b":   # Gemma 3's SigLIP tower
        _shrink_gemma3_vision(encoder.gemma3_12b, dtype)
    rm.init_random_weights(encoder, seed, f"clip_{family}", keep=lambda name: name.endswith("logit_scale"))
    encoder.requires_grad_(False)
    rm.check_finite(encoder, f"{family} text encoder")
    return clip


def _shrink_vision_tower(clip_model, width: int, dtype) -> None:
    """Qwen2.5-VL's vision tower at tiny width (ComfyUI builds it 1280 wide whatever the config)."""
    transformer = clip_model.transformer
    transformer.visual = type(transformer.visual)(hidden_size=32, output_hidden_size=width, intermediate_size=64,
                                                  num_heads=2, device="cpu", dtype=dtype, ops=clip_model.operations)


def _shrink_gemma3_vision(gemma, dtype) -> None:
    """Gemma 3's SigLIP vision tower and projector at tiny width (ComfyUI builds them from its fixed
    ``GEMMA3_VISION_CONFIG``, 1152 wide and 27 layers, whatever the config): the same classes, same image size."""
    import types
    import comfy.clip_model
    import comfy.text_encoders.llama as llama
    transformer, config = gemma.transformer, gemma.transformer.model.config
    vision = {**llama.GEMMA3_VISION_CONFIG, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
              "num_hidden_layers": 1}
    transformer.vision_model = comfy.clip_model.CLIPVision(vision, dtype, "cpu", gemma.operations)
    projector_config = types.SimpleNamespace(vision_config=vision, hidden_size=config.hidden_size,
                                             rms_norm_eps=config.rms_norm_eps, rms_norm_add=config.rms_norm_add,
                                             mm_tokens_per_image=config.mm_tokens_per_image)
    transformer.multi_modal_projector = llama.Gemma3MultiModalProjector(projector_config, dtype, "cpu", gemma.operations)


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------

# A key of each real VAE file, with its shape there: ComfyUI's VAE() picks the class, the latent
# channels, the scale factors and the working dtypes from it.
_VAE_MARKERS = {   # kind -> the real VAE file's keys (with their shapes) ComfyUI's VAE detection reads
    "flux16": {"decoder.conv_in.weight": (512, 16, 3, 3)},          # FLUX ae / SD3 / Lumina 2 VAE
    "wan21": {"decoder.middle.0.residual.0.gamma": (384, 1, 1, 1),  # Wan 2.1 VAE (also Qwen-Image's); ComfyUI
              "decoder.head.0.gamma": (96, 1, 1, 1),               # 0.3.7x+ also reads its width and image/output
              "encoder.conv1.weight": (96, 3, 3, 3, 3),            # channels from these
              "decoder.head.2.weight": (3, 96, 3, 3, 3)},
    "flux2": {"decoder.conv_in.weight": (512, 32, 3, 3),          # FLUX.2 VAE (ComfyUI 0.33+): 32 channels, quant
              "post_quant_conv.weight": (32, 32, 1, 1),           # convs, a latent batch norm over 2x2 patches
              "bn.running_mean": (128,)},                         # (128 latent channels)
    "hunyuan_image21": {"decoder.conv_in.weight": (1024, 64, 3, 3)},   # HunyuanImage 2.1 VAE: 64 channels, 32x
    "hunyuan_video15": {"decoder.conv_in.weight": (1024, 32, 3, 3, 3)},   # HunyuanVideo 1.5 VAE: 3D, 32 channels
}
# Tiny block widths of the Hunyuan VAEs (hunyuan_video.vae / vae_refiner Encoder and Decoder): one level more than
# the 2x steps of the real VAE's spatial factor (as the real 6 / 5 levels); the last width a multiple of 2x the
# latent channels (the encoder's shortcut averages its channels down to them), every width a multiple of 32 (GroupNorm).
_HUNYUAN_TINY_WIDTHS = {"hunyuan_image21": [32, 32, 32, 32, 64, 128], "hunyuan_video15": [32, 32, 32, 64, 64]}
_WAN_TINY_DIM = 16


class _DropMissingKeys(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("Missing VAE keys")


@contextmanager
def _no_missing_key_warning():
    """The probe VAE has one key of the real file; ComfyUI's list of the others is noise here."""
    root, drop = logging.getLogger(), _DropMissingKeys()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_vae(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """ComfyUI's VAE of the family (see the module docstring) with a tiny random autoencoder."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    kind = _pipeline(family).vae
    if kind == "sd4":
        return rm.build_vae("tiny", dtype, seed)
    if kind == "ltx2":
        return _build_ltx2_vae(family, dtype, seed)
    with _no_missing_key_warning():
        vae = comfy.sd.VAE(sd={key: torch.zeros(shape) for key, shape in _VAE_MARKERS[kind].items()}, dtype=dtype)
    probe = vae.first_stage_model
    if kind == "wan21":
        tiny = type(probe)(dim=_WAN_TINY_DIM, z_dim=probe.z_dim, dim_mult=probe.dim_mult, num_res_blocks=1,
                           attn_scales=probe.attn_scales, temperal_downsample=probe.temperal_downsample)
    elif kind == "flux2":   # AutoencoderKL: z_channels 32 (128 latent channels after the 2x2 patches), batch norm kept
        ddconfig = {**rm._VAE_DDCONFIG, **rm._VAE_SIZE["tiny"], "z_channels": probe.decoder.conv_in.in_channels,
                    "batch_norm_latent": probe.bn is not None}
        tiny = type(probe)(ddconfig=ddconfig, embed_dim=probe.embed_dim)
    elif kind in _HUNYUAN_TINY_WIDTHS:   # AutoencodingEngine around Hunyuan's encoder / decoder: the real factors
        spatial = vae.downscale_index_formula[-1] if vae.latent_dim == 3 else vae.downscale_ratio
        ddconfig = {"block_out_channels": _HUNYUAN_TINY_WIDTHS[kind], "in_channels": 3, "out_channels": 3,
                    "num_res_blocks": 1, "ffactor_spatial": spatial, "z_channels": vae.latent_channels,
                    "downsample_match_channel": True, "upsample_match_channel": True}
        if vae.latent_dim == 3:   # HunyuanVideo 1.5: the plain 3D convs (not the refiner VAE's causal ones), 4x in time
            ddconfig.update(ffactor_temporal=vae.downscale_index_formula[0], refiner_vae=probe.encoder.refiner_vae)
        tiny = probe
        tiny.encoder, tiny.decoder = type(probe.encoder)(**ddconfig), type(probe.decoder)(**ddconfig)
    else:
        ddconfig = {**rm._VAE_DDCONFIG, **rm._VAE_SIZE["tiny"], "z_channels": vae.latent_channels}
        tiny = probe
        tiny.encoder, tiny.decoder = type(probe.encoder)(**ddconfig), type(probe.decoder)(**ddconfig)
    rm.init_random_weights(tiny, seed, f"vae_{kind}")
    tiny = tiny.to(dtype).eval().requires_grad_(False)
    rm.check_finite(tiny, f"{family} VAE")
    vae.first_stage_model = tiny
    vae.patcher = comfy.model_patcher.ModelPatcher(tiny, load_device=vae.device, offload_device=mm.vae_offload_device())
    return vae


def _ltx2_video_vae_config() -> dict:
    """The LTX-2 video VAE's config at tiny width: ComfyUI's ``VideoVAE`` layout of version 2 (its default for a
    1024-wide decoder with residual encoder compression), one layer per block, 8 base channels. A real LTX-2
    checkpoint carries its VAE config in the file's metadata, which ComfyUI reads the same way."""
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as cva
    base = cva.VideoVAE.get_default_config(None, 2)

    def one_layer(blocks):
        return [[name, {**arg, "num_layers": 1} if isinstance(arg, dict) and "num_layers" in arg else arg]
                for name, arg in blocks]
    return {**base, "encoder_blocks": one_layer(base["encoder_blocks"]),
            "decoder_blocks": one_layer(base["decoder_blocks"]), "encoder_base_channels": 8,
            "decoder_base_channels": 8}


LTX2_AUDIO_VAE_CONFIG = {   # the checkpoint metadata's "audio_vae" / "vocoder" configs, at tiny width
    "audio_vae": {"model": {"params": {"ddconfig": {
        "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256, "downsample_time": False,
        "in_channels": 2, "out_ch": 2, "ch": 8, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel", "causality_axis": "height"},
        "sampling_rate": 16000}}, "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160}}},
    "vocoder": {"upsample_initial_channel": 64, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]},
}
"""8 latent channels x 16 frequency bins (64 mel bins / 4) = the 128 audio channels LTX-2 takes; the vocoder
keeps ComfyUI's default upsampling (x160: 16 kHz out) at 64 channels instead of 1024."""


def _from_metadata(config: dict, marker: str, reference) -> "object":
    """``comfy.sd.VAE`` as ComfyUI sets it up from a checkpoint whose metadata holds ``config`` (the class and its
    tiny layout) and whose ``marker`` key picks the VAE kind (its shape read from ``reference``, the same tiny
    module, since ComfyUI loads it)."""
    import json
    import comfy.sd
    with _no_missing_key_warning():
        return comfy.sd.VAE(sd={marker: torch.zeros(reference.state_dict()[marker].shape)},
                            metadata={"config": json.dumps(config)})


def _finish_vae(vae, family: str, kind: str, dtype, seed: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    tiny = vae.first_stage_model
    rm.init_random_weights(tiny, seed, f"vae_{kind}")
    for stats in (m for m in tiny.modules() if m.__class__.__name__ == "processor"):   # latent statistics: 0 and 1
        stats.get_buffer("mean-of-means").zero_()
        stats.get_buffer("std-of-means").fill_(1.0)
    tiny = tiny.to(dtype).eval().requires_grad_(False)
    rm.check_finite(tiny, f"{family} {kind}")
    vae.first_stage_model = tiny
    vae.patcher = comfy.model_patcher.ModelPatcher(tiny, load_device=vae.device, offload_device=mm.vae_offload_device())
    return vae


def _build_ltx2_vae(family: str, dtype, seed: int):
    """LTX-2's video VAE: ComfyUI's ``VideoVAE`` (128 latent channels, 32x space, 8x time), tiny."""
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as cva
    config = _ltx2_video_vae_config()
    # The key ComfyUI's VAE() recognises an LTX video VAE by; the metadata's config then sets its layout.
    vae = _from_metadata({"vae": config}, "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight", cva.VideoVAE(config=config))
    return _finish_vae(vae, family, "video VAE", dtype, seed)


def build_audio_vae(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The family's audio VAE as LTXVAudioVAELoader gives it (ComfyUI's ``AudioVAE``: a causal mel autoencoder +
    vocoder, set up from the checkpoint's metadata), tiny. Only LTX-2 has one."""
    if _pipeline(family).vae != "ltx2":
        raise ValueError(f"--random-weights {family}: {PIPELINES[family].what} has no audio VAE "
                         f"(LTXVAudioVAELoader is LTX-2's)")
    import comfy.ldm.lightricks.vae.audio_vae as audio_vae
    reference = audio_vae.AudioVAE(metadata={"config": LTX2_AUDIO_VAE_CONFIG})
    vae = _from_metadata(LTX2_AUDIO_VAE_CONFIG, "vocoder.resblocks.0.convs1.0.weight", reference)
    return _finish_vae(vae, family, "audio VAE", dtype, seed)


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------

def random_lora(model_patcher, strength: float = 1.0, seed: int = 0, rank: int = LORA_RANK):
    """``model_patcher`` with a random rank-``rank`` LoRA on every linear layer of its diffusion
    model, loaded by ComfyUI's ``load_lora_for_models`` as LoraLoaderModelOnly loads a file.
    ``lora_up`` has std 0.1/sqrt(rank): each layer's weight moves by about a tenth of its size."""
    import comfy.sd
    lora = {}
    for name, linear in model_patcher.model.diffusion_model.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        key = f"diffusion_model.{name}"
        down = torch.empty(rank, linear.in_features)
        up = torch.empty(linear.out_features, rank)
        rm.fill_normal(down, 1.0 / linear.in_features ** 0.5, rm.param_seed(seed, "lora", key + ".down"))
        rm.fill_normal(up, 0.1 / rank ** 0.5, rm.param_seed(seed, "lora", key + ".up"))
        lora[f"{key}.lora_down.weight"], lora[f"{key}.lora_up.weight"] = down, up
    model, _ = comfy.sd.load_lora_for_models(model_patcher, None, lora, strength, 0)
    return model


# ---------------------------------------------------------------------------------------------
# The loader stand-ins the runner swaps in
# ---------------------------------------------------------------------------------------------

_CACHE: dict = {}
_CACHE_LOCK = threading.RLock()
_NODE_CLASSES: dict = {}


def cached(what: str, family: str, seed: int = 0, dtype: str = "float32"):
    """The family's MODEL (``what="model"``), CLIP ("clip"), VAE ("vae") or all three ("checkpoint"),
    built once per (what, family, seed, dtype name) in this process."""
    if dtype not in rm.DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {tuple(rm.DTYPES)}")
    key = (what, family, int(seed), dtype)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if what == "checkpoint":
                _CACHE[key] = tuple(cached(part, family, seed, dtype) for part in ("model", "clip", "vae"))
            else:
                build = {"model": build_model, "clip": build_text_encoder, "vae": build_vae,
                         "audio_vae": build_audio_vae}[what]
                _CACHE[key] = build(family, rm.DTYPES[dtype], int(seed))
        return _CACHE[key]


def node_classes() -> dict:
    """``{"model" | "clip" | "vae" | "checkpoint" | "lora": V3 node class}``: stand-ins for UNETLoader,
    the CLIP loaders, VAELoader, CheckpointLoaderSimple and LoraLoaderModelOnly with random weights.
    Not part of the pack's node list; the headless runner registers them in ``--random-weights`` mode."""
    if _NODE_CLASSES:
        return _NODE_CLASSES
    from comfy_api.latest import io

    def family_inputs():
        return [io.Combo.Input("family", options=list(FAMILIES), default=FAMILIES[0],
                               tooltip="; ".join(f"{k} = {p.what}" for k, p in PIPELINES.items())),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1, tooltip="Seed of the random weights."),
                io.Combo.Input("dtype", options=list(rm.DTYPES), default="float32", tooltip="Weight dtype.")]

    def loader(what, title, outputs, replaces):
        class RandomWeightLoader(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id=NODE_IDS[what], display_name=f"Random-Weight {title} (NASA smoke test)",
                                 category="loaders/nasa", inputs=family_inputs(), outputs=outputs,
                                 description=f"Stands in for {replaces} in smoke tests: ComfyUI's own classes of the "
                                             f"family at tiny width with seeded random weights. Output is noise.")

            @classmethod
            def execute(cls, family, seed=0, dtype="float32") -> io.NodeOutput:
                out = cached(what, family, seed, dtype)
                return io.NodeOutput(*(out if what == "checkpoint" else (out,)))
        RandomWeightLoader.__name__ = f"RandomWeight_{what}"
        return RandomWeightLoader

    class RandomWeightLora(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=NODE_IDS["lora"], display_name="Random-Weight LoRA (NASA smoke test)", category="loaders/nasa",
                description=f"Stands in for LoraLoaderModelOnly in smoke tests: a random rank-{LORA_RANK} LoRA on "
                            f"every linear layer, applied by ComfyUI's LoRA loader code.",
                inputs=[io.Model.Input("model"),
                        io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01),
                        io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1)],
                outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, model, strength_model, seed=0) -> io.NodeOutput:
            return io.NodeOutput(random_lora(model, strength_model, seed))

    _NODE_CLASSES.update(
        model=loader("model", "Diffusion Model", [io.Model.Output()], "Load Diffusion Model (UNETLoader)"),
        clip=loader("clip", "Text Encoder", [io.Clip.Output()], "Load CLIP / DualCLIPLoader / TripleCLIPLoader"),
        vae=loader("vae", "VAE", [io.Vae.Output()], "Load VAE"),
        audio_vae=loader("audio_vae", "Audio VAE", [io.Vae.Output()], "Load LTXV Audio VAE (LTXVAudioVAELoader)"),
        checkpoint=loader("checkpoint", "DiT Checkpoint", [io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
                          "Load Checkpoint"),
        lora=RandomWeightLora)
    return _NODE_CLASSES
