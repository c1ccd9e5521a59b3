"""The one-step student's own quality, next to its teacher's, without any negative prompt.

A removal table says little about NASA when the student it steers is itself defective: this measures the student
first. Every row samples the benchmark's prompt pairs' positives through ComfyUI (:class:`.benchmark.Bench`) with no
negative and judges the images: defects (blurry, noisy, stray dot or no valid scene), the defects one by one, and
retention (every attribute the positive names). The bar (issue 29): at one step, the student's defects within
:data:`DEFECT_MARGIN` of the multi-step teacher's and its retention at least :data:`RETENTION_SHARE` of the teacher's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from . import benchmark, judges, models, world

DEFECT_MARGIN = 0.10
"""The student's defect rate may exceed the teacher's by at most this (10 points)."""
RETENTION_SHARE = 0.90
"""The student must keep at least this share of the teacher's retention."""
STUDENT_LABEL = "student"


@dataclass
class Row:
    label: str
    steps: int
    n: int
    retention: float
    defects: float
    blurry: float
    noisy: float
    stray: float
    invalid: float
    prior_color: float = float("nan")
    black_background: float = float("nan")


def _share(hits: List[torch.Tensor]) -> float:
    return float(torch.cat(hits).float().mean()) if hits else float("nan")


def measure(bench: benchmark.Bench, sampler: benchmark.Sampler, pairs: Sequence[world.PromptPair],
            null_alpha: Optional[float] = None) -> Row:
    """``sampler``'s images of every pair's positive, no negative, judged. Diversity: among the valid images of
    positives that leave the color (background) unnamed, the share in the shape's prior color (on black); the world
    draws both with 70%, a student collapsed onto the prior's mode approaches 100%. ``null_alpha``: instead, NASA at
    that alpha with the empty negative "", which names nothing: what the subtraction itself costs."""
    kept, verdicts, prior_color, black = [], [], [], []
    prior = torch.tensor([world.COLORS.index(world.PRIOR_COLOR[s]) for s in world.SHAPES])
    label = sampler.label if null_alpha is None else f"{sampler.label}, NASA α {null_alpha:g}, negative ''"
    for pair in pairs:
        if null_alpha is None:
            images = bench.images(sampler, pair, "none", None)
        else:
            images = bench.images(sampler, replace(pair, negative=""), "nasa", null_alpha)
        v = judges.judge(images)
        verdicts.append(v)
        kept.append(benchmark.score_verdicts(v, pair).retention * v.valid.shape[0])
        named = {attribute for attribute, _ in pair.keep}
        if "color" not in named:
            prior_color.append(v.color[v.valid] == prior[v.shape[v.valid]])
        if "background" not in named:
            black.append(v.background[v.valid] == world.BACKGROUNDS.index("black"))
    n = sum(v.valid.shape[0] for v in verdicts)
    valid = torch.cat([v.valid for v in verdicts])
    defects = torch.cat([v.defects for v in verdicts]).float().mean(0)
    any_defect = torch.cat([v.any_defect for v in verdicts]).float().mean()
    return Row(label, sampler.steps, n, sum(kept) / n, float(any_defect), float(defects[0]), float(defects[1]),
               float(defects[2]), float((~valid).float().mean()), _share(prior_color), _share(black))


def _mmdit(label: str, model: str, steps: int, cfg: float) -> benchmark.Sampler:
    return benchmark.Sampler(label, model, steps, "euler", "simple", cfg, (), ())


SAMPLERS = {
    "unet": benchmark.SAMPLERS,
    # the FLUX-class toy as its loader's help page samples it: the teacher 8 steps at cfg 3, the student at cfg 1
    "mmdit": (_mmdit("teacher 8-step", models.MMDIT_TEACHER, 8, 3.0),
              _mmdit("student 1-step", models.MMDIT_STUDENT, 1, 1.0),
              _mmdit("student 4-step", models.MMDIT_STUDENT, 4, 1.0)),
}
"""Per toy architecture: the teacher's row first, then the shipped student's 1- and 4-step rows."""


def samplers(student: Optional[str] = None, arch: str = "unet") -> List[benchmark.Sampler]:
    """``arch``'s teacher row and the student's 1- and 4-step rows (the student model named ``student``; None: the
    shipped one)."""
    rows = SAMPLERS[arch]
    return [s if i == 0 or student is None else replace(s, model=student) for i, s in enumerate(rows)]


@dataclass
class Verdict:
    defects_ok: bool
    retention_ok: bool
    defect_limit: float
    retention_floor: float

    @property
    def ok(self) -> bool:
        return self.defects_ok and self.retention_ok


def verdict(teacher: Row, student: Row) -> Verdict:
    """The bar for a student row against the teacher's."""
    limit, floor = teacher.defects + DEFECT_MARGIN, RETENTION_SHARE * teacher.retention
    return Verdict(student.defects <= limit + 1e-9, student.retention >= floor - 1e-9, limit, floor)


def run(bench: benchmark.Bench, student: Optional[str] = None, split: str = "heldout", arch: str = "unet",
        null_alphas: Sequence[float] = ()) -> List[Row]:
    """The teacher's and the student's rows; then, per ``null_alphas``, the one-step student with NASA on ""."""
    pairs, rows = world.pairs(split), samplers(student, arch)
    one_step = next(s for s in rows if s.steps == 1)
    return [measure(bench, s, pairs) for s in rows] + [measure(bench, one_step, pairs, a) for a in null_alphas]


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def table(rows: Sequence[Row]) -> str:
    """Markdown: one line per row, the one-step bar below (the teacher is the first row)."""
    lines = ["| model | retention ↑ | defects ↓ | blurry | noisy | stray dot | no valid scene | prior color | "
             "black background |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {_pct(r.retention)} | {_pct(r.defects)} | {_pct(r.blurry)} | {_pct(r.noisy)} "
                     f"| {_pct(r.stray)} | {_pct(r.invalid)} | {_pct(r.prior_color)} | {_pct(r.black_background)} |")
    teacher = rows[0]
    one = next((r for r in rows if r.steps == 1), None)
    if one is not None:
        v = verdict(teacher, one)
        lines.append("")
        lines.append(f"One-step bar: defects <= {_pct(v.defect_limit)} (teacher + {100 * DEFECT_MARGIN:g} points): "
                     f"{_pct(one.defects)} {'met' if v.defects_ok else 'NOT met'}; "
                     f"retention >= {_pct(v.retention_floor)} "
                     f"({100 * RETENTION_SHARE:g}% of the teacher's): {_pct(one.retention)} "
                     f"{'met' if v.retention_ok else 'NOT met'}.")
        lines.append("Diversity: 'prior color' and 'black background' are shares of the valid images of positives "
                     "that leave that attribute unnamed; the world draws each with 70%, a student collapsed onto the "
                     "prior's mode shows nearly 100%.")
    return "\n".join(lines)


def main(weights_dir, seeds: int, student_file: Optional[str] = None, split: str = "heldout", log=print,
         arch: str = "unet", null_alphas: Sequence[float] = ()) -> str:
    """``arch``: "unet" (the removal benchmark's student, v3) or "mmdit" (the FLUX-class toy's SBv2 student).
    ``null_alphas``: also the one-step student with NASA at each alpha on the empty negative (:func:`measure`)."""
    if arch not in SAMPLERS:
        raise ValueError(f"quality: --arch must be one of {sorted(SAMPLERS)}, not {arch!r}")
    if any(not a > 0 for a in null_alphas):
        raise ValueError(f"quality: --null-alpha takes alphas above 0 (0 is the plain student's row); got "
                         f"{list(null_alphas)}")
    teacher, shipped = SAMPLERS[arch][0].model, SAMPLERS[arch][1].model
    bench = benchmark.Bench(weights_dir, seeds=seeds, log=log, names=(teacher,) if student_file else (teacher, shipped))
    student = None
    if student_file:
        bench.add_model(STUDENT_LABEL, student_file)
        student = STUDENT_LABEL
    rows = run(bench, student, split, arch, null_alphas)
    head = (f"{'Held-out' if split == 'heldout' else 'Tuning'} prompt pairs' positives, no negative, "
            f"{len(world.pairs(split))} pairs x {seeds} seeds ({student_file or 'the shipped ' + shipped}):\n\n")
    return head + table(rows)
