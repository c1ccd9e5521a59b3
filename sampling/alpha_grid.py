"""The NASA Alpha Grid: one seed rendered over a list of alphas (and optionally block selections) as one
labeled image grid (the paper's Fig. 4/7), for the NASA Alpha Grid node (touches ComfyUI internals).

Every cell is exactly what Apply NASA Attention (Advanced) -> KSampler -> VAE Decode gives for that alpha
and block selection: the same ``nodes.common_ksampler`` the stock KSampler runs, the same seed.
"""
from __future__ import annotations

import re
from typing import List

import numpy as np
import torch

from ..adapters import apply_nasa
from ..nasa_core import check_alpha

MAX_CELLS = 64
LABEL_HEIGHT = 18


def sampler_options() -> tuple:
    """ComfyUI's sampler and scheduler names, for the node's combos."""
    import comfy.samplers
    return comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def parse_alphas(text: str, node: str) -> List[float]:
    items = [t for t in re.split(r"[,;\s]+", str(text or "").strip()) if t]
    if not items:
        raise ValueError(f"{node}: 'alphas' is empty. List the alphas to compare, e.g. '0, 0.1, 0.2, 0.4'.")
    out = []
    for t in items:
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"{node}: 'alphas': '{t}' is not a number. Write numbers separated by commas, "
                             f"e.g. '0, 0.1, 0.2, 0.4'.") from None
        out.append(check_alpha(value, f"{node}: 'alphas'"))
    return out


def parse_block_sets(text: str) -> List[str]:
    """One block selection per line; an empty input (or an empty line alone) = every block."""
    lines = [line.strip() for line in str(text or "").splitlines()]
    lines = [line for line in lines if line]
    return lines or [""]


def _label(image: torch.Tensor, text: str) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (H + LABEL_HEIGHT, W, 3) with ``text`` on a white strip above it."""
    from PIL import Image, ImageDraw, ImageFont
    w = image.shape[1]
    strip = Image.new("RGB", (w, LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((3, 3), text, fill="black", font=ImageFont.load_default())
    top = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)
    return torch.cat((top, image[..., :3].float().cpu()), dim=0)


def _grid(cells: List[List[torch.Tensor]], gap: int = 4) -> torch.Tensor:
    rows = []
    for row in cells:
        pad = torch.ones(row[0].shape[0], gap, 3)
        parts = []
        for i, cell in enumerate(row):
            parts += [pad, cell] if i else [cell]
        rows.append(torch.cat(parts, dim=1))
    width = max(r.shape[1] for r in rows)
    rows = [torch.cat((r, torch.ones(r.shape[0], width - r.shape[1], 3)), dim=1) for r in rows]
    out = []
    for i, r in enumerate(rows):
        out += [torch.ones(gap, width, 3), r] if i else [r]
    return torch.cat(out, dim=0)[None]


def alpha_grid(model, positive, negative, latent: dict, vae, seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, alphas: str, block_sets: str = "", negatives=None, labels: bool = True,
               node: str = "NASA Alpha Grid"):
    """(grid (1, H, W, 3), cells (N, h, w, 3)): rows = block selections, columns = alphas."""
    import nodes as comfy_nodes    # ComfyUI's module, not this pack's nodes/
    values = parse_alphas(alphas, node)
    sets = parse_block_sets(block_sets)
    if len(values) * len(sets) > MAX_CELLS:
        raise ValueError(f"{node}: {len(values)} alphas x {len(sets)} block sets = {len(values) * len(sets)} images; "
                         f"the grid renders at most {MAX_CELLS}. Shorten 'alphas' or 'block_sets'.")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None:
        raise ValueError(f"{node}: 'latent_image' is not a LATENT. Connect Empty Latent Image or a VAE Encode.")
    if samples.shape[0] != 1:
        raise ValueError(f"{node}: 'latent_image' holds a batch of {samples.shape[0]}; the grid shows one image per "
                         f"alpha. Use batch_size 1.")
    # every cell's model first: a bad block set or negative is reported before anything renders
    models = [[apply_nasa(model, negatives=negatives, alpha=alpha, use_sampler_negative=negatives is None, node=node,
                          blocks=blocks) for alpha in values] for blocks in sets]
    rows, flat = [], []
    for blocks, row_models in zip(sets, models):
        row = []
        for alpha, m in zip(values, row_models):
            out = comfy_nodes.common_ksampler(m, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)[0]
            image = vae.decode(out["samples"])
            image = image.reshape(-1, *image.shape[-3:])[0]       # video VAEs decode (B, T, H, W, C): first frame
            flat.append(image.float().cpu())
            text = f"alpha {alpha:g}" + (f" | {blocks or 'all blocks'}" if len(sets) > 1 else "")
            row.append(_label(image, text) if labels else image[..., :3].float().cpu())
        rows.append(row)
    return _grid(rows), torch.stack(flat)


def grid_cell(grid: torch.Tensor, row: int, col: int, cell_hw: tuple, labels: bool = True, gap: int = 4) -> torch.Tensor:
    """The image of one cell of an :func:`alpha_grid` grid (for tests and scripts)."""
    h, w = cell_hw
    top = row * (h + (LABEL_HEIGHT if labels else 0) + gap) + (LABEL_HEIGHT if labels else 0)
    left = col * (w + gap)
    return grid[0, top:top + h, left:left + w]
