"""The DiT example workflows (FLUX.1-schnell, Chroma, SD3.5 Turbo, PixArt, Wan 2.1 and VACE, Qwen-Image, Lumina 2,
HiDream-I1 Fast, Anima, Z-Image Turbo, FLUX.2 Klein 4B, LongCat-Image, Kandinsky 5.0 Image Lite, HunyuanImage 2.1,
HunyuanVideo 1.5, LTX-2) executed by the headless runner with ``--random-weights <family>``, and the random-weight
parts the runner swaps in for their loaders (runner/random_weights/dit.py): ComfyUI's own classes, widths read from
DIT_FAMILIES."""
from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nasa_test_support as support

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = support.EXAMPLE_WORKFLOWS
ONE_PER_FAMILY = {family: name for name, family in reversed(list(WORKFLOWS.items()))}
# Tests shrink the real resolutions. PixArt computes its position-embedding scale as round(side / 64)
# of the latent side, which is 0 (a division by zero in ComfyUI) below 40 latent pixels: 320x320.
SMALL = {
    "EmptySD3LatentImage": ["EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64"],
    "EmptyLatentImage": ["EmptyLatentImage.width=320", "EmptyLatentImage.height=320"],
    "WanVaceToVideo": ["WanVaceToVideo.width=64", "WanVaceToVideo.height=64", "WanVaceToVideo.length=5"],
    "EmptyHunyuanLatentVideo": ["EmptyHunyuanLatentVideo.width=64", "EmptyHunyuanLatentVideo.height=64",
                                "EmptyHunyuanLatentVideo.length=5"],
    "EmptyFlux2LatentImage": ["EmptyFlux2LatentImage.width=64", "EmptyFlux2LatentImage.height=64"],   # 16x: 4x4
    "EmptyHunyuanImageLatent": ["EmptyHunyuanImageLatent.width=128", "EmptyHunyuanImageLatent.height=128"],   # 32x: 4x4
    "EmptyHunyuanVideo15Latent": ["EmptyHunyuanVideo15Latent.width=64", "EmptyHunyuanVideo15Latent.height=64",
                                  "EmptyHunyuanVideo15Latent.length=5"],   # 16x, 4x in time: 4x4, 2 frames
    "EmptyLTXVLatentVideo": ["EmptyLTXVLatentVideo.width=64", "EmptyLTXVLatentVideo.height=64",   # 32x, 8x in time:
                             "EmptyLTXVLatentVideo.length=9", "LTXVEmptyLatentAudio.frames_number=9"],   # 2x2, 2 frames
}
MAX_STEPS = 4
LOADERS = ("CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader",
           "LoraLoaderModelOnly", "QuadrupleCLIPLoader", "LTXAVTextEncoderLoader", "LTXVAudioVAELoader")
# What a real workflow of each family loads, independently of the runner: DIT_FAMILIES key, the config key
# holding the text width the model takes, ComfyUI's text-encoder and tokenizer classes, VAE class.
FACTS = {
    # LTXAVTextEncoderLoader (CLIPType.LTXV) with Gemma 3 12B + the LTX-2 checkpoint: ltxav_te, a subclass of
    # LTXAVTEModel built inside ltxav_te around Gemma3_12BModel (checked too); the video VAE is LTX's VideoVAE.
    "ltx2": ("ltx2", "caption_channels", "comfy.text_encoders.lt.LTXAVTEModel",
             "comfy.text_encoders.lt.LTXAVGemmaTokenizer", "VideoVAE"),
    "flux": ("flux", "context_in_dim", "comfy.text_encoders.flux.FluxClipModel",
             "comfy.text_encoders.flux.FluxTokenizer", "AutoencodingEngine"),
    "chroma": ("chroma", "context_in_dim", "comfy.text_encoders.pixart_t5.PixArtT5XXL",
               "comfy.text_encoders.pixart_t5.PixArtTokenizer", "AutoencodingEngine"),
    "sd35": ("sd3", None, "comfy.text_encoders.sd3_clip.SD3ClipModel", "comfy.text_encoders.sd3_clip.SD3Tokenizer",
             "AutoencodingEngine"),
    "pixart": ("pixart", "caption_channels", "comfy.text_encoders.pixart_t5.PixArtT5XXL",
               "comfy.text_encoders.pixart_t5.PixArtTokenizer", "AutoencoderKL"),
    "wan21": ("wan21_t2v", "text_dim", "comfy.text_encoders.wan.WanT5Model", "comfy.text_encoders.wan.WanT5Tokenizer",
              "WanVAE"),
    # The VACE checkpoint (UNETLoader) with Wan 2.1's UMT5 (CLIPLoader type "wan") and VAE, as ComfyUI's VACE templates.
    "wan21_vace": ("wan21_vace", "text_dim", "comfy.text_encoders.wan.WanT5Model",
                   "comfy.text_encoders.wan.WanT5Tokenizer", "WanVAE"),
    "qwen_image": ("qwen_image", "joint_attention_dim", "comfy.text_encoders.qwen_image.QwenImageTEModel",
                   "comfy.text_encoders.qwen_image.QwenImageTokenizer", "WanVAE"),
    "lumina2": ("lumina2", "cap_feat_dim", "comfy.text_encoders.lumina2.LuminaModel",
                "comfy.text_encoders.lumina2.LuminaTokenizer", "AutoencodingEngine"),
    # QuadrupleCLIPLoader (CLIP-L, CLIP-G, T5-XXL, Llama 3.1 8B; sd.py's four-file branch): hidream_clip's
    # HiDreamTEModel; T5 tokens caption_channels[0] wide, every Llama layer's states caption_channels[1] wide, pooled
    # CLIP-L + CLIP-G text_emb_dim (checked too). The MoE model ("hidream"), as a real HiDream-I1 checkpoint detects.
    "hidream": ("hidream", "caption_channels", "comfy.text_encoders.hidream.HiDreamTEModel",
                "comfy.text_encoders.hidream.HiDreamTokenizer", "AutoencodingEngine"),
    # CLIPLoader (type stable_diffusion, as ComfyUI's template) with a Qwen3 0.6B file (sd.py: TEModel.QWEN3_06B, any
    # type): anima.te's AnimaTEModel, 1024 wide (the LLM adapter's source width), T5 token ids beside it (checked
    # too); the Qwen-Image VAE (Wan 2.1's).
    "anima": ("anima", "crossattn_emb_channels", "comfy.text_encoders.anima.AnimaTEModel",
              "comfy.text_encoders.anima.AnimaTokenizer", "WanVAE"),
    # CLIPLoader type "lumina2" with a Qwen3-4B file: ComfyUI detects Qwen3-4B and builds Z-Image's encoder.
    "z_image": ("z_image", "cap_feat_dim", "comfy.text_encoders.z_image.ZImageTEModel",
                "comfy.text_encoders.z_image.ZImageTokenizer", "AutoencodingEngine"),
    # CLIPLoader type "flux2" with a Qwen3-4B file: klein_te(model_type="qwen3_4b"), a subclass of Flux2TEModel built
    # inside klein_te around Qwen3_4BModel (checked too); the FLUX.2 VAE is the SD-style AutoencoderKL + latent batch norm.
    "klein": ("klein", "context_in_dim", "comfy.text_encoders.flux.Flux2TEModel",
              "comfy.text_encoders.flux.KleinTokenizer", "AutoencoderKL"),
    # CLIPLoader type "longcat_image" with a Qwen2.5-VL 7B file (sd.py: TEModel.QWEN25_7B, CLIPType.LONGCAT_IMAGE).
    "longcat_image": ("longcat_image", "context_in_dim", "comfy.text_encoders.longcat_image.LongCatImageTEModel",
                      "comfy.text_encoders.longcat_image.LongCatImageTokenizer", "AutoencodingEngine"),
    # DualCLIPLoader type "kandinsky5_image" with Qwen2.5-VL 7B + CLIP-L (sd.py: CLIPType.KANDINSKY5_IMAGE); pooled:
    # CLIP-L's (checked too).
    "kandinsky5_image": ("kandinsky5_image", "in_text_dim", "comfy.text_encoders.kandinsky5.Kandinsky5TEModel",
                         "comfy.text_encoders.kandinsky5.Kandinsky5TokenizerImage", "AutoencodingEngine"),
    # DualCLIPLoader type "hunyuan_image" with Qwen2.5-VL 7B + ByT5 (sd.py's two-file CLIPType.HUNYUAN_IMAGE branch):
    # hunyuan_image.te (a HunyuanImageTEModel with ByT5, checked too); the VAE: AutoencodingEngine around
    # hunyuan_video.vae's 32x Encoder/Decoder (checked too).
    "hunyuan_image21": ("hunyuan_image21", "context_in_dim", "comfy.text_encoders.hunyuan_image.HunyuanImageTEModel",
                        "comfy.text_encoders.hunyuan_image.HunyuanImageTokenizer", "AutoencodingEngine"),
    # DualCLIPLoader type "hunyuan_video_15" (CLIPType.HUNYUAN_VIDEO_15): the same encoder, HunyuanVideo15Tokenizer;
    # the VAE: AutoencodingEngine around vae_refiner's Encoder/Decoder with plain 3D convs (16x, 4x in time).
    "hunyuan_video15": ("hunyuan_video15", "context_in_dim", "comfy.text_encoders.hunyuan_image.HunyuanImageTEModel",
                        "comfy.text_encoders.hunyuan_video.HunyuanVideo15Tokenizer", "AutoencodingEngine"),
}
VIDEO_VAES = {"hunyuan_video15", "ltx2"}
"""Families whose VAE is a video VAE though not Wan's (latents with a time axis)."""
TIME = {"ltx2": 8}
"""A video VAE's time factor where it is not Wan's 4 (2 latent frames decode to 1 + TIME frames)."""
FRAMES = {"hunyuan_video15": 8}
"""Frames 2 latent frames decode to where the VAE is not causal in time (HunyuanVideo 1.5's: 4 per latent frame)."""
HUNYUAN_VAE_CODERS = {"hunyuan_image21": "comfy.ldm.hunyuan_video.vae",
                      "hunyuan_video15": "comfy.ldm.hunyuan_video.vae_refiner"}
"""The module of the encoder / decoder ComfyUI puts in each Hunyuan VAE's AutoencodingEngine."""
SPATIAL = {"hunyuan_image21": 32}
"""A VAE's spatial factor where the latent format does not state it (HunyuanImage 2.1 on ComfyUI 0.3.64)."""


def skip_missing(family):
    """Skip a test of ``family`` (the workflow's, for a test by workflow name) on a ComfyUI without its model class
    (support.skip_missing_pipeline: the one skip reason CI accepts with a ComfyUI found)."""
    support.skip_missing_pipeline(family)


SD3_PADDED_WIDTH = 4096  # ComfyUI's SD3ClipModel zero-pads CLIP-L+G to T5-XXL's width


@pytest.fixture(scope="module")
def cli(comfy):
    return importlib.import_module("nasa_runner.cli")


@pytest.fixture(scope="module")
def rd(comfy):
    """The runner's own instance of runner/random_weights/dit.py (the one whose cache the runs share)."""
    return importlib.import_module("nasa_runner.random_weights.dit")


def load(name):
    return json.loads((PACK_ROOT / "workflows" / name).read_text())


def small(name):
    """--set overrides that shrink the workflow: a small image or video, at most MAX_STEPS steps."""
    p = {str(n["id"]): n for n in load(name)["nodes"]}
    latent = next(n["type"] for n in p.values() if n["type"] in SMALL)
    sampler = next((n for n in p.values() if n["type"] == "KSampler"), None)
    steps = [] if sampler is None or sampler["widgets_values"][2] <= MAX_STEPS else [f"KSampler.steps={MAX_STEPS}"]
    return list(SMALL[latent]) + steps


def comfy_class(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def pixels(path: Path) -> np.ndarray:
    """The decoded pixels of an output file: a PNG, or every frame of a video."""
    if path.suffix == ".png":
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    import av
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def run(cli, workflow, sets, out, family):
    r = cli.run_workflow(workflow, sets, out_dir=out, random_weights=family)
    assert r.ok, r.error
    files = [p for p in r.images if p.parent.name != TAP]
    assert r.exit_code == 0 and len(files) == 1 and all(p.is_file() for p in r.images)
    return r


TAP = "nasa_test_frames"   # output subfolder of the SaveImage that tapped() adds


def tapped(comfy, workflow):
    """The workflow (API format) with a SaveImage on the ``images`` input of each CreateVideo: the frames the
    video encodes, saved losslessly in the TAP subfolder. Compare those (:func:`frames`), not the mp4.

    Why: SaveVideo encodes with libx264 (PyAV 18.1's wheel, x264 core 165), which reads uninitialised heap memory
    at these 64-pixel-wide frames (its AVX-512 code: with asm=avx2, or with MB-tree / the lookahead off, it is
    stable; 128 and 256 wide were stable). The same frames then encode to different files depending on what the
    process freed before: decoded back, they differed by up to 58 (the flaky runs' [107, 67, 129] vs
    [113, 79, 136]) in 9-18% of the Wan runs of a long process, while every tensor of those runs, the uint8
    frames and the yuv420p frames were bit-identical; with the heap filled with a fixed byte (MALLOC_PERTURB_)
    the file is always the same, and a different one per byte. The frames are what the workflow computed, and
    H.264 is lossy on top of them (here |mp4 - frames| averages 17), so comparing them exactly is the stricter
    check."""
    wf_mod = importlib.import_module("nasa_runner.workflow")
    prompt, _ = wf_mod.to_api(wf_mod.load_workflow(workflow), comfy.nodes.NODE_CLASS_MAPPINGS,
                              comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    next_id = max(int(k) for k in prompt) + 1
    for node in [n for n in prompt.values() if n["class_type"] == "CreateVideo"]:
        prompt[str(next_id)] = {"class_type": "SaveImage", "_meta": {"title": "frames (test tap)"},
                                "inputs": {"images": node["inputs"]["images"], "filename_prefix": f"{TAP}/frame"}}
        next_id += 1
    return prompt


def frames(r) -> np.ndarray:
    """The pixels to compare of a run of a :func:`tapped` workflow: the tapped frames of a video, in order
    (SaveImage numbers them), else the one output image."""
    tap = sorted(p for p in r.images if p.parent.name == TAP)
    if tap:
        return np.stack([pixels(p) for p in tap])
    (image,) = r.images
    return pixels(image)


def without_nasa(name):
    """The workflow with Apply NASA Attention bypassed (mode 4): its model input feeds the sampler."""
    wf = copy.deepcopy(load(name))
    for node in wf["nodes"]:
        if node["type"] == "NASAApplyAttention":
            node["mode"] = 4
    return wf


# --- the workflow files --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_is_consistent_ui_format(name):
    wf = load(name)
    support.check_ui_workflow(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    orders = sorted(n["order"] for n in wf["nodes"])
    assert orders == list(range(len(wf["nodes"])))
    for lid, src, _, dst, _, _ in wf["links"]:
        assert nodes[src]["order"] < nodes[dst]["order"]


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_is_cfg1_nasa_with_a_sampler_negative_and_a_note(comfy, name):
    """cfg 1, the NASA node on the sampler's model, the negative prompt wired into the sampler, real
    default resolution, and a Note naming the model files, the resolution, the steps and alpha."""
    skip_missing(WORKFLOWS[name])   # the workflow's nodes (e.g. EmptyFlux2LatentImage) come with the family
    wf_mod = importlib.import_module("nasa_runner.workflow")
    wf = load(name)
    p = wf_mod.ui_to_api(wf, comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    # KSampler / SamplerCustom, or a CFGGuider (cfg, model, positive, negative) of SamplerCustomAdvanced (LTX-2)
    (sampler,) = [v for v in p.values() if v["class_type"] in ("KSampler", "SamplerCustom", "CFGGuider")]
    (nasa_id, nasa), = [(k, v) for k, v in p.items() if v["class_type"] == "NASAApplyAttention"]
    ins = sampler["inputs"]
    assert ins["cfg"] == 1.0 and ins["model"] == [nasa_id, 0]
    assert nasa["inputs"]["use_sampler_negative"] is True and "negative" not in nasa["inputs"]
    negative = p[ins["negative"][0]]
    while negative["class_type"] in ("LTXVConditioning", "WanVaceToVideo"):   # both prompts on their way: LTX-2's
        negative = p[negative["inputs"]["negative"][0]]                        # frame rate, VACE's control latents
    assert negative["_meta"]["title"] == "Negative Prompt (NASA)"
    assert (negative["inputs"].get("text") or negative["inputs"].get("user_prompt")).strip()
    latent = next(v["inputs"] for v in p.values() if v["class_type"] in SMALL)
    assert min(latent["width"], latent["height"]) >= 480
    manual = [len(v["inputs"]["sigmas"].split(",")) - 1 for v in p.values() if v["class_type"] == "ManualSigmas"]
    steps = ins.get("steps") or (manual and manual[0]) or next(v["inputs"]["steps"] for v in p.values()
                                                               if v["class_type"] in ("BasicScheduler", "Flux2Scheduler"))
    for scheduler in (v["inputs"] for v in p.values() if v["class_type"] == "Flux2Scheduler"):   # shift from the size
        assert (scheduler["width"], scheduler["height"]) == (latent["width"], latent["height"])
    (note,) = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note"]
    assert f"{latent['width']}x{latent['height']}" in note and "cfg 1" in note
    assert re.search(rf"\b{steps} steps?\b", note), note
    assert "alpha" in note and f"{nasa['inputs']['alpha']}" in note
    for node in p.values():
        if node["class_type"] in LOADERS:
            for file in (v for k, v in node["inputs"].items() if "_name" in k or k == "text_encoder"):
                assert file in note, f"{file} is not named in the Note"


# --- the random-weight parts ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FACTS))
def test_text_encoder_is_comfyuis_class_and_matches_the_model_width(rd, family):
    """The random CLIP is ComfyUI's text-encoder class for the loader type, its output as wide as the
    model's context in DIT_FAMILIES (SD3: the 4096 it pads CLIP-L+G to, which the runner's SD3 model
    takes), its pooled output the model's pooled input, and different prompts encode differently."""
    skip_missing(family)
    rm = importlib.import_module("nasa_runner.random_weights.models")
    dit, width_key, encoder_class, tokenizer_class, _ = FACTS[family]
    registry = rm.DIT_FAMILIES[dit][1]
    clip = rd.cached("clip", family)
    assert isinstance(clip.cond_stage_model, comfy_class(encoder_class))
    assert isinstance(clip.tokenizer, comfy_class(tokenizer_class))
    if family == "klein":   # Flux2TEModel also wraps FLUX.2 dev's Mistral 3; Klein 4B's is Qwen3-4B
        assert isinstance(clip.cond_stage_model.qwen3_4b, comfy_class("comfy.text_encoders.flux.Qwen3_4BModel"))
    if family == "ltx2":   # LTXAVTEModel wraps Gemma 3 12B (or Gemma 4); LTX-2 19B's is Gemma 3 12B
        assert isinstance(clip.cond_stage_model.gemma3_12b, comfy_class("comfy.text_encoders.lt.Gemma3_12BModel"))
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
    other = clip.encode_from_tokens(clip.tokenize("glasses"))
    if width_key is None:   # SD3
        assert cond.shape[-1] == SD3_PADDED_WIDTH
        assert rd.dit_config(family)["context_embedder_config"]["params"]["in_features"] == SD3_PADDED_WIDTH
        assert pooled.shape[-1] == registry["adm_in_channels"]
        assert all(getattr(clip.cond_stage_model, e) is not None for e in ("clip_l", "clip_g", "t5xxl"))
    elif family == "hidream":   # T5's tokens, every Llama layer's states (conditioning_llama3), CLIP-L + CLIP-G pooled
        t5_width, llama_width = registry[width_key]
        llama = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_dict=True)["conditioning_llama3"]
        assert cond.shape[-1] == t5_width and llama.shape[-1] == llama_width
        assert llama.shape[1] > max(registry["llama_layers"]) and pooled.shape[-1] == registry["text_emb_dim"]
        assert all(getattr(clip.cond_stage_model, e) is not None for e in ("clip_l", "clip_g", "t5xxl", "llama"))
        # the runner's model is the MoE one a real HiDream-I1 checkpoint gives ComfyUI (not the dense test stand-in)
        assert rd.PIPELINES[family].dit == dit and registry["num_routed_experts"] > 0
    else:
        assert cond.shape[-1] == registry[width_key]
    if family == "anima":   # the prompt's T5 ids beside Qwen3 0.6B's states: ComfyUI's shipped T5 tokenizer's ids,
        from transformers import T5TokenizerFast   # each a row of the model's LLM adapter embedding
        out = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_dict=True)
        t5 = T5TokenizerFast.from_pretrained(Path(comfy_class("comfy.text_encoders.anima.te").__code__.co_filename)
                                             .parent / "t5_tokenizer")
        assert out["t5xxl_ids"].tolist() == t5("a photo of a cat").input_ids
        adapter = rd.cached("model", family).model.diffusion_model.llm_adapter
        assert cond.shape[-1] == rd.anima_text_width() and int(out["t5xxl_ids"].max()) < adapter.embed.num_embeddings
    if family == "flux":
        assert pooled.shape[-1] == registry["vec_in_dim"]
    if family == "kandinsky5_image":   # the pooled CLIP-L vector the model's time embedding takes
        assert pooled.shape[-1] == registry["in_text_dim2"]
        assert isinstance(clip.cond_stage_model.clip_l, comfy_class("comfy.sd1_clip.SDClipModel"))
    if family in ("hunyuan_image21", "hunyuan_video15"):   # ByT5 glyph tokens of the quoted words, as wide as the
        byt5 = clip.cond_stage_model.byt5_small            # model's glyph mapper takes (its layer norm's width)
        assert isinstance(byt5, comfy_class("comfy.text_encoders.hunyuan_image.ByT5SmallModel"))
        glyphs = clip.encode_from_tokens(clip.tokenize('a sign that reads "OPEN"'), return_dict=True)
        mapper = rd.cached("model", family).model.diffusion_model.byt5_in
        assert glyphs["conditioning_byt5small"].shape[-1] == mapper.layernorm.normalized_shape[0]
        assert "conditioning_byt5small" not in clip.encode_from_tokens(clip.tokenize("a sign"), return_dict=True)
    assert torch.isfinite(cond).all() and cond.std() > 0.1
    n = min(cond.shape[1], other.shape[1])
    assert not torch.allclose(cond[:, :n], other[:, :n])


@pytest.mark.parametrize("family", sorted(FACTS))
def test_vae_is_the_familys_class_with_the_models_latent_channels(rd, family):
    skip_missing(family)
    model, vae = rd.cached("model", family), rd.cached("vae", family)
    assert type(vae.first_stage_model).__name__ == FACTS[family][4]
    assert vae.latent_channels == model.model.latent_format.latent_channels
    video = FACTS[family][4] == "WanVAE" or family in VIDEO_VAES
    assert vae.latent_dim == (3 if video else 2)
    if family in HUNYUAN_VAE_CODERS:
        coders = importlib.import_module(HUNYUAN_VAE_CODERS[family])
        assert type(vae.first_stage_model.encoder) is coders.Encoder and type(vae.first_stage_model.decoder) is coders.Decoder
    latent = torch.randn(1, vae.latent_channels, *([2] if video else []), 8, 8)
    image = vae.decode(latent)
    side = 8 * getattr(model.model.latent_format, "spacial_downscale_ratio", SPATIAL.get(family, 8))   # FLUX.2: 16 (ComfyUI < 0.3.7x: no attr)
    assert image.shape[-3:] == (side, side, 3) and (not video or image.shape[1] == FRAMES.get(family, 1 + TIME.get(family, 4)))   # Wan: 4x
    assert torch.isfinite(image).all() and image.std() > 0.01
    assert rm_params(vae) < 5_000_000


def test_ltx2_audio_vae_and_text_flag_are_what_the_ltx2_loaders_give(comfy, rd):
    """LTXVAudioVAELoader's stand-in: ComfyUI's AudioVAE whose latent (channels x frequency bins) is the model's audio
    input, decoding to a stereo waveform; the text encoder flags its output as LTXAV's unprocessed Gemma features
    (the model's connectors embed it); the workflow's audio latent reads its frame rate (a MultiType widget)."""
    skip_missing("ltx2")
    model, audio = rd.cached("model", "ltx2"), rd.cached("audio_vae", "ltx2")
    assert type(audio.first_stage_model) is comfy_class("comfy.ldm.lightricks.vae.audio_vae.AudioVAE")
    first = audio.first_stage_model
    assert audio.latent_channels * first.latent_frequency_bins == model.model.diffusion_model.audio_in_channels
    wave = audio.decode(torch.randn(1, audio.latent_channels, 5, first.latent_frequency_bins))
    assert wave.shape[0] == 1 and wave.shape[-1] == 2 and torch.isfinite(wave).all() and wave.std() > 0   # (b, t, ch)
    assert rm_params(audio) < 5_000_000
    with pytest.raises(ValueError, match="no audio VAE"):
        rd.build_audio_vae("flux")
    clip = rd.cached("clip", "ltx2")
    (cond, extra), = clip.encode_from_tokens_scheduled(clip.tokenize("rain on a window"))
    assert extra.get("unprocessed_ltxav_embeds") is True and cond.shape[-1] == rd.dit_config("ltx2")["caption_channels"]
    wf_mod = importlib.import_module("nasa_runner.workflow")
    p = wf_mod.ui_to_api(load("ltx2_distilled_nasa.json"), comfy.nodes.NODE_CLASS_MAPPINGS,
                         comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    rates = {v["class_type"]: v["inputs"].get("frame_rate", v["inputs"].get("fps")) for v in p.values()
             if v["class_type"] in ("LTXVEmptyLatentAudio", "LTXVConditioning", "CreateVideo")}
    assert rates == {"LTXVEmptyLatentAudio": 24, "LTXVConditioning": 24, "CreateVideo": 24}


def rm_params(module):
    return importlib.import_module("nasa_runner.random_weights.models").parameter_count(module)


@pytest.mark.parametrize("family", sorted(FACTS))
def test_comfyuis_own_norm_classes_get_weight_one(rd, family):
    """T5LayerNorm, ComfyUI's RMSNorm, FLUX's RMSNorm 'scale', the Wan VAE's RMS_norm 'gamma' are plain
    Modules: left at 0 they would zero every activation after them (text would not reach the output)."""
    skip_missing(family)
    parts = [rd.cached("model", family).model, rd.cached("clip", family).cond_stage_model,
             rd.cached("vae", family).first_stage_model]
    seen = 0
    for part in parts:
        for module in part.modules():
            if "norm" in type(module).__name__.lower():
                for name, param in module.named_parameters(recurse=False):
                    if name in ("weight", "scale", "gamma"):
                        seen += 1
                        assert torch.all(param == 1), (family, type(module).__name__, name)
    assert seen > 0


def test_threaded_initialisation_inside_inference_mode(comfy):
    """Nodes execute in inference mode; the fill threads must write its inference tensors too, and
    give the same weights as one thread."""
    rm = importlib.import_module("nasa_runner.random_weights.models")
    with torch.inference_mode():
        modules = [torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))
                   for _ in range(2)]
        rm.init_random_weights(modules[0], 3, "t", workers=1)
        rm.init_random_weights(modules[1], 3, "t", workers=2)
    for a, b in zip(modules[0].parameters(), modules[1].parameters()):
        assert torch.equal(a, b)


def test_sentencepiece_stand_in_is_comfyuis_pile_t5_model(rd):
    """UMT5 and Gemma tokenizers come from the checkpoint; the stand-in is ComfyUI's Pile-T5 model, and
    the encoders' vocabularies are sized to it."""
    import sentencepiece
    model = rd.sentencepiece_stand_in()
    size = sentencepiece.SentencePieceProcessor(model_proto=model.numpy().tobytes()).get_piece_size()
    import comfy.supported_models as sm
    pairs = (("wan21", "umt5xxl"), ("lumina2", "gemma2_2b")) + ((("ltx2", ""),) if hasattr(sm, "LTXAV") else ())
    for family, name in pairs:   # LTX-2's Gemma 3 takes its overrides under "" (LTXAVTEModel gives it no name)
        _, configs, tokenizer_data = rd.text_encoder_configs(family)
        assert torch.equal(tokenizer_data["spiece_model"], model) and configs[name]["vocab_size"] == size


def test_hidream_llama_tokenizer_is_comfyuis_or_the_stated_stand_in(rd):
    """HiDream's Llama tokens: ComfyUI's HiDreamTokenizer where ComfyUI's Llama 3 tokenizer file is there; without it
    (a copy of ComfyUI that lacks its 9 MB file) the stand-in on CLIP's BPE files. Either way a LLAMA3Tokenizer with
    HiDream's settings (ComfyUI's HiDreamTokenizer: 128 tokens, padded with 128009), and the other three parts are
    ComfyUI's own tokenizers' tokens."""
    import comfy.text_encoders.hidream as hidream_te
    import comfy.text_encoders.hunyuan_video as hunyuan_video
    import comfy.text_encoders.sd3_clip as sd3_clip
    from comfy import sd1_clip, sdxl_clip
    cls = rd.hidream_tokenizer_class()
    assert (cls is hidream_te.HiDreamTokenizer) == os.path.isfile(rd.llama_tokenizer_file())
    assert issubclass(cls, hidream_te.HiDreamTokenizer)
    tokenizer, text = cls(), "a photo of a cat"
    assert isinstance(tokenizer.llama, hunyuan_video.LLAMA3Tokenizer)
    tokens = tokenizer.tokenize_with_weights(text)
    (llama,) = tokens["llama"]
    ids = [t for t, _ in llama]
    assert len(ids) == 128 and ids[0] == tokenizer.llama.start_token and ids[-1] == 128009 and ids[1] != 128009
    assert tokens["l"] == sd1_clip.SDTokenizer().tokenize_with_weights(text)
    assert tokens["g"] == sdxl_clip.SDXLClipGTokenizer().tokenize_with_weights(text)
    assert tokens["t5xxl"] == sd3_clip.T5XXLTokenizer(min_length=128, max_length=128).tokenize_with_weights(text)[:1]


def test_random_lora_patches_every_linear_layer_through_comfyui(rd):
    model = rd.cached("model", "wan21")
    linears = [n for n, m in model.model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)]
    patched = rd.random_lora(model, 1.0, seed=0)
    assert patched is not model and not model.patches
    assert sorted(patched.patches) == sorted(f"diffusion_model.{n}.weight" for n in linears)


# --- the workflows through the runner ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_runs_end_to_end_with_random_weights(cli, steered_output, tmp_path, name):
    """Exit 0, one output file; every loader replaced by a random-weight stand-in; NASA ran. (A family's first
    workflow: the run the other tests compare with, made once; a video's frames tapped, see :func:`tapped`.)"""
    family = WORKFLOWS[name]
    skip_missing(family)
    if ONE_PER_FAMILY[family] == name:
        r = steered_output(family)
    else:
        r = run(cli, PACK_ROOT / "workflows" / name, small(name), tmp_path, family)
    classes = [n["class_type"] for n in r.prompt.values()]
    assert not set(classes) & set(LOADERS) and "NASAApplyAttention" in classes
    assert any(c.startswith("NASA_RandomWeight") for c in classes)
    assert pixels(r.images[0]).std() > 0


@pytest.fixture(scope="module")
def plain_output(comfy, cli, tmp_path_factory):
    """Pixels of each family's workflow with the NASA node bypassed (run once per family; video: the
    frames, see :func:`tapped`)."""
    done = {}

    def get(family):
        if family not in done:
            name = ONE_PER_FAMILY[family]
            out = tmp_path_factory.mktemp(f"plain_{family}")
            r = run(cli, tapped(comfy, without_nasa(name)), small(name), out, family)
            assert "NASAApplyAttention" not in [n["class_type"] for n in r.prompt.values()]
            done[family] = frames(r)
        return done[family]
    return get


@pytest.fixture(scope="module")
def steered_output(comfy, cli, tmp_path_factory):
    """The run of each family's workflow as it is (NASA at the workflow's alpha; video: frames tapped), made once
    per family; ``.frames``: its pixels (:func:`frames`)."""
    done = {}

    def get(family):
        if family not in done:
            name = ONE_PER_FAMILY[family]
            r = run(cli, tapped(comfy, PACK_ROOT / "workflows" / name), small(name),
                    tmp_path_factory.mktemp(f"steered_{family}"), family)
            r.frames = frames(r)
            done[family] = r
        return done[family]
    return get


@pytest.mark.parametrize("family", sorted(ONE_PER_FAMILY))
def test_random_parts_run_the_workflow_without_nasa(plain_output, family):
    """The runner's model, text encoder, VAE (and LoRA) on their own: the family's workflow with the
    NASA node bypassed, so this holds whatever the state of the family's NASA adapter."""
    skip_missing(family)
    image = plain_output(family)
    assert image.std() > 0 and np.isfinite(image).all()


@pytest.mark.parametrize("family", sorted(ONE_PER_FAMILY))
def test_nasa_changes_the_output_and_alpha_zero_is_the_plain_workflow(comfy, cli, plain_output, steered_output,
                                                                     tmp_path, family):
    """alpha 0: the same pixels as without the node; the workflow's alpha: visibly different pixels."""
    skip_missing(family)
    name = ONE_PER_FAMILY[family]
    steered = steered_output(family).frames
    off = frames(run(cli, tapped(comfy, PACK_ROOT / "workflows" / name), small(name) + ["Apply NASA Attention.alpha=0"],
                     tmp_path, family))
    assert np.array_equal(off, plain_output(family))
    assert np.abs(steered.astype(int) - off.astype(int)).max() > 8


def test_lora_stand_in_strength_zero_is_no_lora_and_one_changes_the_image(cli, tmp_path):
    name = "qwen_image_lightning_8step_nasa.json"
    wf = load(name)
    bypassed = copy.deepcopy(wf)
    for node in bypassed["nodes"]:
        if node["type"] == "LoraLoaderModelOnly":
            node["mode"] = 4
    sets = small(name)
    with_lora = pixels(run(cli, wf, sets, tmp_path / "a", "qwen_image").images[0])
    zero = pixels(run(cli, wf, sets + ["LoraLoaderModelOnly.strength_model=0"], tmp_path / "b", "qwen_image").images[0])
    none = pixels(run(cli, bypassed, sets, tmp_path / "c", "qwen_image").images[0])
    assert np.array_equal(zero, none) and not np.array_equal(with_lora, none)


def test_text_encoder_of_another_family_is_refused_naming_node_type_and_fix(cli):
    name = "flux_schnell_1step_nasa.json"
    r = cli.run_workflow(PACK_ROOT / "workflows" / name, small(name), random_weights="wan21")
    assert r.exit_code == 2
    assert "node 2 (DualCLIPLoader" in r.error and "type 'flux'" in r.error
    assert "CLIPLoader with type 'wan'" in r.error and "--random-weights" in r.error


def test_dit_families_have_only_the_tiny_size(cli):
    r = cli.run_workflow(PACK_ROOT / "workflows" / "flux_schnell_1step_nasa.json", [], random_weights="flux:full")
    assert r.exit_code == 2 and "tiny size only" in r.error


def test_a_family_this_comfyui_lacks_is_refused_before_running(cli):
    """--random-weights of a family this ComfyUI lacks (Z-Image on 0.3.64) stops before running (exit 2), naming
    the missing class; where every family is there (0.33) there is nothing to refuse."""
    import comfy.supported_models as sm
    for family in sorted(set(WORKFLOWS.values())):
        config_class = support.pipeline_model_class(family)
        if hasattr(sm, config_class):
            continue
        r = cli.run_workflow(PACK_ROOT / "workflows" / "flux_schnell_1step_nasa.json", [], random_weights=family)
        assert r.exit_code == 2 and f"comfy.supported_models.{config_class}" in r.error, r.error


def test_command_line_runs_a_dit_workflow(comfy, tmp_path):
    name = "flux_schnell_1step_nasa.json"
    env = dict(os.environ, COMFYUI_PATH=str(comfy.dir))
    sets = [arg for s in small(name) for arg in ("--set", s)]
    r = subprocess.run([sys.executable, str(PACK_ROOT / "scripts" / "nasa_run.py"), str(PACK_ROOT / "workflows" / name),
                        "--random-weights", "flux", *sets, "--out", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    images = list(tmp_path.glob("nasa_flux_schnell_1step_*.png"))
    assert len(images) == 1 and str(images[0]) in r.stdout and "RANDOM WEIGHTS (flux:tiny)" in r.stderr


# --- Apply NASA Attention (Advanced) on every family ------------------------------------------------------

GROUPS = {"flux": "double, single", "chroma": "double, single", "sd35": "joint", "pixart": "blocks",
          "wan21": "blocks", "wan21_vace": "blocks", "qwen_image": "blocks", "lumina2": "layers",
          "hidream": "double, single", "anima": "blocks",
          "z_image": "layers", "klein": "double, single", "longcat_image": "double, single",
          "kandinsky5_image": "blocks", "hunyuan_image21": "double, single",
          "hunyuan_video15": "double", "ltx2": "video, audio"}   # as the Advanced node's help page documents them


def advanced(name, blocks, start=0.0, end=1.0):
    """The workflow with Apply NASA Attention swapped for the Advanced node at the same alpha (sampler's negative)."""
    wf = copy.deepcopy(load(name))
    for node in wf["nodes"]:
        if node["type"] == "NASAApplyAttention":
            alpha = node["widgets_values"][0]
            node["type"] = "NASAApplyAttentionAdvanced"
            node["inputs"] = [i for i in node["inputs"] if i["name"] == "model"]
            node["widgets_values"] = [alpha, True, start, end, 1.0, blocks]
    return wf


@pytest.mark.parametrize("family", sorted(ONE_PER_FAMILY))
def test_advanced_block_groups_of_every_family(comfy, cli, plain_output, steered_output, tmp_path, family):
    """Every documented group of the family at multiplier 0 is the plain workflow; all groups at 1 is the basic
    node's output, pixel for pixel."""
    assert set(GROUPS) == set(ONE_PER_FAMILY)
    skip_missing(family)
    name = ONE_PER_FAMILY[family]
    zero = ", ".join(f"{g}*0" for g in GROUPS[family].split(", "))
    off = frames(run(cli, tapped(comfy, advanced(name, zero)), small(name), tmp_path / "a", family))
    assert np.array_equal(off, plain_output(family))
    every = frames(run(cli, tapped(comfy, advanced(name, GROUPS[family])), small(name), tmp_path / "b", family))
    assert np.array_equal(every, steered_output(family).frames) and not np.array_equal(every, off)
