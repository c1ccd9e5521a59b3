"""The paper's image-text metrics on embeddings: CLIP+ / CLIP- and the zero-shot removal judge. Pure torch.

Section 6 of the paper scores prompt pairs with CLIP: **CLIP+** is the cosine similarity of an image's embedding
with its positive prompt's, **CLIP-** with its negative prompt's (the paper's Table 3 reports both on a 0-1 scale,
CLIP+ 0.31-0.36, CLIP- 0.05-0.13); a negative that is honoured lowers CLIP- and keeps CLIP+. Table 2's *removal
success* is the share of images in which the negative's feature is absent; here it is judged zero-shot with the same
CLIP: an image shows the feature when its embedding is closer to a caption that names the feature ("present") than
to one that does not ("absent"), a two-way softmax at CLIP's logit scale (:func:`present_probability`).

Every function takes embeddings as an encoder returns them (any float dtype, not necessarily normalised) and
computes in float64; the image and text rows pair up one to one (a single text row is broadcast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Tuple

import torch

CLIP_LOGIT_SCALE = 100.0
"""exp of CLIP's learned temperature as the released OpenAI and OpenCLIP models end training (clamped at 100)."""


def _rows(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() not in (1, 2) or t.shape[-1] == 0:
        raise ValueError(f"nasa_core.metrics: {name} must be embeddings of shape (N, D) or (D,), got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    t = t.double()
    if not torch.isfinite(t).all():
        raise ValueError(f"nasa_core.metrics: {name} holds NaN or infinite values")
    return t if t.dim() == 2 else t[None]


def cosine(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image row with its text row (or with the one text row): (N,) float64. A zero
    embedding is an error, not a similarity of 0."""
    img, txt = _rows("image_embeds", image_embeds), _rows("text_embeds", text_embeds)
    if txt.shape[0] not in (1, img.shape[0]) or txt.shape[1] != img.shape[1]:
        raise ValueError(f"nasa_core.metrics: {img.shape[0]} image embeddings of width {img.shape[1]} cannot pair "
                         f"with {txt.shape[0]} text embeddings of width {txt.shape[1]} (one per image, or one)")
    norms = img.norm(dim=1) * txt.norm(dim=1)
    if (norms == 0).any():
        raise ValueError("nasa_core.metrics: an embedding is all zeros; its cosine similarity is undefined")
    return (img * txt).sum(dim=1) / norms


def clip_scores(image_embeds: torch.Tensor, positive_embeds: torch.Tensor,
                negative_embeds: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(CLIP+, CLIP-) per image: cosine with the positive prompt's embedding and with the negative's."""
    return cosine(image_embeds, positive_embeds), cosine(image_embeds, negative_embeds)


def present_probability(image_embeds: torch.Tensor, present_embeds: torch.Tensor, absent_embeds: torch.Tensor,
                        logit_scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """Zero-shot probability that each image shows a feature: the softmax over the two captions' logits
    (``logit_scale`` x cosine), the one that names the feature against the one that does not. (N,) float64."""
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"nasa_core.metrics: logit_scale must be a positive number, got {logit_scale!r}")
    return torch.sigmoid(logit_scale * (cosine(image_embeds, present_embeds) - cosine(image_embeds, absent_embeds)))


def removed(p_present: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Removal success per image: the feature judged absent (probability present below ``threshold``)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"nasa_core.metrics: threshold must be in (0, 1), got {threshold!r}")
    return p_present < threshold


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` per-image values and the half-width of its normal-approximation 95% interval (0 for n < 2)."""
    n: int
    mean: float
    ci95: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def summarize(values: Iterable[float]) -> Summary:
    """Mean and 95% interval (1.96 x the sample standard deviation / sqrt(n)) of per-image values."""
    v = torch.as_tensor([float(x) for x in values], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("nasa_core.metrics: nothing to summarize (no images scored)")
    if not torch.isfinite(v).all():
        raise ValueError("nasa_core.metrics: a per-image value is NaN or infinite")
    n = v.numel()
    ci = 1.96 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return Summary(n, float(v.mean()), ci)
