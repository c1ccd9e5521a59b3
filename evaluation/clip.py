"""A CLIP model for the evaluation's scores, loaded from a folder on the user's disk (never downloaded).

The folder is a Hugging Face ``transformers`` CLIP checkpoint as ``save_pretrained`` writes it or as the Hub
stores it (``config.json``, the weights, ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``), e.g. a local copy
of ``openai/clip-vit-large-patch14``. Images arrive as ComfyUI's IMAGE tensors (B, H, W, 3) in [0, 1] and are
prepared as CLIP's image processor prepares them: the shorter side resized to the model's input size (bicubic,
antialiased), a centre crop, CLIP's mean and standard deviation. Texts are tokenized to CLIP's 77 tokens,
truncated.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


CLIP_LOGIT_SCALE = 100.0      # CLIP's trained logit scale (exp of its logit_scale); ComfyUI's files do not keep it
# width -> (attention heads, activation) of each tower, as ComfyUI's configurations of ViT-B/L (OpenAI), H and bigG
VISION_WIDTHS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
TEXT_WIDTHS = {512: (8, "quick_gelu"), 768: (12, "quick_gelu"), 1024: (16, "gelu"), 1280: (20, "gelu")}


class ClipLoadError(ValueError):
    pass


def load_tokenizer(folder, flag: str):
    """CLIP's tokenizer from ``folder`` (vocab.json + merges.txt, or tokenizer.json); ``flag``: the option that
    needs it, for the error."""
    from transformers import CLIPTokenizerFast
    folder = Path(folder) if folder else None
    if folder is None or not ((folder / "tokenizer.json").is_file()
                              or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        raise ClipLoadError(f"{flag}: no CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json) in "
                            f"{folder}")
    return CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)


def _state_file(path, flag: str, *needed: str) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ClipLoadError(f"{flag} {path}: no such file")
    try:
        from safetensors.torch import load_file
        state = load_file(str(path)) if path.suffix in (".safetensors", ".sft") else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:          # a torn download, a pickle that is not plain tensors, another format
        raise ClipLoadError(f"{flag} {path}: cannot read its weights ({type(e).__name__}: {e})") from None
    missing = [k for k in needed if k not in state] if isinstance(state, dict) else list(needed)
    if missing:
        raise ClipLoadError(f"{flag} {path}: not the {'vision' if 'vision' in flag else 'text'} half of a CLIP in "
                            f"transformers' layout: no {', '.join(missing)}" + (
                                " (a text encoder without CLIP's projection, as SD1.5 checkpoints keep it, cannot "
                                "be compared with images)" if "text_projection.weight" in missing else ""))
    return {k: v.float() for k, v in state.items()}


def _count(state: Dict[str, torch.Tensor], tower: str) -> int:
    prefix = f"{tower}.encoder.layers."
    return 1 + max(int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix))


def model_from_state(state: Dict[str, torch.Tensor], heads: Tuple[int, int], acts: Tuple[str, str], what: str,
                     logit_scale: Optional[float] = None):
    """A transformers CLIPModel holding ``state`` (transformers' layout), its sizes read from the weights;
    ``heads``/``acts``: (vision, text), which the weights do not hold; ``logit_scale``: for weights without one."""
    from transformers import CLIPConfig, CLIPModel
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    tokens = state["text_model.embeddings.token_embedding.weight"]
    config = CLIPConfig(
        vision_config=dict(hidden_size=patch.shape[0], patch_size=patch.shape[-1],
                           intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                           image_size=int(round((positions - 1) ** 0.5)) * patch.shape[-1],
                           num_hidden_layers=_count(state, "vision_model"), num_attention_heads=heads[0],
                           hidden_act=acts[0]),
        text_config=dict(hidden_size=tokens.shape[1], vocab_size=tokens.shape[0],
                         intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                         max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
                         num_hidden_layers=_count(state, "text_model"), num_attention_heads=heads[1],
                         hidden_act=acts[1], bos_token_id=49406, eos_token_id=49407),
        projection_dim=state["visual_projection.weight"].shape[0],
        **({} if logit_scale is None else {"logit_scale_init_value": math.log(logit_scale)}))
    model = CLIPModel(config)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if not k.endswith("position_ids") and not (k == "logit_scale" and logit_scale is not None)]
    if missing or result.unexpected_keys:
        raise ClipLoadError(f"{what}: the weights do not fill a CLIP of their own shape (missing {missing[:4]}, "
                            f"unexpected {result.unexpected_keys[:4]})")
    return model


def prepare_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> CLIP pixel values (B, 3, size, size), float32."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"evaluation.clip: images must be ComfyUI IMAGE tensors (B, H, W, 3), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    x = images.float().movedim(-1, 1).clamp(0, 1)
    h, w = x.shape[-2:]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)     # as CLIP's processor rounds
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


class ClipScorer:
    """Image and text embeddings of one CLIP model (projected, as CLIP compares them) and its logit scale."""

    def __init__(self, model, tokenizer, device="cpu", source: str = "CLIP model"):
        self.model = model.eval().float().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.source = source
        self.image_size = int(model.config.vision_config.image_size)
        self.logit_scale = float(model.logit_scale.detach().exp())

    @classmethod
    def from_folder(cls, folder, device="cpu") -> "ClipScorer":
        """The CLIP checkpoint in ``folder``; an error naming the folder and what is missing otherwise."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ClipLoadError(f"--clip {folder}: not a transformers CLIP folder (no config.json). Give the folder "
                                "of a CLIP checkpoint on this disk, e.g. a copy of openai/clip-vit-large-patch14.")
        try:
            from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast
            config = CLIPConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ClipLoadError(f"--clip {folder}: its config.json is not a CLIP configuration ({e})") from None
        if getattr(config, "model_type", None) != "clip":
            raise ClipLoadError(f"--clip {folder}: config.json describes a {config.model_type!r} model, not CLIP")
        if not ((folder / "tokenizer.json").is_file()
                or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
            raise ClipLoadError(f"--clip {folder}: no CLIP tokenizer files (vocab.json + merges.txt, or "
                                "tokenizer.json) beside its config.json")
        tokenizer = CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
        except OSError as e:
            raise ClipLoadError(f"--clip {folder}: no CLIP weights (model.safetensors or pytorch_model.bin) "
                                f"({e})") from None
        return cls(model, tokenizer, device, source=str(folder))

    @classmethod
    def from_files(cls, vision, text, tokenizer_folder, device="cpu", heads: Optional[Tuple[int, int]] = None,
                   acts: Optional[Tuple[str, str]] = None) -> "ClipScorer":
        """A CLIP put together from the two halves ComfyUI users keep as files: a CLIP vision model
        (``models/clip_vision``: ``vision_model.*`` + ``visual_projection.weight``) and the text encoder of the same
        CLIP (``models/text_encoders``: ``text_model.*`` + ``text_projection.weight``), e.g. ``clip_vision_g`` with
        SDXL's ``clip_g``. The sizes come from the weights; the heads and activations (not in the weights) from
        the width, as ComfyUI's own configurations give them (``heads``/``acts``: (vision, text) to override);
        the logit scale is CLIP's 100 (the files do not keep it). ``tokenizer_folder``: CLIP's vocab.json +
        merges.txt (ComfyUI's ``comfy/sd1_tokenizer``)."""
        v = _state_file(vision, "--clip-vision", "vision_model.embeddings.patch_embedding.weight",
                        "visual_projection.weight")
        t = _state_file(text, "--clip-text", "text_model.embeddings.token_embedding.weight", "text_projection.weight")
        v_width, t_width = v["visual_projection.weight"].shape[1], t["text_projection.weight"].shape[1]
        if v["visual_projection.weight"].shape[0] != t["text_projection.weight"].shape[0]:
            raise ClipLoadError(f"--clip-vision {vision} / --clip-text {text}: they project to "
                                f"{v['visual_projection.weight'].shape[0]} and {t['text_projection.weight'].shape[0]} "
                                "dimensions: not the two halves of one CLIP")
        known = heads is not None and acts is not None
        if not known and (v_width not in VISION_WIDTHS or t_width not in TEXT_WIDTHS):
            raise ClipLoadError(f"--clip-vision {vision} / --clip-text {text}: a CLIP of widths {v_width} / "
                                f"{t_width} is none of ViT-B, ViT-L, ViT-H, ViT-bigG; use a transformers CLIP folder "
                                "with --clip")
        heads = heads or (VISION_WIDTHS[v_width][0], TEXT_WIDTHS[t_width][0])
        acts = acts or (VISION_WIDTHS[v_width][1], TEXT_WIDTHS[t_width][1])
        weights = {k: w for k, w in {**v, **t}.items() if k.startswith(("vision_model.", "text_model.",
                                                                         "visual_projection.", "text_projection."))}
        model = model_from_state(weights, heads, acts, f"--clip-vision {vision} / --clip-text {text}",
                                 logit_scale=CLIP_LOGIT_SCALE)
        return cls(model, load_tokenizer(tokenizer_folder, "--clip-text"), device,
                   source=f"CLIP {Path(vision).name} + {Path(text).name}")

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) image embeddings of ComfyUI IMAGE tensors."""
        pixels = prepare_images(images, self.image_size).to(self.device)
        return self.model.get_image_features(pixel_values=pixels).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) text embeddings, each text truncated to CLIP's context."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("evaluation.clip: embed_texts takes a list of texts")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self.model.get_text_features(**tokens).float().cpu()
