"""The removal benchmark on the toy world (the paper's Table 2, measured with exact judges).

For every prompt pair (a positive that does not name an attribute, a negative that names it)
and every seed, each setting samples one image through ComfyUI's own sampler
(``comfy.sample.sample``) and the pixel-space VAE, and the judges score it:

* removal   - the image is a valid scene and does not show the negative's attribute;
* retention - the image is valid and shows every attribute the positive names (the CLIP+ analog);
* presence  - the image shows the negative's attribute (the CLIP- analog);
* defects   - the image has a defect (blur, noise, stray dot) or is not a valid scene at all.

Settings: {teacher multi-step, student 1-step, student 4-step} x {no negative, CFG with the
negative as the unconditional prompt, NASA-I}. kappa (CFG) and alpha (NASA-I) are chosen on the
"tune" pairs only; the "heldout" pairs never take part in the choice and are reported apart.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..adapters import apply_nasa
from . import judges, models, world

TEACHER = "teacher (multi-step)"
STUDENT = "student v3 (one-step)"
"""The student the removal table measures (v3: few defects at one step; docs/toy-world.md)."""
SBV2_STUDENT = "student SBv2 (one-step)"
"""The first SBv2 student: what the joint and method studies (docs/joint-attention.md, docs/methods.md) measured."""


@dataclass(frozen=True)
class Sampler:
    """How one row of the table samples: which model, steps, sampler and base CFG scale."""
    label: str
    model: str
    steps: int
    sampler: str
    scheduler: str
    base_cfg: float            # the guidance the model uses without a negative ("" as unconditional)
    kappas: Tuple[float, ...]  # CFG scales tried with the negative as the unconditional prompt
    alphas: Tuple[float, ...]  # NASA-I strengths tried


STUDENT_KAPPAS = (1.5, 2.0, 3.0, 4.0, 6.0)
STUDENT_ALPHAS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
SAMPLERS = (
    # The teacher costs 2 x 10 model passes per image: a shorter sweep around its base guidance.
    Sampler("teacher 10-step", TEACHER, 10, "euler", "normal", 3.0, (2.0, 3.0, 5.0), (0.25, 0.5, 1.0)),
    Sampler("student 1-step", STUDENT, 1, "lcm", "sgm_uniform", 1.0, STUDENT_KAPPAS, STUDENT_ALPHAS),
    Sampler("student 4-step", STUDENT, 4, "lcm", "sgm_uniform", 1.0, STUDENT_KAPPAS, STUDENT_ALPHAS),
)
RETENTION_FLOOR = 0.95     # a setting must keep >= 95% of the baseline's retention to be chosen
CORE_NAG_CHUNK = 16
"""Seeds per batch for ComfyUI's NAGuidance node: it acts only where ComfyUI runs the cond and uncond rows in one
batch, and ComfyUI splits them into two batches of 100 toy images on CPU (the node then silently does nothing)."""


@dataclass
class Scores:
    n: int
    removal: float
    retention: float
    presence: float
    defects: float

    @staticmethod
    def mean(items: Sequence["Scores"]) -> "Scores":
        n = sum(s.n for s in items)
        avg = lambda k: sum(getattr(s, k) * s.n for s in items) / max(1, n)  # noqa: E731
        return Scores(n, avg("removal"), avg("retention"), avg("presence"), avg("defects"))


def score(images: torch.Tensor, pair: world.PromptPair) -> Scores:
    """Judge images (B, 3, H, W) in [0, 1] for one prompt pair."""
    return score_verdicts(judges.judge(images), pair)


def score_verdicts(v: judges.Verdicts, pair: world.PromptPair) -> Scores:
    """:func:`score` of images already judged."""
    present = v.has(*pair.target)
    kept = v.valid.clone()
    for attribute, value in pair.keep:
        kept &= v.has(attribute, value)
    n = v.valid.shape[0]
    return Scores(n, float((v.valid & ~present).float().mean()), float(kept.float().mean()),
                  float(present.float().mean()), float(v.any_defect.float().mean()))


class Bench:
    """Loads the shipped models once and samples any (sampler, method, pair) cell."""

    def __init__(self, weights_dir=models.WEIGHTS_DIR, seeds: int = 100, first_seed: int = 1000, log=print,
                 names: Sequence[str] = (TEACHER, STUDENT), chunk: Optional[int] = None):
        """``chunk``: sample every cell ``chunk`` seeds at a time, each chunk's sampler seed its first seed (as
        ComfyUI's NAGuidance must always be sampled, :data:`CORE_NAG_CHUNK`), so a stochastic sampler's noise is the
        same for every method of a study; None: all seeds in one batch."""
        self.chunk = chunk
        self.loaded = {name: models.load_checkpoint(name, weights_dir) for name in names}
        self.clip = self.loaded[names[0]][1]
        self.vae = self.loaded[names[0]][2]
        self.seeds = list(range(first_seed, first_seed + seeds))
        self.log = log
        self._cond: Dict[str, list] = {}
        self.noise = torch.cat([torch.randn((1, 3, world.SIZE, world.SIZE), generator=torch.Generator().manual_seed(s))
                                for s in self.seeds])

    def add_model(self, label: str, path) -> None:
        """Make a toy UNet file (e.g. a student of the NASA-T ablation) samplable as ``label``."""
        model, info = models.load_unet(path)
        self.loaded[label] = (model, self.clip, self.vae, info)

    def cond(self, text: str):
        if text not in self._cond:
            self._cond[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._cond[text]

    def images(self, sampler: Sampler, pair: world.PromptPair, method: str, value: Optional[float],
               nasa_options: Optional[dict] = None) -> torch.Tensor:
        """method: "none", "cfg" (value = kappa), "nasa" (value = alpha; ``nasa_options``: more
        :func:`..adapters.apply_nasa` keywords, e.g. blocks, guard, stream, method) or "core_nag" (ComfyUI's own
        NAGuidance node, value = (nag_scale, nag_alpha, nag_tau), the negative as the sampler's at cfg 1)."""
        model = self.loaded[sampler.model][0]
        negative, cfg = self.cond(""), sampler.base_cfg
        if method == "cfg":
            negative, cfg = self.cond(pair.negative), float(value)
        elif method == "nasa":
            model = apply_nasa(model, negative=self.cond(pair.negative), alpha=float(value), use_sampler_negative=False,
                               node="toy benchmark", **(nasa_options or {}))
        elif method == "core_nag":
            return self._core_nag_images(sampler, pair, *value)
        elif method != "none":
            raise ValueError(f"unknown method {method!r}")
        out = self._sample(model, sampler, cfg, pair.positive, negative, self.chunk)
        return self.vae.decode(out).movedim(-1, 1).float().clamp(0, 1)

    def _sample(self, model, sampler: Sampler, cfg: float, positive: str, negative, chunk: Optional[int]):
        """Latents of every seed, ``chunk`` seeds per batch (None: one batch), each batch's sampler seed its first."""
        import comfy.sample
        step = chunk or len(self.seeds)
        return torch.cat([comfy.sample.sample(model, self.noise[i:i + step], sampler.steps, cfg, sampler.sampler,
                                              sampler.scheduler, self.cond(positive), negative,
                                              torch.zeros_like(self.noise[i:i + step]), disable_pbar=True,
                                              seed=self.seeds[i])
                          for i in range(0, len(self.seeds), step)])

    def _core_nag_images(self, sampler: Sampler, pair: world.PromptPair, scale: float, blend: float,
                         tau: float, check: bool = True) -> torch.Tensor:
        """ComfyUI's NAGuidance node (the negative as the sampler's, cfg 1), sampled :data:`CORE_NAG_CHUNK` seeds at
        a time (each chunk's sampler seed its first seed). ``check``: the images are compared with the same chunks
        sampled without it: a node that did nothing is an error, not a measurement (off: only the node's own
        sampling runs, for timing it)."""
        from comfy_extras.nodes_nag import NAGuidance
        base = self.loaded[sampler.model][0]
        model = NAGuidance.execute(model=base, nag_scale=scale, nag_alpha=blend, nag_tau=tau).result[0]
        out = self._sample(model, sampler, sampler.base_cfg, pair.positive, self.cond(pair.negative), CORE_NAG_CHUNK)
        if check:
            plain = self._sample(base, sampler, sampler.base_cfg, pair.positive, self.cond(""), CORE_NAG_CHUNK)
            changed = [not torch.allclose(a, b, atol=1e-5) for a, b in zip(plain.split(CORE_NAG_CHUNK),
                                                                          out.split(CORE_NAG_CHUNK))]
            if not all(changed):
                raise RuntimeError("toy benchmark: ComfyUI's NAGuidance changed nothing in a batch (ComfyUI ran the "
                                   "cond and uncond rows in separate batches?); lower CORE_NAG_CHUNK")
        return self.vae.decode(out).movedim(-1, 1).float().clamp(0, 1)

    def cell(self, sampler: Sampler, pairs: Sequence[world.PromptPair], method: str, value=None,
             nasa_options: Optional[dict] = None) -> Tuple[Scores, list]:
        per_pair = [score(self.images(sampler, p, method, value, nasa_options), p) for p in pairs]
        return Scores.mean(per_pair), per_pair


def relative_cost(bench: Bench, sampler: Sampler, call: tuple, rounds: int = 7) -> dict:
    """FLOPs and CPU time of one 1-step batch of ``sampler``'s model sampled with ``call`` = (method, value, options)
    as :meth:`Bench.images` takes them, relative to the same batch without a negative: the time is the median over
    ``rounds`` interleaved rounds of each round's ratio (one batch of toy images takes milliseconds, so single
    timings swing). ComfyUI's NAGuidance is timed without its did-it-act check (only the node's own sampling)."""
    from ..nasa_core.flops import counted_flops
    one = Sampler(sampler.label, sampler.model, 1, sampler.sampler, sampler.scheduler, 1.0, (), ())
    pair = world.pairs("heldout")[0]

    def batch(method, value, options):
        if method == "core_nag":
            return lambda: bench._core_nag_images(one, pair, *value, check=False)
        return lambda: bench.images(one, pair, method, value, options)
    plain, steered = batch("none", None, None), batch(*call)
    steered()                                                          # warm-up (and the FLOP count below)
    flops = counted_flops(steered) / counted_flops(plain)
    ratios = []
    for _ in range(rounds):
        times = []
        for fn in (plain, steered):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        ratios.append(times[1] / times[0])
    return {"flops": flops, "time": statistics.median(ratios)}


def choose(bench: Bench, sampler: Sampler, method: str, values: Sequence[float], baseline: Scores,
           pairs: Sequence[world.PromptPair]) -> Tuple[float, List[Tuple[float, Scores]]]:
    """The value with the highest removal among those keeping RETENTION_FLOOR of the baseline's
    retention (else the best removal x retention), on the tuning pairs."""
    sweep = [(v, bench.cell(sampler, pairs, method, v)[0]) for v in values]
    floor = RETENTION_FLOOR * baseline.retention
    ok = [(v, s) for v, s in sweep if s.retention >= floor]
    best = max(ok, key=lambda vs: (vs[1].removal, vs[1].retention)) if ok else \
        max(sweep, key=lambda vs: vs[1].removal * vs[1].retention)
    return best[0], sweep


@dataclass
class Result:
    seeds: int
    rows: List[dict] = field(default_factory=list)        # one per (sampler, method): label, value, tune, heldout
    sweeps: Dict[str, list] = field(default_factory=dict)  # "<sampler> alpha|kappa" -> [(value, Scores)] (tune)
    per_pair: Dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0


def run(bench: Bench, samplers: Sequence[Sampler] = SAMPLERS) -> Result:
    t0 = time.time()
    tune, held = world.pairs("tune"), world.pairs("heldout")
    result = Result(len(bench.seeds))
    for sampler in samplers:
        base_tune, _ = bench.cell(sampler, tune, "none")
        kappa, ks = choose(bench, sampler, "cfg", sampler.kappas, base_tune, tune)
        alpha, al = choose(bench, sampler, "nasa", sampler.alphas, base_tune, tune)
        result.sweeps[f"{sampler.label} kappa"] = ks
        result.sweeps[f"{sampler.label} alpha"] = al
        for method, value, name in (("none", None, "no negative"), ("cfg", kappa, f"CFG (kappa {kappa:g})"),
                                    ("nasa", alpha, f"NASA-I (alpha {alpha:g})")):
            t_scores = base_tune if method == "none" else dict(ks if method == "cfg" else al)[value]
            h_scores, h_pairs = bench.cell(sampler, held, method, value)
            result.rows.append({"sampler": sampler.label, "method": name, "key": method, "value": value,
                                "tune": t_scores, "heldout": h_scores})
            result.per_pair[f"{sampler.label} | {name}"] = list(zip([p.positive + " / -" + p.negative for p in held], h_pairs))
        bench.log(f"benchmark: {sampler.label} done ({time.time() - t0:.0f} s): kappa {kappa:g}, alpha {alpha:g}")
    result.seconds = time.time() - t0
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(result: Result) -> str:
    """The markdown table: held-out pairs (the headline) and tuning pairs."""
    lines = ["| model | negative via | removal ↑ | retention ↑ | neg. present ↓ | defects ↓ | removal (tune) | retention (tune) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result.rows:
        h, t = row["heldout"], row["tune"]
        lines.append(f"| {row['sampler']} | {row['method']} | {_pct(h.removal)} | {_pct(h.retention)} | {_pct(h.presence)} "
                     f"| {_pct(h.defects)} | {_pct(t.removal)} | {_pct(t.retention)} |")
    return "\n".join(lines)


def sweep_table(result: Result) -> str:
    lines = []
    for key, sweep in result.sweeps.items():
        lines.append(f"\n{key} sweep (tuning pairs): " + ", ".join(
            f"{v:g}: removal {_pct(s.removal)} / retention {_pct(s.retention)} / defects {_pct(s.defects)}" for v, s in sweep))
    return "\n".join(lines)


def grid(bench: Bench, result: Result, path, pairs: Sequence[world.PromptPair] = None, per_row: int = 8) -> None:
    """A labeled PNG: for each pair, one row of ``per_row`` seeds per (sampler, method) of the table."""
    pairs = pairs or world.pairs("heldout")[:3]
    sections = []
    for pair in pairs:
        rows = []
        for row in result.rows:
            sampler = next(s for s in SAMPLERS if s.label == row["sampler"])
            rows.append((f"{row['sampler']}: {row['method']}", bench.images(sampler, pair, row["key"], row["value"])[:per_row]))
        sections.append((f'positive "{pair.positive}"   negative "{pair.negative}"', rows))
    draw_rows(sections, path, per_row)


def draw_rows(sections: Sequence[Tuple[str, Sequence[Tuple[str, torch.Tensor]]]], path, per_row: int = 8,
              label_w: int = 260) -> None:
    """Write a PNG of titled sections, each a list of (label, images (B, 3, H, W) in [0, 1]) rows."""
    from PIL import Image, ImageDraw
    scale, head = 3, 16
    cell = world.SIZE * scale
    n_rows = sum(len(rows) for _, rows in sections)
    img = Image.new("RGB", (label_w + per_row * cell, n_rows * (cell + 2) + head * len(sections)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    y = 0
    for title, rows in sections:
        draw.text((4, y + 2), title, fill=(0, 0, 0))
        y += head
        for label, images in rows:
            draw.text((4, y + cell // 2 - 6), label, fill=(0, 0, 0))
            for i, im in enumerate(images[:per_row]):
                arr = (im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
                img.paste(tile, (label_w + i * cell, y))
            y += cell + 2
    img.save(str(path))
