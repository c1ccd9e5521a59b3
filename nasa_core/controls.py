"""Where and when NASA acts: block selections, the sampling window with its alpha ramp, and regional
masks scaled to a layer's token grid. Pure torch; imports nothing from ComfyUI.

* :func:`parse_blocks` reads a block selection such as ``"input:4-8, middle, output:0-2*0.5"`` against
  the blocks a model has (``{"input": [1, 2, 4, ...], "middle": [0], ...}``) and returns
  ``{(group, index): alpha multiplier}``.
* :class:`Schedule` is the window in ComfyUI's start/end percent convention plus a linear alpha ramp;
  :func:`sigma_to_percent` inverts a host's ``percent_to_sigma`` for the ramp.
* :func:`token_region` scales a mask (frames, H, W) to the tokens of one layer: the latent grid divided
  by the layer's downscale factor, found from its token count.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Layer = Tuple[str, int]
MAX_BLOCK_SCALE = 10.0

_ITEM = re.compile(r"^(?P<group>[a-z_]+)\s*(?::\s*(?P<first>\d+)\s*(?:-\s*(?P<last>\d+))?)?\s*"
                   r"(?:\*\s*(?P<scale>[^\s]+))?$")


def _spans(indices: Sequence[int]) -> str:
    """[0, 1, 2, 4, 5] -> '0-2, 4-5'."""
    out, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def describe_blocks(groups: Dict[str, Sequence[int]]) -> str:
    """'input 1-2, 4-5; middle 0; output 3-5' - the blocks a selection may name."""
    return "; ".join(f"{g} {_spans(ix)}" for g, ix in groups.items())


def parse_blocks(text: Optional[str], groups: Dict[str, Sequence[int]], where: str,
                 model: str = "this model") -> Optional[Dict[Layer, float]]:
    """Parse a block selection. Empty or ``all`` -> None (every block at 1).

    Items are separated by commas, semicolons or new lines: ``group`` (all its blocks), ``group:i`` or
    ``group:i-j`` (inclusive), each optionally followed by ``*m``, an alpha multiplier in [0, 10].
    Later items override earlier ones, so ``double:0-18, double:5*0.5`` halves block 5 only. Ranges may
    span indices that have no steerable layer (UNet input blocks without cross-attention); an item that
    selects none, an unknown group or an index past the model's last block is an error."""
    if text is None or not str(text).strip() or str(text).strip().lower() == "all":
        return None
    known = describe_blocks(groups)
    selection: Dict[Layer, float] = {}
    for raw in re.split(r"[,;\n]", str(text)):
        item = raw.strip().lower()
        if not item:
            continue
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"{where}: cannot read '{raw.strip()}'. Write group, group:i or group:i-j, optionally "
                             f"followed by *multiplier, separated by commas (e.g. "
                             f"'{next(iter(groups), 'input')}:0-2, {list(groups)[-1]}*0.5'). Blocks of {model}: {known}.")
        group = m["group"]
        if group not in groups:
            raise ValueError(f"{where}: '{raw.strip()}' names block group '{group}'; {model} has: "
                             f"{', '.join(groups)} (blocks: {known}).")
        available = list(groups[group])
        if m["first"] is None:
            chosen = available
        else:
            first = int(m["first"])
            last = first if m["last"] is None else int(m["last"])
            if last < first:
                raise ValueError(f"{where}: '{raw.strip()}' is an empty range ({first} > {last}); write {group}:"
                                 f"{last}-{first}.")
            top = max(available)
            if last > top:
                raise ValueError(f"{where}: '{raw.strip()}' is out of range: the last {group} block is {top}. "
                                 f"Blocks of {model}: {known}.")
            chosen = [i for i in available if first <= i <= last]
            if not chosen:
                raise ValueError(f"{where}: '{raw.strip()}' selects no block that NASA steers (only blocks with "
                                 f"a text-attention layer count). Blocks of {model}: {known}.")
        scale = 1.0
        if m["scale"] is not None:
            try:
                scale = float(m["scale"])
            except ValueError:
                raise ValueError(f"{where}: '{raw.strip()}': the multiplier '{m['scale']}' is not a number.") from None
            if not math.isfinite(scale) or not 0.0 <= scale <= MAX_BLOCK_SCALE:
                raise ValueError(f"{where}: '{raw.strip()}': the multiplier must be between 0 and "
                                 f"{MAX_BLOCK_SCALE:g}.")
        for i in chosen:
            selection[(group, i)] = scale
    if not selection:
        raise ValueError(f"{where}: no block selected. Leave it empty for every block, or name blocks: {known}.")
    return selection


@dataclass(frozen=True)
class Schedule:
    """NASA acts inside a window of the sampling schedule given in ComfyUI's percent convention (0 = first
    step; :meth:`inside` decides it in sigma space, as ComfyUI decides a conditioning's timestep range).
    Inside, alpha is multiplied by :meth:`ramp`: linear from 1 at start_percent to ``end_scale`` at
    end_percent (``end_scale`` 1 = constant)."""
    start_percent: float = 0.0
    end_percent: float = 1.0
    end_scale: float = 1.0

    @property
    def is_default(self) -> bool:
        return self.start_percent <= 0.0 and self.end_percent >= 1.0 and self.end_scale == 1.0

    def check(self, where: str) -> "Schedule":
        for name in ("start_percent", "end_percent"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{where}: {name} is {v!r}; it must be between 0 and 1.")
        if self.start_percent > self.end_percent:
            raise ValueError(f"{where}: start_percent {self.start_percent} is after end_percent {self.end_percent}: "
                             f"NASA would never act. Set start_percent <= end_percent.")
        if not (math.isfinite(self.end_scale) and 0.0 <= self.end_scale <= MAX_BLOCK_SCALE):
            raise ValueError(f"{where}: alpha_end_scale is {self.end_scale}; it must be between 0 and "
                             f"{MAX_BLOCK_SCALE:g}.")
        return self

    def inside(self, sigma: float, percent_to_sigma: Callable[[float], float]) -> bool:
        """Whether ``sigma`` is in the window, decided in sigma space exactly as ComfyUI decides a
        conditioning's timestep range: percent_to_sigma(end) <= sigma <= percent_to_sigma(start)."""
        return float(percent_to_sigma(self.end_percent)) <= sigma <= float(percent_to_sigma(self.start_percent))

    def ramp(self, percent: float) -> float:
        """The alpha multiplier at ``percent`` inside the window: 1 at start_percent, end_scale at end_percent."""
        span = self.end_percent - self.start_percent
        if self.end_scale == 1.0 or span <= 0.0:
            return 1.0
        t = min(max((percent - self.start_percent) / span, 0.0), 1.0)
        return 1.0 + (self.end_scale - 1.0) * t


def sigma_to_percent(sigma: float, percent_to_sigma: Callable[[float], float], iterations: int = 40) -> float:
    """Invert a host's decreasing ``percent_to_sigma`` by bisection: the smallest percent whose sigma is
    <= ``sigma``. Exact at the window edges: percent_to_sigma(p) maps back to p (to 2**-40)."""
    if sigma >= percent_to_sigma(0.0):
        return 0.0
    if sigma <= percent_to_sigma(1.0):
        return 1.0
    lo, hi = 0.0, 1.0       # percent_to_sigma(lo) > sigma >= percent_to_sigma(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if percent_to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return hi


def token_grid(latent: Sequence[int], n_tokens: int) -> Optional[Tuple[int, ...]]:
    """The (frames, h, w) grid of a layer with ``n_tokens`` query tokens over a latent of spatial size
    ``latent`` ((H, W) or (T, H, W)): spatial downscale f (ceil division, as strided convolutions and
    patch embedders with padding round), frames kept. None if no factor up to 64 fits."""
    *frames, h, w = latent
    t = frames[0] if frames else 1
    for f in range(1, 65):
        grid = (t, -(-h // f), -(-w // f))
        if grid[0] * grid[1] * grid[2] == n_tokens:
            return grid
    return None


def _resize(x: torch.Tensor, size: Tuple[int, int, int]) -> torch.Tensor:
    """(T, H, W) -> size by area averaging (a token outside the mask's support gets exactly 0)."""
    return F.adaptive_avg_pool3d(x[None, None].float(), size)[0, 0]


def token_region(mask: torch.Tensor, latent: Sequence[int], n_tokens: int,
                 area: Optional[Sequence[Tuple[int, int]]] = None) -> Optional[torch.Tensor]:
    """A (frames, H, W) mask as one weight in [0, 1] per query token of a layer, in raster order
    (frames, rows, columns), as the layer flattens its latent. ``area``: per latent dimension the
    (offset, size) the layer sees (area conditioning crops the latent). None if the token count does
    not fit the latent grid."""
    full = _resize(mask, tuple(int(s) for s in ([1] * (3 - len(latent)) + list(latent))))
    seen = list(full.shape)
    if area is not None:
        dims = list(range(3 - len(area), 3))
        for d, (offset, size) in zip(dims, area):
            full = full.narrow(d, offset, size)
        seen = list(full.shape)
    grid = token_grid(seen if len(latent) == 3 else seen[1:], n_tokens)
    if grid is None:
        return None
    return _resize(full, grid).flatten().clamp(0.0, 1.0)
