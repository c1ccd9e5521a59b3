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

from . import benchmark, judges, world

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


def measure(bench: benchmark.Bench, sampler: benchmark.Sampler, pairs: Sequence[world.PromptPair]) -> Row:
    """``sampler``'s images of every pair's positive, no negative, judged. Diversity: among the valid images of
    positives that leave the color (background) unnamed, the share in the shape's prior color (on black); the world
    draws both with 70%, a student collapsed onto the prior's mode approaches 100%."""
    kept, verdicts, prior_color, black = [], [], [], []
    prior = torch.tensor([world.COLORS.index(world.PRIOR_COLOR[s]) for s in world.SHAPES])
    for pair in pairs:
        v = judges.judge(bench.images(sampler, pair, "none", None))
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
    return Row(sampler.label, sampler.steps, n, sum(kept) / n, float(any_defect), float(defects[0]), float(defects[1]),
               float(defects[2]), float((~valid).float().mean()), _share(prior_color), _share(black))


def samplers(student: str = benchmark.STUDENT) -> List[benchmark.Sampler]:
    """The benchmark's teacher row and the student's 1- and 4-step rows (the student model named ``student``)."""
    return [s if s.model == benchmark.TEACHER else replace(s, model=student) for s in benchmark.SAMPLERS]


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


def run(bench: benchmark.Bench, student: str = benchmark.STUDENT, split: str = "heldout") -> List[Row]:
    return [measure(bench, s, world.pairs(split)) for s in samplers(student)]


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


def main(weights_dir, seeds: int, student_file: Optional[str] = None, split: str = "heldout", log=print) -> str:
    names = (benchmark.TEACHER,) if student_file else (benchmark.TEACHER, benchmark.STUDENT)
    bench = benchmark.Bench(weights_dir, seeds=seeds, log=log, names=names)
    student = benchmark.STUDENT
    if student_file:
        bench.add_model(STUDENT_LABEL, student_file)
        student = STUDENT_LABEL
    rows = run(bench, student, split)
    head = (f"{'Held-out' if split == 'heldout' else 'Tuning'} prompt pairs' positives, no negative, "
            f"{len(world.pairs(split))} pairs x {seeds} seeds ({student_file or 'the shipped student'}):\n\n")
    return head + table(rows)
