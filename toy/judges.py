"""Exact, deterministic judges of the toy world: every attribute read back from pixels.

Pure torch, analytic (no learned classifier). Input: images (B, 3, H, W) in [0, 1]. The judges
are the definitions the benchmark uses; their accuracy on the generator's own ground truth is
measured by :func:`judge_accuracy` (tests hold it at >= 99% per attribute).

Steps, per image:

1. background = per-channel median of the 2-pixel border, classified by grey level;
2. foreground = pixels of the 3x3-median-filtered image further than FG_DISTANCE from the
   background (the median filter removes pixel noise, not shapes);
3. connected components (4-neighbour) of the foreground: the largest is the object, any other
   component of >= STRAY_MIN_AREA pixels is a stray object;
4. color = nearest palette color to the median color of the object's interior;
   geometry comes from the silhouette at 35% contrast (the outline, corners kept, even when
   blurred): triangle when its rows widen from the top quarter to the bottom quarter, else
   square when the four corners of its bounding box are filled, else circle; size =
   bounding-box height; position = centroid x;
5. blurry = share of soft pixels (between background and object color) along the object's
   edge; noisy = spread of the residual (image - median filter) on the background.

An image with no object of at least MIN_OBJECT_AREA pixels, or whose border is not a plain
background, is *invalid* (the "degraded" verdict used for CFG failures); its other verdicts are -1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from . import world

FG_DISTANCE = 0.3
STRAY_MIN_AREA = 3
MIN_OBJECT_AREA = 10
SILHOUETTE_T = 0.35
NOISY_SQUARE_MIN_FILL = 0.9
TRIANGLE_MIN_WIDENING = 0.3
LARGE_MIN_HEIGHT = 12
LEFT_MAX_X = 10.75
RIGHT_MIN_X = 13.25
SOFT_EDGE_MIN = 0.7        # soft edge pixels per edge pixel: hard edges ~0 (noisy gray: up to 0.5), blur ~1.4
NOISE_MIN_STD = 0.04       # background residual std: clean ~0, noise 0.1 -> ~0.075
BORDER_MAX_SPREAD = 0.25   # a border this far from its median is not a plain background


def median3(images: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    patches = F.unfold(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3)   # (B, C*9, H*W)
    return patches.view(b, c, 9, h * w).median(dim=2).values.view(b, c, h, w)


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Labels (B, H, W) long: 0 = background, components numbered by their smallest pixel index + 1."""
    b, h, w = mask.shape
    big = h * w + 1
    labels = torch.where(mask, torch.arange(1, h * w + 1).view(1, h, w).expand(b, h, w), torch.full_like(mask, big, dtype=torch.long))
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=big)
        neighbours = torch.stack([padded[:, 1:-1, 1:-1], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1],
                                  padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]]).min(0).values
        new = torch.where(mask, neighbours, labels)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.where(mask, labels, torch.zeros_like(labels))


@dataclass
class Verdicts:
    """Judged attributes (B,) as codes into the toy world's value lists; -1 where invalid."""

    valid: torch.Tensor
    shape: torch.Tensor
    color: torch.Tensor
    size: torch.Tensor
    position: torch.Tensor
    background: torch.Tensor
    defects: torch.Tensor          # (B, 3) bool in DEFECTS order (False where invalid)
    measures: Dict[str, torch.Tensor]

    def has(self, attribute: str, value: str) -> torch.Tensor:
        """Bool (B,): the image is valid and shows ``value`` of ``attribute`` ("defect" for defects)."""
        if attribute == "defect":
            return self.defects[:, world.DEFECTS.index(value)] & self.valid
        values = {"shape": world.SHAPES, "color": world.COLORS, "size": world.SIZES,
                  "position": world.POSITIONS, "background": world.BACKGROUNDS}[attribute]
        return (getattr(self, attribute) == values.index(value)) & self.valid

    @property
    def any_defect(self) -> torch.Tensor:
        """Defective in the quality sense: a defect, or not a valid scene at all."""
        return self.defects.any(1) | ~self.valid


@torch.no_grad()
def judge(images: torch.Tensor) -> Verdicts:
    images = images.detach().float().cpu().clamp(0, 1)
    b, _, h, w = images.shape
    border = torch.cat([images[:, :, :2].flatten(2), images[:, :, -2:].flatten(2),
                        images[:, :, 2:-2, :2].flatten(2), images[:, :, 2:-2, -2:].flatten(2)], 2)
    bg_rgb = border.median(dim=2).values                                   # (B, 3)
    background = (bg_rgb.mean(1, keepdim=True) - world.BACKGROUND_RGB[None]).abs().argmin(1)

    smooth = median3(images)
    smooth_border = torch.cat([smooth[:, :, :2].flatten(2), smooth[:, :, -2:].flatten(2),
                               smooth[:, :, 2:-2, :2].flatten(2), smooth[:, :, 2:-2, -2:].flatten(2)], 2)
    border_spread = (smooth_border - bg_rgb[:, :, None]).abs().amax(1).quantile(0.9, dim=1)
    distance = (smooth - bg_rgb[:, :, None, None]).norm(dim=1)             # (B, H, W)
    fg = distance > FG_DISTANCE
    labels = connected_components(fg)
    flat = labels.flatten(1)
    counts = torch.zeros(b, h * w + 2, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, 0] = 0
    main_label = counts.argmax(1)
    main_area = counts.gather(1, main_label[:, None])[:, 0]
    components = counts >= STRAY_MIN_AREA
    stray = components.sum(1) >= 2
    obj = labels == main_label[:, None, None]

    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    objf = obj.float()[:, None]
    # Interior: object pixels whose 4 neighbours are object pixels too (falls back to the object).
    interior = (-F.max_pool2d(-objf, 3, 1, 1))[:, 0] > 0.5
    interior = torch.where(interior.flatten(1).any(1)[:, None, None], interior, obj)
    pixels = images.permute(0, 2, 3, 1)                                    # (B, H, W, 3)
    obj_rgb = torch.stack([pixels[i][interior[i]].median(0).values if interior[i].any() else bg_rgb[i]
                           for i in range(b)])
    color = torch.cdist(obj_rgb[None], world.PALETTE[None])[0].argmin(1)
    # Noise: residual spread on the background, away from every foreground pixel.
    far = ~(F.max_pool2d(fg.float()[:, None], 7, 1, 3)[:, 0] > 0.5)
    residual = (images - smooth).abs().mean(1)
    noise = torch.stack([residual[i][far[i]].mean() if far[i].sum() > 20 else residual[i].mean() for i in range(b)])
    noise = noise * 1.2533   # mean |x| of a Gaussian is 0.798 sigma
    noisy = noise >= NOISE_MIN_STD

    # t: where each pixel lies between the background (0) and the object's color (1); from the raw
    # image, or a 3x3 mean of a noisy one (a median filter would cut corners and apexes).
    axis = obj_rgb - bg_rgb
    mean3 = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    base = torch.where(noisy[:, None, None, None], mean3, images)
    t = ((base - bg_rgb[:, :, None, None]) * axis[:, :, None, None]).sum(1) / axis.pow(2).sum(1).clamp(min=1e-6)[:, None, None]
    dilated = F.max_pool2d(objf, 5, 1, 2)[:, 0] > 0.5
    # Geometry from the silhouette at SILHOUETTE_T contrast (the outline, corners kept, even when blurred).
    sil = dilated & (t > torch.where(noisy, 0.5, SILHOUETTE_T)[:, None, None])
    area = sil.flatten(1).sum(1).clamp(min=1)
    cx = (sil * (xs + 0.5)).flatten(1).sum(1) / area        # pixel centres, as the world draws
    big = torch.tensor(10 ** 6)
    x0 = torch.where(sil, xs, big).flatten(1).min(1).values
    x1 = torch.where(sil, xs, -big).flatten(1).max(1).values
    y0 = torch.where(sil, ys, big).flatten(1).min(1).values
    y1 = torch.where(sil, ys, -big).flatten(1).max(1).values
    height = (y1 - y0 + 1).clamp(min=1)
    width = (x1 - x0 + 1).clamp(min=1)
    fill = area / (width * height)
    # Triangle: rows widen from the top quarter to the bottom quarter (an upright triangle's apex is on top).
    row_width = sil.sum(2).float()                                          # (B, H)
    rel = (ys[:, 0][None] - y0[:, None]).float() / height[:, None]
    top = (row_width * (rel < 0.25)).sum(1) / (rel < 0.25).logical_and(rel >= 0).sum(1).clamp(min=1)
    bottom = (row_width * (rel >= 0.75) * (rel < 1)).sum(1) / ((rel >= 0.75) & (rel < 1)).sum(1).clamp(min=1)
    widening = (bottom - top) / width
    # Square: all four corners of the bounding box are in the silhouette (a circle's never are).
    corners = torch.stack([sil[torch.arange(b), y.clamp(0, h - 1), x.clamp(0, w - 1)]
                           for y in (y0, y1) for x in (x0, x1)], 1).float().mean(1)
    # (a noisy image's 3x3 mean rounds corners: there, the square fills its bounding box instead)
    squared = torch.where(noisy, fill >= NOISY_SQUARE_MIN_FILL, corners >= 0.75)
    shape = torch.where(widening > TRIANGLE_MIN_WIDENING, 2, torch.where(squared, 1, 0))
    size = (height >= LARGE_MIN_HEIGHT).long()
    position = torch.where(cx < LEFT_MAX_X, 0, torch.where(cx > RIGHT_MIN_X, 2, 1))

    # Blur: along the object's edge band, the share of pixels strictly between background and object color.
    eroded = (-F.max_pool2d(-objf, 5, 1, 2))[:, 0] > 0.5
    band = dilated & ~eroded
    t_smooth = ((smooth - bg_rgb[:, :, None, None]) * axis[:, :, None, None]).sum(1) / axis.pow(2).sum(1).clamp(min=1e-6)[:, None, None]
    soft = band & (t_smooth > 0.25) & (t_smooth < 0.75)
    edge = (obj & ~interior).flatten(1).sum(1).clamp(min=1)
    softness = soft.flatten(1).sum(1) / edge
    valid = (main_area >= MIN_OBJECT_AREA) & (border_spread <= BORDER_MAX_SPREAD)
    defects = torch.stack([softness >= SOFT_EDGE_MIN, noisy, stray], 1) & valid[:, None]
    invalid = torch.full_like(shape, -1)
    pick = lambda v: torch.where(valid, v, invalid)  # noqa: E731
    return Verdicts(valid=valid, shape=pick(shape), color=pick(color), size=pick(size), position=pick(position),
                    background=pick(background), defects=defects,
                    measures={"fill": fill, "widening": widening, "corners": corners, "height": height.float(), "cx": cx, "softness": softness,
                              "noise": noise, "area": main_area.float(), "border_spread": border_spread})


def judge_accuracy(n: int = 2000, seed: int = 1234) -> Dict[str, float]:
    """Accuracy of every judge against the generator's ground truth on ``n`` fresh images."""
    generator = torch.Generator().manual_seed(seed)
    scene = world.sample_scenes(n, generator)
    images = world.render(scene, generator)
    v = judge(images)
    out = {"valid": v.valid.float().mean().item()}
    for name in ("shape", "color", "size", "position", "background"):
        out[name] = (getattr(v, name) == getattr(scene, name)).float().mean().item()
    for j, d in enumerate(world.DEFECTS):
        out[d] = (v.defects[:, j] == scene.defects[:, j]).float().mean().item()
    return out
