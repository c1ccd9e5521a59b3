"""The toy world's models, built from ComfyUI's own classes at a tiny size.

* text encoder: ComfyUI's SD1.x CLIP (``comfy.sd.CLIP`` with the real CLIP tokenizer), 64 wide,
  2 layers, seeded random weights, frozen (ComfyUI's CLIP layers add in place, so they cannot be
  trained through; the UNet learns to read the random encoder, as a UNet reads a frozen CLIP);
* diffusion model: ComfyUI's ``BaseModel`` around its SD UNet (``openaimodel.UNetModel``) on SD1.5's
  noise schedule (teacher eps-prediction, student v-prediction), 32 base channels, levels 24/12/6 px
  with cross-attention on the two lower levels and the middle block (7 cross-attention layers);
* "VAE": ComfyUI's pixel-space VAE (``comfy.sd.VAE`` with ``pixel_space_vae``): the model works
  directly on 24x24 RGB pixels, latent format ChromaRadiance's identity 3-channel format declared 8x
  downscaled (:func:`.build.latent_format`): a stock EmptyLatentImage of 192x192 is a 24x24 latent on every ComfyUI
  version (ComfyUI divides by 8 and fills the channels).

Weights are safetensors files in ``toy/weights`` (float16 on disk, float32 in memory); each
file's metadata holds its configs, so :func:`load_checkpoint` needs nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import mmdit
from .build import default_init, float32, half, latent_format, patcher

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLIP_FILE = "toy_clip.safetensors"
MODEL_FILES = {
    "teacher (multi-step)": "toy_teacher.safetensors",
    "student v3 (one-step)": "toy_student_v3.safetensors",
    "student SBv2 (one-step)": "toy_student_sbv2.safetensors",
    "student NASA-T (one-step)": "toy_student_nasat.safetensors",
}
"""Loader choices -> UNet files. The CLIP file is shared by all of them. "student v3" is the SBv2 student fine-tuned
with a LoRA teacher that also adapts the convolutions (v2), then 200 steps more at a lower learning rate
(docs/toy-world.md, "The student's own quality"): few defects at one step and most of the prompt kept, where the
first SBv2 student's one-step images are blurry."""
MMDIT_TEACHER = "MMDiT teacher (multi-step)"
MMDIT_STUDENT = "MMDiT student v3 (one-step)"
MMDIT_SBV2, MMDIT_V2 = "MMDiT student SBv2 (one-step)", "MMDiT student v2 (one-step)"
MMDIT_FILES = {
    MMDIT_TEACHER: "toy_mmdit_teacher.safetensors",
    MMDIT_STUDENT: "toy_mmdit_student_v3.safetensors",
}
"""Loader choices -> the FLUX-class toy model's files (:mod:`.mmdit`); same CLIP file. "MMDiT student v3" is its
first SBv2 student fine-tuned at one step without DMD's regression loss and with the LoRA teacher updated four
times per student step (v2), then 200 steps more at a third of the learning rate (docs/toy-world.md): as few
one-step defects as the teacher's 8-step images, where the first student's were blurry and noisy."""
STAGE_FILES = {"student v2 (one-step)": "toy_student_v2.safetensors",
               MMDIT_SBV2: "toy_mmdit_student_sbv2.safetensors", MMDIT_V2: "toy_mmdit_student_v2.safetensors"}
"""Students a preset builds on the way to a shipped one (``train.PRESETS``), not shipped (the toy set stays small)."""
TRAINED_FILES = {**MODEL_FILES, **MMDIT_FILES, **STAGE_FILES}
"""Every model a ``train.PRESETS`` recipe starts from or writes -> its file name."""
ALL_FILES = {**MODEL_FILES, **MMDIT_FILES}
REBUILD = {
    "student v2 (one-step)": "train-student --preset v2",
    "student v3 (one-step)": "train-student --preset v2, then train-student --preset v3 (the same --out)",
    "student NASA-T (one-step)": "train-student --preset nasa-t",
    MMDIT_TEACHER: "train-teacher --arch mmdit",
    MMDIT_SBV2: "train-student --arch mmdit --steps 500 --warm-steps 100 --batch 24 --pool-size 512",
    MMDIT_V2: "train-student --preset mmdit-v2",
    MMDIT_STUDENT: "train-student --preset mmdit-v2, then train-student --preset mmdit-v3 (the same --out)",
}
"""The ``scripts/nasa_toy.py`` command that rebuilds a loader choice, where it is not plain train-teacher or
train-student (named in the error for a missing file; the presets are ``train.PRESETS``)."""

UNET_CONFIG = {
    "image_size": 32, "in_channels": 3, "out_channels": 3, "model_channels": 32,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2],
    "transformer_depth": [0, 1, 1], "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "context_dim": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
    "legacy": False, "adm_in_channels": None, "use_checkpoint": False,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
HEAD_CONFIG = {"num_heads": -1, "num_head_channels": 16}
TEXT_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_hidden_layers": 2, "projection_dim": 64}


def _config_class():
    import comfy.supported_models

    class ToyPixelSD(comfy.supported_models.SD15):
        """SD1.5's noise schedule, in pixel space; eps- or v-prediction (``prediction``)."""
        latent_format = latent_format()
        unet_config = {}
        prediction = "eps"

        def model_type(self, state_dict, prefix=""):
            import comfy.model_base
            return {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[self.prediction]

    return ToyPixelSD


PREDICTIONS = ("eps", "v")


def model_config(unet_config: Optional[dict] = None, prediction: str = "eps"):
    if prediction not in PREDICTIONS:
        raise ValueError(f"toy model prediction must be one of {PREDICTIONS}, not {prediction!r}")
    config = _config_class()(dict(unet_config or UNET_CONFIG))
    config.prediction = prediction
    config.unet_config.update(HEAD_CONFIG)
    return float32(config)


def build_model(state_dict: Optional[Dict[str, torch.Tensor]] = None, seed: int = 0, unet_config: Optional[dict] = None,
                prediction: str = "eps"):
    """A ComfyUI ModelPatcher around the toy UNet: ``state_dict`` (diffusion_model keys) or a seeded init."""
    return patcher(model_config(unet_config, prediction).get_model({}, ""), state_dict, seed, default_init, "UNet")


def build_clip(state_dict: Optional[Dict[str, torch.Tensor]] = None, seed: int = 0):
    """ComfyUI's SD1.x CLIP (real tokenizer) at the toy width; ``state_dict`` = its cond_stage_model keys."""
    import comfy.sd
    target = _config_class()(dict(UNET_CONFIG)).clip_target()
    options = {"dtype": torch.float32, "clip_l_model_config": dict(TEXT_CONFIG),
               "initial_device": torch.device("cpu")}
    clip = comfy.sd.CLIP(target=target, model_options=options)
    model = clip.cond_stage_model
    if state_dict is None:
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            with torch.no_grad():
                if "token_embedding" in name:
                    param.normal_(0.0, 1.0)
                elif "position_embedding" in name:
                    param.normal_(0.0, 0.3)
                elif param.dim() >= 2:
                    param.normal_(0.0, 1.0 / param.shape[1] ** 0.5)
                elif "norm" in name and name.endswith("weight"):
                    param.fill_(1.0)
                else:
                    param.zero_()
    else:
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
        missing = [k for k in missing if not k.endswith(("logit_scale", "position_ids"))]
        if missing or unexpected:
            raise ValueError(f"toy CLIP weights do not match the toy config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return clip


def build_vae():
    """ComfyUI's pixel-space VAE: IMAGE [0, 1] <-> 3-channel latent [-1, 1], no weights."""
    import comfy.sd
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})


class TextEncoder:
    """Batched encoding of prompts with the frozen toy CLIP, equal to CLIPTextEncode's output, cached
    per prompt (the toy world has a few thousand distinct captions).

    ComfyUI's CLIPTextEncode tokenizes with the real tokenizer and runs the same SDClipModel; with
    unweighted prompts of one 77-token chunk that is exactly ``clip_l(token ids)``.
    """

    def __init__(self, clip, pooled: bool = False):
        self.clip = clip
        self.pooled = pooled
        self.module = clip.cond_stage_model.clip_l
        self._tokens: Dict[str, List[int]] = {}
        self._cache: Dict[str, torch.Tensor] = {}
        self._pooled: Dict[str, torch.Tensor] = {}

    def tokens(self, prompt: str) -> List[int]:
        if prompt not in self._tokens:
            chunks = self.clip.tokenize(prompt)["l"]
            if len(chunks) != 1:
                raise ValueError(f"toy prompts must fit one 77-token chunk: {prompt!r}")
            self._tokens[prompt] = [t for t, _ in chunks[0]]
        return self._tokens[prompt]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]):
        """(B, 77, 64) hidden states; with ``pooled`` the FLUX-class model's conds
        ``{"c_crossattn": hidden, "y": projected pooled (B, 64)}`` (CLIPTextEncode's pooled_output)."""
        new = sorted({p for p in prompts if p not in self._cache})
        if new:
            out = self.module([self.tokens(p) for p in new])
            for i, p in enumerate(new):
                self._cache[p] = out[0][i].float()
                self._pooled[p] = out[1][i].float()
        hidden = torch.stack([self._cache[p] for p in prompts])
        if not self.pooled:
            return hidden
        return {"c_crossattn": hidden, "y": torch.stack([self._pooled[p] for p in prompts])}


def eps(diffusion_model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **kwargs) -> torch.Tensor:
    """The UNet's noise prediction at VP-scaled input x_t = sqrt(a) x0 + sqrt(1 - a) eps, timestep t."""
    return diffusion_model(x_t, t.float(), context=cond, **kwargs)


def save_unet(path, diffusion_model: torch.nn.Module, info: dict, prediction: str = "eps") -> None:
    from safetensors.torch import save_file
    meta = {"nasa_toy": "unet", "unet_config": json.dumps(UNET_CONFIG), "prediction": prediction,
            "info": json.dumps(info)}
    save_file(half(diffusion_model.state_dict()), str(path), metadata=meta)


def save_clip(path, clip, info: dict) -> None:
    from safetensors.torch import save_file
    sd = {k: v for k, v in clip.cond_stage_model.state_dict().items()
          if not k.endswith(("logit_scale", "position_ids"))}
    meta = {"nasa_toy": "clip", "text_config": json.dumps(TEXT_CONFIG), "info": json.dumps(info)}
    save_file(half(sd), str(path), metadata=meta)


def read_file(path, kind: str, rebuild: str):
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy {kind} weights not found at {path}; restore them from the pack's git "
                                f"repository or rebuild them with `python scripts/nasa_toy.py {rebuild}`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("nasa_toy") not in (("clip",) if kind == "clip" else ("unet", "mmdit")):
        raise ValueError(f"{path} is not a NASA toy {kind} file (metadata nasa_toy={meta.get('nasa_toy')!r})")
    return load_file(str(path)), meta


def load_unet(path, rebuild: str = "train-student"):
    """``(model, info)``: a toy diffusion model file (UNet or MMDiT) as a ComfyUI ModelPatcher (frozen)."""
    unet_sd, meta = read_file(path, "model", rebuild)
    if meta["nasa_toy"] == "mmdit":
        model = mmdit.build_model(unet_sd, flux_config=json.loads(meta["flux_config"]))
    else:
        model = build_model(unet_sd, unet_config=json.loads(meta["unet_config"]),
                            prediction=meta.get("prediction", "eps"))
    model.model.requires_grad_(False)
    return model, json.loads(meta.get("info", "{}"))


def load_checkpoint(choice: str, weights_dir=WEIGHTS_DIR):
    """``(model, clip, vae, info)`` of a shipped toy model ("teacher (multi-step)", ...)."""
    if choice not in ALL_FILES:
        raise ValueError(f"unknown toy model {choice!r}; expected one of {list(ALL_FILES)}")
    weights_dir = Path(weights_dir)
    rebuild = REBUILD.get(choice, "train-teacher" if "teacher" in choice else "train-student")
    model, info = load_unet(weights_dir / ALL_FILES[choice], rebuild)
    clip_sd, _ = read_file(weights_dir / CLIP_FILE, "clip", "train-teacher")
    clip = build_clip(clip_sd)
    clip.cond_stage_model.requires_grad_(False)
    return model, clip, build_vae(), info
