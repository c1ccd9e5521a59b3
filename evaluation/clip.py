"""A CLIP model for the evaluation's scores, loaded from a folder on the user's disk (never downloaded).

The folder is a Hugging Face ``transformers`` CLIP checkpoint as ``save_pretrained`` writes it or as the Hub
stores it (``config.json``, the weights, ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``), e.g. a local copy
of ``openai/clip-vit-large-patch14``. Images arrive as ComfyUI's IMAGE tensors (B, H, W, 3) in [0, 1] and are
prepared as CLIP's image processor prepares them: the shorter side resized to the model's input size (bicubic,
antialiased), a centre crop, CLIP's mean and standard deviation. Texts are tokenized to CLIP's 77 tokens,
truncated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipLoadError(ValueError):
    pass


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
