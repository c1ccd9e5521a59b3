"""What the NASA nodes take as a negative, validated where it enters (touches ComfyUI's CONDITIONING format only).

Names: a :class:`NegativeInput` is a negative as a node hands it over (NASA Negative; Apply NASA Attention's
``negative`` becomes one); :func:`make_carried_negative` puts one on a positive prompt's conditioning under
:data:`CARRIED_KEY` (NASA Negative Conditioning). When sampling starts, :mod:`.sampler` resolves each into a
:class:`.run.NegativePrompt`. Every check raises a ValueError naming the node, the input and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..nasa_core import check_alpha, check_finite

CARRIED_KEY = "nasa_negative"   # conditioning-dict key written by NASA Negative Conditioning


@dataclass
class NegativeInput:
    """A negative as a node hands it over: one item of a NASA_NEGATIVES list (NASA Negative node), resolved into a
    :class:`.run.NegativePrompt` when a sampling run starts."""
    entries: list                       # validated [tensor, dict] conditioning entries
    alpha: Optional[float]              # None = the alpha of the node that applies it
    mask: Optional[torch.Tensor] = None     # (frames, H, W) float in [0, 1], or None


def conditioning_entries(conditioning, node: str, input_name: str, single_batch: bool = False) -> list:
    """Validate a CONDITIONING value and return its [tensor, dict] entries.

    ``single_batch``: each entry must hold one prompt (batch 1), as a negative must: the same negative
    steers every image of the batch."""
    if conditioning is None:
        raise ValueError(f"{node}: '{input_name}' is not connected.")
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{node}: '{input_name}' is empty (no conditioning entries). Connect a CLIP Text Encode "
                         f"output with your negative prompt.")
    out = []
    for i, entry in enumerate(conditioning):
        if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not isinstance(entry[0], torch.Tensor):
            raise ValueError(f"{node}: '{input_name}' entry {i} is not a conditioning [tensor, options] pair.")
        t = entry[0]
        if t.ndim != 3 or t.shape[1] == 0:
            raise ValueError(f"{node}: '{input_name}' entry {i} has shape {tuple(t.shape)}; expected "
                             f"(batch, tokens>0, width) from a text encoder.")
        if single_batch:
            check_single_batch(t, node, f"'{input_name}'")
        check_finite(t, node, f"'{input_name}'")
        out.append((t, entry[1] if isinstance(entry[1], dict) else {}))
    return out


def check_single_batch(t: torch.Tensor, node: str, what: str) -> None:
    if t.shape[0] != 1:
        raise ValueError(f"{node}: {what} holds a batch of {t.shape[0]} prompts; a negative must be a single prompt "
                         f"(batch 1) - it steers every image of the batch. Encode one negative with CLIP Text Encode.")


def check_width(t: torch.Tensor, context_dim, family: str, node: str, what: str) -> None:
    """``context_dim``: the width the model takes, a tuple of the widths it takes, or None (any)."""
    widths = context_dim if isinstance(context_dim, tuple) else (context_dim,)
    if context_dim is not None and t.shape[-1] not in widths:
        expects = " or ".join(str(w) for w in widths)
        raise ValueError(
            f"{node}: {what} is {t.shape[-1]} wide but this {family} model's text input expects {expects}. "
            f"The negative was encoded with a different text encoder than the model's (CLIP and T5 outputs "
            f"differ in width): encode it with the same text encoder as the positive prompt (the CLIP output of "
            f"this model's checkpoint or CLIP loader).")


def check_inputs(negatives, node: str) -> list:
    """A NASA_NEGATIVES value (a non-empty list of :class:`NegativeInput`) as a list."""
    if not isinstance(negatives, (list, tuple)) or not negatives or \
            not all(isinstance(n, NegativeInput) for n in negatives):
        raise ValueError(f"{node}: 'negatives' must come from a NASA Negative node (got {type(negatives).__name__}).")
    return list(negatives)


def check_same_encoder(entries, widths: set, node: str, others: str, fix: str) -> None:
    """Every entry of a negative has one of ``widths`` (those of the conditioning it goes with), if any."""
    for t, _ in entries:
        if widths and t.shape[-1] not in widths:
            raise ValueError(f"{node}: 'negative' is {t.shape[-1]} wide but {others} {sorted(widths)[0]} wide: they "
                             f"come from different text encoders. {fix}")


def make_carried_negative(conditioning, negative, alpha, node: str):
    """NASA Negative Conditioning: a copy of ``conditioning`` whose entries carry ``negative``."""
    pos = conditioning_entries(conditioning, node, "conditioning")
    neg = conditioning_entries(negative, node, "negative", single_batch=True)
    if alpha is not None:
        alpha = check_alpha(alpha, node, low=-float("inf"))     # finite, at most 2; any negative value = inherit
        alpha = None if alpha < 0 else alpha
    check_same_encoder(neg, {t.shape[-1] for t, _ in pos}, node, "'conditioning' is",
                        "Encode the negative with the same CLIP as the positive prompt.")
    carried = {"entries": neg, "alpha": alpha}
    return [[t, {**opts, CARRIED_KEY: carried}] for t, opts in pos]


def make_negatives(negative, alpha, mask=None, previous=None, node: str = "NASA Negative") -> list:
    """NASA Negative: ``previous`` (a NASA_NEGATIVES list, or None) plus one negative with its own alpha
    (negative alpha = the applying node's) and optional MASK (its region: (H, W) or (frames, H, W), 0..1)."""
    entries = conditioning_entries(negative, node, "negative", single_batch=True)
    alpha = check_alpha(alpha, node, low=-float("inf"))
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
            raise ValueError(f"{node}: 'mask' must be a MASK (height, width) or (frames, height, width); got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}. Connect a mask from Load Image (its "
                             f"mask output), SolidMask or a mask editor.")
        mask = mask.detach().float().cpu()
        mask = mask[None] if mask.ndim == 2 else mask
        check_finite(mask, node, "'mask'")
        if float(mask.min()) < 0.0 or float(mask.max()) > 1.0:
            raise ValueError(f"{node}: 'mask' has values in [{float(mask.min()):g}, {float(mask.max()):g}]; a mask "
                             f"must lie in [0, 1] (1 = steer here). Normalise it (e.g. ThresholdMask).")
    items = [] if previous is None else list(previous)
    if not all(isinstance(n, NegativeInput) for n in items):
        raise ValueError(f"{node}: 'negatives' must come from another NASA Negative node.")
    check_same_encoder(entries, {t.shape[-1] for s in items for t, _ in s.entries}, node,
                        "the chained negatives are", "Encode every negative with the same CLIP as the positive prompt.")
    return items + [NegativeInput(entries, None if alpha < 0 else alpha, mask)]
