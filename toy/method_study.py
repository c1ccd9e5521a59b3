"""NASA, NAG and VSF side by side on both toy worlds (issue 27), and ComfyUI's own NAGuidance node where it runs.

    python scripts/nasa_toy.py method-study --out output/method_study

For every world of :mod:`.joint_study` (the toy UNet and the FLUX-class MMDiT student, 1 and 4 steps) and every
setting of :data:`SETTINGS` (a method with one of its strengths), the held-out prompt pairs are sampled at ``seeds``
seeds each through ComfyUI's sampler at cfg 1 and scored by the exact judges (removal, retention, presence, defects;
:mod:`.benchmark`). NASA, NAG and VSF run through Apply NASA Attention's one pass (``apply_nasa(method=...)``);
``core NAGuidance`` is ComfyUI's own node (ComfyUI 0.33+), which runs the negative as a second batch of the whole
model (its published FLUX path: the image stream duplicated). Cost: FLOPs (torch's FlopCounterMode) and CPU time of
one 1-step batch relative to no negative.

The recommendation per world is derived from the table by :func:`recommend`: among the settings that are *usable*
(:func:`.joint_study.usable`: more removal than no negative, retention kept, defects not raised), the method of
the one with the highest removal.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..nasa_core import Nag, Vsf
from . import benchmark, joint_study, models, world


@dataclass(frozen=True)
class Setting:
    method: str                 # "nasa", "nag", "vsf" or "core NAGuidance"
    strength: float             # NASA's alpha, NAG's scale, VSF's scale
    tau: float = 2.5            # NAG only
    blend: float = 0.25         # NAG only (its alpha)
    bias: float = 0.1           # VSF only

    @property
    def label(self) -> str:
        if self.method == "nasa":
            return f"NASA α {self.strength:g}"
        if self.method == "vsf":
            return f"VSF scale {self.strength:g}, bias {self.bias:g}"
        return f"{'NAG' if self.method == 'nag' else self.method} scale {self.strength:g}, τ {self.tau:g}, " \
               f"α {self.blend:g}"

    def call(self) -> tuple:
        """(bench method, value, apply_nasa options) for :meth:`.benchmark.Bench.images`."""
        if self.method == "nasa":
            return "nasa", self.strength, {}
        if self.method == "core NAGuidance":
            return "core_nag", (self.strength, self.blend, self.tau), None
        m = Nag(self.strength, self.tau, self.blend) if self.method == "nag" else Vsf(self.strength, self.bias)
        return "nasa", m.strength, {"method": m}


SETTINGS = (
    tuple(Setting("nasa", a) for a in joint_study.ALPHAS)
    + tuple(Setting("nag", s) for s in (2.0, 3.0, 5.0, 8.0))          # the authors' tau 2.5, alpha 0.25 (FLUX)
    + (Setting("nag", 5.0, blend=0.5), Setting("nag", 5.0, 1.5, 0.5))   # their alpha elsewhere; ComfyUI's defaults
    + tuple(Setting("vsf", s) for s in (0.5, 1.0, 2.0, 3.5, 5.0))      # the authors' bias 0.1
    + (Setting("core NAGuidance", 5.0, 1.5, 0.5),)                      # ComfyUI's node at its defaults
)


def core_nag_available() -> Optional[str]:
    """Why ComfyUI's NAGuidance node cannot run here, or None (bench.timing's check)."""
    from ..bench.timing import core_nag_available as available
    return None if available() else "this ComfyUI has no NAGuidance node (0.33+)"


def cost(bench: benchmark.Bench, sampler: benchmark.Sampler, setting: Setting) -> dict:
    """FLOPs and CPU time of one 1-step batch with ``setting``, relative to no negative."""
    return benchmark.relative_cost(bench, sampler, setting.call())


def run(bench: benchmark.Bench, world_name: str, settings: Sequence[Setting] = SETTINGS, log=print) -> dict:
    """Every setting of one world on the held-out pairs; a JSON-ready dict (settings that cannot run here are
    listed under ``skipped`` with the reason)."""
    w = joint_study.WORLDS[world_name]
    held = world.pairs("heldout")
    t_start = time.time()
    baseline, _ = bench.cell(w.sampler, held, "none")
    cells, skipped, costs = [], {}, {}
    for setting in settings:
        why = core_nag_available() if setting.method == "core NAGuidance" else None
        if why is not None:
            skipped[setting.label] = why
            continue
        scores, _ = bench.cell(w.sampler, held, *setting.call())
        cells.append({"setting": asdict(setting), "scores": asdict(scores)})
        log(f"method-study {world_name}: {setting.label} done ({time.time() - t_start:.0f} s)")
    for setting in {s.method: s for s in settings if s.label not in skipped}.values():   # one per method
        costs[setting.method] = cost(bench, w.sampler, setting)
    return {"world": world_name, "sampler": w.sampler.label, "seeds": len(bench.seeds), "pairs": len(held),
            "baseline": asdict(baseline), "cells": cells, "skipped": skipped, "cost": costs,
            "seconds": round(time.time() - t_start, 1)}


def recommend(result: dict, defects: bool = True) -> tuple:
    """(method, setting label, scores) of the usable cell with the highest removal (ties: retention), or
    ("none usable", "", None). ``defects=False``: usable without the defect condition (where the defect judge flags
    most images without a negative already)."""
    base = joint_study.scores_of(result["baseline"])
    ok = [c for c in result["cells"] if joint_study.usable(base, joint_study.scores_of(c["scores"]), defects)]
    if not ok:
        return "none usable", "", None
    best = max(ok, key=lambda c: (c["scores"]["removal"], c["scores"]["retention"]))
    s = Setting(**best["setting"])
    return s.method, s.label, joint_study.scores_of(best["scores"])


def tables(results: Sequence[dict]) -> str:
    """Markdown: per world, setting -> removal / retention / presence / defects (%), usable marked; the cost per
    method; the recommendation per world."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    out, summary = [], ["| world | start here | its removal / retention / defects | best NASA | best NAG | best VSF "
                        "| core NAGuidance | start here, defects aside |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = joint_study.scores_of(r["baseline"])
        out.append(f"\n**{r['sampler']}** ({r['pairs']} held-out pairs × {r['seeds']} seeds, cfg 1; removal / "
                   f"retention / presence / defects in %, ✓ = usable). No negative: {pct(base.removal)} / "
                   f"{pct(base.retention)} / {pct(base.presence)} / {pct(base.defects)}.\n")
        out.append("| setting | removal / retention / presence / defects | FLOPs | CPU time |")
        out.append("|---|---|---|---|")
        best = {}
        for c in r["cells"]:
            s, sc = Setting(**c["setting"]), joint_study.scores_of(c["scores"])
            ok = joint_study.usable(base, sc)
            cost = r["cost"].get(s.method)
            out.append(f"| {s.label} | {pct(sc.removal)} / {pct(sc.retention)} / {pct(sc.presence)} / "
                       f"{pct(sc.defects)}{' ✓' if ok else ''} | "
                       + (f"{cost['flops']:.3f}× | {cost['time']:.2f}× |" if cost else "– | – |"))
            if ok and (s.method not in best or sc.removal > best[s.method][1].removal):
                best[s.method] = (s.label, sc)
        for label, why in r.get("skipped", {}).items():
            out.append(f"| {label} | not run: {why} | – | – |")
        method, label, sc = recommend(r)
        cols = [f"{best[m][0]} ({pct(best[m][1].removal)})" if m in best else "none usable"
                for m in ("nasa", "nag", "vsf", "core NAGuidance")]
        _, aside_label, aside = recommend(r, defects=False)
        cols.append(f"{aside_label} ({pct(aside.removal)} / {pct(aside.retention)} / {pct(aside.defects)})" if aside
                    else "none usable")
        summary.append(f"| {r['sampler']} | {method.upper() if sc else method} | "
                       + (f"{pct(sc.removal)} / {pct(sc.retention)} / {pct(sc.defects)}" if sc else "–")
                       + " | " + " | ".join(cols) + " |")
    return "\n".join(out) + "\n\nStart here (the usable setting with the highest removal; usable: removal ≥ no " \
        f"negative + {100 * joint_study.MIN_GAIN:.0f} points, retention ≥ {100 * joint_study.RETENTION_FLOOR:.0f}% " \
        f"of no negative's, defects ≤ no negative + {100 * joint_study.DEFECT_SLACK:.0f} points; in brackets: " \
        "removal %; *defects aside*: the first two conditions only, for where the defect judge flags most images " \
        "without a negative already):\n\n" + "\n".join(summary)


def load(path) -> dict:
    result = json.loads(Path(path).read_text())
    if result.get("world") not in joint_study.WORLDS or "cells" not in result or "skipped" not in result:
        raise ValueError(f"{path} is not a method-study result (expected a file written by method-study --out)")
    return result


def main(worlds: Sequence[str], seeds: int, out, weights_dir=models.WEIGHTS_DIR, resume: bool = True,
         log=print) -> str:
    """Run (or, with ``resume``, reuse ``<out>/<world>.json``) every world; the tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [w for w in worlds if w not in joint_study.WORLDS]
    if unknown:
        raise ValueError(f"method-study: unknown world(s) {unknown}; expected some of {list(joint_study.WORLDS)}")
    names = sorted({joint_study.WORLDS[w].sampler.model for w in worlds}, key=list(models.ALL_FILES).index)
    bench = benchmark.Bench(weights_dir, seeds=seeds, log=log, names=names, chunk=benchmark.CORE_NAG_CHUNK) \
        if names else None
    results = []
    for name in worlds:
        path = out / f"{name}.json"
        if resume and path.is_file():
            result = load(path)
            log(f"method-study {name}: reusing {path}")
        else:
            result = run(bench, name, log=log)
            path.write_text(json.dumps(result, indent=1))
        results.append(result)
    return tables(results)
