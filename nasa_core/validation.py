"""Input checks shared by every host integration; messages name who raised them."""
from __future__ import annotations

import math

import torch


def check_alpha(alpha, where: str, low: float = 0.0, high: float = 2.0) -> float:
    """alpha must be a finite number in [low, high]."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: alpha must be a number, got {alpha!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: alpha is {value}; it must be a finite number between {low} and {high}.")
    if value > high:
        raise ValueError(f"{where}: alpha {value} is above the maximum {high}.")
    if value < low:
        raise ValueError(f"{where}: alpha {value} is below the minimum {low}.")
    return value


def check_finite(t: torch.Tensor, where: str, what: str) -> None:
    """Raise if a conditioning tensor holds NaN or inf (it would poison every steered layer)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{where}: {what} contains {bad} non-finite values (NaN or inf). "
                         f"Re-encode the prompt, or check the node that produced it.")
