"""NASA on joint attention, measured (issue 9): the FLUX adapter's variants and the stability guard on
the toy world's FLUX-class MMDiT, the guard on the toy UNet too.

    python scripts/nasa_toy.py joint-study --worlds mmdit mmdit4 unet unet4 --out output/joint_study --grids

For every world (a model and a sampler), every setting (a variant of where and how NASA steers, a guard
mode) and every alpha of :data:`ALPHAS`, the held-out prompt pairs of the toy benchmark are sampled at
``seeds`` seeds each through ComfyUI's sampler and scored by the exact judges (removal, retention,
defects; :mod:`.benchmark`). Cost is counted on the 1-step sampler: FLOPs with torch's FlopCounterMode
and CPU time, both relative to the same forward without NASA.

A setting's *usable* alphas are those that remove the negative's attribute more often than no negative
(by at least :data:`MIN_GAIN`) while keeping retention (>= :data:`RETENTION_FLOOR` of the baseline's)
and not raising the defect rate by more than :data:`DEFECT_SLACK`. "Does a guard widen the usable
range" is read off that column.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


from ..nasa_core import Guard
from . import benchmark, models, world

ALPHAS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
MIN_GAIN = 0.05
DEFECT_SLACK = 0.04
RETENTION_FLOOR = benchmark.RETENTION_FLOOR


@dataclass(frozen=True)
class Setting:
    variant: str
    guard: str                 # "off", "rescale", "clip 1.5", ...
    options: Tuple[Tuple[str, str], ...] = ()   # apply_nasa keywords besides the guard

    def nasa_options(self) -> dict:
        mode, _, tau = self.guard.partition(" ")
        options = dict(self.options)
        if mode != "off":
            options["guard"] = Guard(mode, float(tau) if tau else 1.0)
        return options

    @property
    def label(self) -> str:
        return self.variant if self.guard == "off" else f"{self.variant} + guard {self.guard}"


PROPAGATED = "propagated stream, all blocks"
VARIANTS = (
    Setting(PROPAGATED, "off"),
    Setting("embedded negative, all blocks", "off", (("stream", "embedded"),)),
    Setting("propagated stream, double blocks only", "off", (("blocks", "double"),)),
    Setting("propagated stream, single blocks only", "off", (("blocks", "single"),)),
)
"""The FLUX adapter's variants: the families issue's design (the negative flows through every block's
text-stream weights) against cheaper approximations."""
CROSS = "all cross-attention layers"
GUARDS = ("rescale", "clip 1.0", "clip 1.5")


@dataclass(frozen=True)
class World:
    name: str
    sampler: benchmark.Sampler
    settings: Tuple[Setting, ...]


def _worlds() -> Dict[str, World]:
    S = benchmark.Sampler
    mm, un = models.MMDIT_STUDENT, benchmark.SBV2_STUDENT
    joint = VARIANTS + tuple(Setting(PROPAGATED, g) for g in GUARDS)
    cross = (Setting(CROSS, "off"),) + tuple(Setting(CROSS, g) for g in GUARDS)
    return {
        "mmdit": World("mmdit", S("MMDiT student 1-step", mm, 1, "euler", "simple", 1.0, (), ALPHAS), joint),
        "mmdit4": World("mmdit4", S("MMDiT student 4-step", mm, 4, "euler", "simple", 1.0, (), ALPHAS), joint),
        "unet": World("unet", S("UNet student 1-step", un, 1, "lcm", "sgm_uniform", 1.0, (), ALPHAS), cross),
        "unet4": World("unet4", S("UNet student 4-step", un, 4, "lcm", "sgm_uniform", 1.0, (), ALPHAS), cross),
    }


WORLDS = _worlds()


def scores_of(d: dict) -> benchmark.Scores:
    """A cell's scores as the study's JSON holds them, back as :class:`.benchmark.Scores`."""
    return benchmark.Scores(**d)


def usable(baseline: benchmark.Scores, s: benchmark.Scores, defects: bool = True) -> bool:
    """Removes more than no negative, keeps retention and (with ``defects``) does not raise the defect rate."""
    return (s.removal >= baseline.removal + MIN_GAIN and s.retention >= RETENTION_FLOOR * baseline.retention
            and (not defects or s.defects <= baseline.defects + DEFECT_SLACK))


def cost(bench: benchmark.Bench, sampler: benchmark.Sampler, setting: Setting) -> dict:
    """FLOPs and CPU time of one 1-step batch with ``setting`` at alpha 1, relative to no negative."""
    return benchmark.relative_cost(bench, sampler, ("nasa", 1.0, setting.nasa_options()))


def run(bench: benchmark.Bench, world_name: str, log=print) -> dict:
    """All settings x alphas of one world on the held-out pairs; a JSON-ready dict."""
    w = WORLDS[world_name]
    held = world.pairs("heldout")
    t_start = time.time()
    baseline, _ = bench.cell(w.sampler, held, "none")
    cells = []
    for setting in w.settings:
        for alpha in ALPHAS:
            scores, _ = bench.cell(w.sampler, held, "nasa", alpha, setting.nasa_options())
            cells.append({"variant": setting.variant, "guard": setting.guard, "alpha": alpha, "scores": asdict(scores)})
        log(f"joint-study {world_name}: {setting.label} done ({time.time() - t_start:.0f} s)")
    costs = {s.label: cost(bench, w.sampler, s) for s in w.settings if s.guard in ("off", "rescale")}
    return {"world": world_name, "sampler": w.sampler.label, "seeds": len(bench.seeds), "pairs": len(held),
            "baseline": asdict(baseline), "cells": cells, "cost": costs, "seconds": round(time.time() - t_start, 1)}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(results: Sequence[dict]) -> str:
    """Markdown: per world, setting x alpha -> removal / retention / defects (%), usable alphas marked,
    cost; then the summary of usable alpha ranges."""
    out = []
    summary = ["| world | setting | usable α | best removal (α) | usable α, defects aside | best removal (α) "
               "| FLOPs | CPU time |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = scores_of(r["baseline"])
        out.append(f"\n**{r['sampler']}** ({r['pairs']} held-out pairs × {r['seeds']} seeds; removal / retention / "
                   f"defects in %, ✓ = usable). No negative: {_pct(base.removal)} / {_pct(base.retention)} / "
                   f"{_pct(base.defects)}.\n")
        out.append("| setting | " + " | ".join(f"α {a:g}" for a in ALPHAS) + " |")
        out.append("|---|" + "---|" * len(ALPHAS))
        settings: Dict[str, List[dict]] = {}
        for c in r["cells"]:
            settings.setdefault(Setting(c["variant"], c["guard"]).label, []).append(c)
        for label, cells in settings.items():
            row = []
            for c in cells:
                s = scores_of(c["scores"])
                row.append(f"{_pct(s.removal)} / {_pct(s.retention)} / {_pct(s.defects)}" + (" ✓" if usable(base, s) else ""))
            out.append(f"| {label} | " + " | ".join(row) + " |")
            columns = []
            for defects in (True, False):
                ok = [(c["alpha"], scores_of(c["scores"])) for c in cells if usable(base, scores_of(c["scores"]), defects)]
                best = max(ok, key=lambda a_s: a_s[1].removal) if ok else None
                columns += [", ".join(f"{a:g}" for a, _ in ok) or "none",
                            f"{_pct(best[1].removal)} (α {best[0]:g})" if best else "–"]
            c = r["cost"].get(label)
            columns += [f"{c['flops']:.4f}×", f"{c['time']:.2f}×"] if c else ["–", "–"]
            summary.append(f"| {r['sampler']} | {label} | " + " | ".join(columns) + " |")
    return "\n".join(out) + "\n\nUsable α (removal ≥ no negative + " + f"{100 * MIN_GAIN:.0f} points, retention ≥ " \
        f"{100 * RETENTION_FLOOR:.0f}% of no negative's, defects ≤ no negative + {100 * DEFECT_SLACK:.0f} points; " \
        "\"defects aside\": the first two only, for where the defect judge flags most images without a negative " \
        "already); cost of one 1-step batch at α 1 relative to no negative:\n\n" + "\n".join(summary)


def save(result: dict, path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def load(path) -> dict:
    result = json.loads(Path(path).read_text())
    if result.get("world") not in WORLDS or "cells" not in result:
        raise ValueError(f"{path} is not a joint-study result (expected a file written by joint-study --out)")
    return result


def extremes(result: dict) -> Tuple[dict, dict]:
    """The best cell (highest removal among usable ones, else highest removal x retention) and the worst
    (highest defect rate) of a world."""
    base = scores_of(result["baseline"])
    cells = result["cells"]
    ok = [c for c in cells if usable(base, scores_of(c["scores"]))]
    best = max(ok, key=lambda c: c["scores"]["removal"]) if ok else \
        max(cells, key=lambda c: c["scores"]["removal"] * c["scores"]["retention"])
    worst = max(cells, key=lambda c: (c["scores"]["defects"], -c["scores"]["retention"]))
    return best, worst


def grid(bench: benchmark.Bench, result: dict, path, pairs: Optional[Sequence[world.PromptPair]] = None,
         per_row: int = 8) -> None:
    """A labeled PNG: for two held-out pairs, no negative, the best and the worst setting of the world."""
    w = WORLDS[result["world"]]
    pairs = pairs or world.pairs("heldout")[:2]
    by_key = {(s.variant, s.guard): s for s in w.settings}
    sections = []
    for pair in pairs:
        rows = [(f"{w.sampler.label}: no negative", bench.images(w.sampler, pair, "none", None)[:per_row])]
        for tag, c in zip(("best", "worst"), extremes(result)):
            s = by_key[c["variant"], c["guard"]]
            rows.append((f"{tag}: {s.label}, alpha {c['alpha']:g}",
                         bench.images(w.sampler, pair, "nasa", c["alpha"], s.nasa_options())[:per_row]))
        sections.append((f'positive "{pair.positive}"   negative "{pair.negative}"', rows))
    benchmark.draw_rows(sections, path, per_row, label_w=400)


def main(worlds: Sequence[str], seeds: int, out, tables_from: Sequence[str] = (), grids: bool = False,
         weights_dir=models.WEIGHTS_DIR, resume: bool = True, log=print) -> str:
    """Run (or, with ``resume``, reuse ``<out>/<world>.json``) every world; tables of them and of
    ``tables_from`` files; with ``grids`` a best/worst PNG per world."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [w for w in worlds if w not in WORLDS]
    if unknown:
        raise ValueError(f"joint-study: unknown world(s) {unknown}; expected some of {list(WORLDS)}")
    names = sorted({WORLDS[w].sampler.model for w in worlds}, key=list(models.ALL_FILES).index)
    bench = benchmark.Bench(weights_dir, seeds=seeds, log=log, names=names) if names else None
    results = [load(p) for p in tables_from]
    for name in worlds:
        path = out / f"{name}.json"
        if resume and path.is_file():
            result = load(path)
            log(f"joint-study {name}: reusing {path}")
        else:
            result = run(bench, name, log)
            save(result, path)
        results.append(result)
        if grids:
            grid(bench, result, out / f"{name}_grid.png")
    return tables(results)
