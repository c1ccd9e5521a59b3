"""The toy world: seeded 24x24 images of one shape, with attributes a prompt can name.

Pure torch. Every image has a ground-truth record; :mod:`.judges` reads the same attributes back
from pixels. The priors are skewed on purpose (most circles red, most squares blue, most
triangles green, most backgrounds black, "defects" common), and captions name each attribute only
some of the time, so a prompt that does not name an attribute still tends to produce its prior
value - the situation a negative prompt fixes.

Attributes (value lists below are the order of the integer codes in a :class:`Scene`):

* shape: circle, square, triangle (always one main object)
* color: red, green, blue, yellow, magenta, cyan
* size: small (radius 4.5-5.25 px), large (radius 6.75-7.5 px)
* position: left, center, right (the object's horizontal centre)
* background: black, gray, white
* defects, the analogue of the community's quality negatives, at most one per image (each with
  DEFECT_P):
  blurry (Gaussian blur, sigma 1), noisy (Gaussian pixel noise, sigma 0.1),
  stray (a second, small 3x3 "stray dot" of another color, in a corner away from the object)

Images are float tensors (B, 3, 24, 24) in [0, 1]; :func:`to_model` maps them to [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

SIZE = 24
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right")
BACKGROUNDS = ("black", "gray", "white")
DEFECTS = ("blurry", "noisy", "stray")

PALETTE = torch.tensor([
    [0.90, 0.10, 0.10],   # red
    [0.10, 0.75, 0.15],   # green
    [0.10, 0.20, 0.90],   # blue
    [0.92, 0.85, 0.10],   # yellow
    [0.85, 0.10, 0.85],   # magenta
    [0.10, 0.80, 0.85],   # cyan
])
BACKGROUND_RGB = torch.tensor([0.05, 0.50, 0.95])
"""Grey level of each background."""

BLUR_SIGMA = 1.0
NOISE_STD = 0.1
STRAY_SIDE = 3

# Skewed priors. PRIOR_COLOR[shape] is the color that shape takes with probability PRIOR_COLOR_P.
PRIOR_COLOR = {"circle": "red", "square": "blue", "triangle": "green"}
PRIOR_COLOR_P = 0.7
BACKGROUND_P = (0.7, 0.15, 0.15)
POSITION_P = (0.25, 0.5, 0.25)
DEFECT_P = 0.2
# How often a caption names an attribute the image has (the shape is always named).
MENTION_P = {"color": 0.5, "size": 0.4, "position": 0.3, "background": 0.4, "defect": 0.6}

DEFECT_WORDS = {"blurry": "blurry", "noisy": "noisy", "stray": "with a stray dot"}
POSITION_WORDS = {p: f"on the {p}" if p != "center" else "in the center" for p in POSITIONS}


@dataclass
class Scene:
    """Ground truth of a batch: integer codes per attribute, defects as bools, geometry in pixels."""

    shape: torch.Tensor        # (B,) index into SHAPES
    color: torch.Tensor        # (B,) index into COLORS
    size: torch.Tensor         # (B,) index into SIZES
    position: torch.Tensor     # (B,) index into POSITIONS
    background: torch.Tensor   # (B,) index into BACKGROUNDS
    defects: torch.Tensor      # (B, 3) bool, columns in DEFECTS order
    cx: torch.Tensor           # (B,) float, object centre x
    cy: torch.Tensor           # (B,) float
    radius: torch.Tensor       # (B,) float
    stray_xy: torch.Tensor     # (B, 2) long, top-left corner of the stray dot
    stray_color: torch.Tensor  # (B,) index into COLORS

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def record(self, i: int) -> Dict[str, object]:
        """Attribute names of image i, e.g. {"shape": "circle", ..., "defects": ("noisy",)}."""
        return {"shape": SHAPES[self.shape[i]], "color": COLORS[self.color[i]], "size": SIZES[self.size[i]],
                "position": POSITIONS[self.position[i]], "background": BACKGROUNDS[self.background[i]],
                "defects": tuple(d for j, d in enumerate(DEFECTS) if self.defects[i, j])}


@dataclass
class Constraints:
    """Attribute values forced in a sample (None = drawn from the prior); for prompt-conditioned
    worlds and tests. ``defects`` forces the three defect flags."""

    shape: Optional[str] = None
    color: Optional[str] = None
    size: Optional[str] = None
    position: Optional[str] = None
    background: Optional[str] = None
    defects: Optional[Tuple[bool, bool, bool]] = None


def _choice(generator: torch.Generator, n: int, probs: Sequence[float]) -> torch.Tensor:
    return torch.multinomial(torch.tensor(probs, dtype=torch.float64).expand(n, -1), 1, generator=generator)[:, 0]


def sample_scenes(n: int, generator: torch.Generator, constraints: Optional[Constraints] = None) -> Scene:
    """Draw ``n`` scenes from the world's skewed prior (``constraints`` fixes some attributes)."""
    c = constraints or Constraints()

    def fixed(name, values, draw):
        value = getattr(c, name)
        if value is None:
            return draw
        if value not in values:
            raise ValueError(f"unknown {name} {value!r}; expected one of {values}")
        return torch.full((n,), values.index(value), dtype=torch.long)

    shape = fixed("shape", SHAPES, torch.randint(0, len(SHAPES), (n,), generator=generator))
    # Color: the shape's prior color with PRIOR_COLOR_P, else uniform over the other five.
    prior = torch.tensor([COLORS.index(PRIOR_COLOR[s]) for s in SHAPES])[shape]
    other = torch.randint(0, len(COLORS) - 1, (n,), generator=generator)
    other = other + (other >= prior).long()
    use_prior = torch.rand(n, generator=generator) < PRIOR_COLOR_P
    color = fixed("color", COLORS, torch.where(use_prior, prior, other))
    size = fixed("size", SIZES, torch.randint(0, 2, (n,), generator=generator))
    position = fixed("position", POSITIONS, _choice(generator, n, POSITION_P))
    background = fixed("background", BACKGROUNDS, _choice(generator, n, BACKGROUND_P))
    if c.defects is None:
        # At most one defect per image: none with 1 - 3 * DEFECT_P, else one of the three.
        which = _choice(generator, n, (1 - 3 * DEFECT_P,) + (DEFECT_P,) * 3)
        defects = torch.nn.functional.one_hot(which, 4)[:, 1:].bool()
    else:
        defects = torch.tensor(c.defects, dtype=torch.bool).expand(n, 3).clone()

    radius = torch.where(size == 0, 4.5, 6.75) + 0.75 * torch.rand(n, generator=generator)
    # Horizontal centre by position, inside the frame with a 2-pixel margin for the largest object.
    lo = torch.tensor([9.5, 11.5, 13.5])[position]
    cx = lo + torch.rand(n, generator=generator)
    cy = 11.0 + 2.0 * torch.rand(n, generator=generator)
    # Stray dot: a corner away from the object (the opposite side; top or bottom row band).
    stray_x = torch.where(cx < SIZE / 2, torch.tensor(SIZE - 4), torch.tensor(1))
    stray_y = torch.where(torch.rand(n, generator=generator) < 0.5, torch.tensor(1), torch.tensor(SIZE - 4))
    stray_xy = torch.stack([stray_x, stray_y], 1)
    stray_color = (color + torch.randint(1, len(COLORS), (n,), generator=generator)) % len(COLORS)
    return Scene(shape, color, size, position, background, defects, cx, cy, radius, stray_xy, stray_color)


def shape_masks(scene: Scene) -> torch.Tensor:
    """Hard (aliased) masks (B, H, W) of the main objects: no anti-aliasing, so blur is a defect."""
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    dx = xs[None] - scene.cx[:, None, None]
    dy = ys[None] - scene.cy[:, None, None]
    r = scene.radius[:, None, None]
    circle = dx ** 2 + dy ** 2 <= r ** 2
    half = 0.9 * r
    square = (dx.abs() <= half) & (dy.abs() <= half)
    # Upright isosceles triangle, apex at cy - r, base 2r wide at cy + r.
    depth = (dy + r) / (2 * r)              # 0 at the apex, 1 at the base
    triangle = (depth >= 0) & (depth <= 1) & (dx.abs() <= depth * r)
    shape = scene.shape[:, None, None]
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def render(scene: Scene, generator: torch.Generator) -> torch.Tensor:
    """Images (B, 3, 24, 24) in [0, 1] of ``scene`` (the generator draws the pixel noise)."""
    n = len(scene)
    bg = BACKGROUND_RGB[scene.background][:, None, None, None].expand(n, 3, SIZE, SIZE)
    mask = shape_masks(scene)[:, None]
    images = torch.where(mask, PALETTE[scene.color][:, :, None, None], bg).clone()
    stray = scene.defects[:, 2]
    for i in torch.nonzero(stray).flatten().tolist():
        x, y = scene.stray_xy[i].tolist()
        images[i, :, y:y + STRAY_SIDE, x:x + STRAY_SIDE] = PALETTE[scene.stray_color[i]][:, None, None]
    blurry = scene.defects[:, 0]
    if blurry.any():
        images[blurry] = gaussian_blur(images[blurry], BLUR_SIGMA)
    noise = torch.randn(images.shape, generator=generator) * NOISE_STD
    images = images + noise * scene.defects[:, 1].float()[:, None, None, None]
    return images.clamp(0.0, 1.0)


def caption(record: Dict[str, object], generator: torch.Generator, mention: Optional[Dict[str, float]] = None) -> str:
    """A caption of one image that names each attribute with its MENTION_P (the shape always)."""
    p = MENTION_P if mention is None else mention

    def says(key):
        return float(torch.rand((), generator=generator)) < p[key]

    words = ["a"]
    words += [DEFECT_WORDS[d] for d in record["defects"] if d != "stray" and says("defect")]
    if says("size"):
        words.append(record["size"])
    if says("color"):
        words.append(record["color"])
    words.append(record["shape"])
    if "stray" in record["defects"] and says("defect"):
        words.append(DEFECT_WORDS["stray"])
    if says("position"):
        words.append(POSITION_WORDS[record["position"]])
    if says("background"):
        words.append(f"on a {record['background']} background")
    return " ".join(words)


def sample_batch(n: int, generator: torch.Generator) -> Tuple[torch.Tensor, List[str], Scene]:
    """``n`` training examples: images in [0, 1], captions, ground truth."""
    scene = sample_scenes(n, generator)
    images = render(scene, generator)
    captions = [caption(scene.record(i), generator) for i in range(n)]
    return images, captions, scene


def to_model(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the model's [-1, 1] pixel space (ComfyUI's pixel-space VAE does the same)."""
    return images * 2.0 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def training_prompts(n: int, generator: torch.Generator) -> List[str]:
    """Prompts for image-free distillation: captions of prior scenes (no image is kept)."""
    scene = sample_scenes(n, generator)
    return [caption(scene.record(i), generator) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The removal benchmark's prompt pairs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptPair:
    """A positive that does not name an attribute, a negative that names it.

    ``target`` is (attribute, value) the negative should remove; ``keep`` lists (attribute, value)
    the positive names and the image should retain.
    """

    positive: str
    negative: str
    target: Tuple[str, str]
    keep: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)
    split: str = "tune"


PROMPT_PAIRS: Tuple[PromptPair, ...] = (
    # Tuning split: alpha and kappa are chosen on these.
    PromptPair("a circle", "red", ("color", "red"), (("shape", "circle"),)),
    PromptPair("a square", "blue", ("color", "blue"), (("shape", "square"),)),
    PromptPair("a large triangle", "green", ("color", "green"), (("shape", "triangle"), ("size", "large"))),
    PromptPair("a blue square", "black background", ("background", "black"), (("shape", "square"), ("color", "blue"))),
    PromptPair("a circle", "blurry", ("defect", "blurry"), (("shape", "circle"),)),
    PromptPair("a triangle", "noisy", ("defect", "noisy"), (("shape", "triangle"),)),
    PromptPair("a square", "with a stray dot", ("defect", "stray"), (("shape", "square"),)),
    # Held out: never seen while alpha and kappa are tuned.
    PromptPair("a triangle", "green", ("color", "green"), (("shape", "triangle"),), split="heldout"),
    PromptPair("a small circle on the left", "red", ("color", "red"), (("shape", "circle"), ("size", "small"),
                                                                        ("position", "left")), split="heldout"),
    PromptPair("a red triangle", "black background", ("background", "black"),
               (("shape", "triangle"), ("color", "red")), split="heldout"),
    PromptPair("a square", "blurry", ("defect", "blurry"), (("shape", "square"),), split="heldout"),
    PromptPair("a circle", "noisy", ("defect", "noisy"), (("shape", "circle"),), split="heldout"),
)


QUALITY_NEGATIVE = "blurry, noisy, with a stray dot"
"""The toy world's "low quality, bad photo": every defect named at once."""


def negative_prompts() -> List[str]:
    """NASA-T's negative-prompt pool (the analogue of the paper's 10K quality negatives): every
    attribute value a prompt may leave unnamed (colors, sizes, positions, backgrounds) and the defect
    words alone and combined. Shapes are left out: every prompt names its shape."""
    defects = [DEFECT_WORDS[d] for d in DEFECTS]
    two = [f"{a}, {b}" for i, a in enumerate(defects) for b in defects[i + 1:]]
    combos = two + [", ".join(defects)]                 # every pair of defects, then all of them
    return (list(COLORS) + list(SIZES) + [POSITION_WORDS[p] for p in POSITIONS]
            + [f"{b} background" for b in BACKGROUNDS] + defects + combos)


def heldout_combinations() -> List[Tuple[str, str]]:
    """(positive, negative) of the held-out pairs: NASA-T training never draws them together."""
    return [(p.positive, p.negative) for p in pairs("heldout")]


def pairs(split: Optional[str] = None) -> Tuple[PromptPair, ...]:
    if split is None:
        return PROMPT_PAIRS
    if split not in ("tune", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'tune' or 'heldout'")
    return tuple(p for p in PROMPT_PAIRS if p.split == split)
