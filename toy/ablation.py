"""The NASA-T ablation on the toy world (the paper's Table 5, section 6.3), measured with the judges.

Students of every training mode (:data:`..nasa_core.vsd.MODES`) and several training seeds are each
fine-tuned the same number of VSD steps from the same start (the shipped v3 student with v2's recipe, so
that every row differs only in where the negative prompt enters distillation), then sampled in one step
through ComfyUI on the held-out prompt pairs:

* without a negative at inference, and
* with NASA-I, alpha chosen per student on the tuning pairs (the benchmark's rule: highest
  removal keeping 95% of the student's own retention).

Columns: removal / retention / defects on the held-out pairs (their own negative) and "quality":
the defect rate on the held-out positives with the toy world's quality negative
("blurry, noisy, with a stray dot") given the same way (no negative: the plain defect rate).
Each cell is the mean over training seeds with the spread (min..max) across them.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import benchmark, models, world

ROWS = (
    # (label, mode, NASA-I at inference)
    ("plain SBv2", "sbv2", False),
    ("negatives in the teacher only", "teacher-neg", False),
    ("negatives in teacher and LoRA teacher", "teacher-lora-neg", False),
    ("NASA-T (teacher + NASA student)", "nasa-t", False),
    ("NASA-T + NASA-I", "nasa-t", True),
    ("plain SBv2 + NASA-I", "sbv2", True),
    ("teacher only + NASA-I", "teacher-neg", True),
    ("teacher and LoRA teacher + NASA-I", "teacher-lora-neg", True),
)
ONE_STEP = benchmark.SAMPLERS[1]
assert ONE_STEP.steps == 1


def student_path(folder, mode: str, seed: int) -> Path:
    return Path(folder) / f"{mode}_s{seed}.safetensors"


def quality_pairs() -> List[world.PromptPair]:
    return [replace(p, negative=world.QUALITY_NEGATIVE, target=("defect", "blurry")) for p in world.pairs("heldout")]


def evaluate(bench: benchmark.Bench, label: str, nasa: bool, alpha: Optional[float] = None) -> dict:
    """One student, one inference setting: held-out scores, quality defects, the alpha used (``alpha``: NASA-I at
    that alpha instead of the one the benchmark's rule picks on the tuning pairs)."""
    sampler = replace(ONE_STEP, model=label)
    tune, held = world.pairs("tune"), world.pairs("heldout")
    if not nasa:
        alpha = None
    elif alpha is None:
        base, _ = bench.cell(sampler, tune, "none")
        alpha, _ = benchmark.choose(bench, sampler, "nasa", sampler.alphas, base, tune)
    method = "nasa" if nasa else "none"
    heldout, _ = bench.cell(sampler, held, method, alpha)
    quality, _ = bench.cell(sampler, quality_pairs(), method, alpha)
    return {"alpha": alpha, "heldout": asdict(heldout), "quality_defects": quality.defects}


def run(folder, seeds: Sequence[int] = (0, 1), image_seeds: int = 100, weights_dir=models.WEIGHTS_DIR,
        log=print, alpha: Optional[float] = None) -> dict:
    t0 = time.time()
    bench = benchmark.Bench(weights_dir, seeds=image_seeds, log=log)
    cells: Dict[str, list] = {}
    for label, mode, nasa in ROWS:
        for seed in seeds:
            path = student_path(folder, mode, seed)
            name = f"{mode}_s{seed}"
            if name not in bench.loaded:
                bench.add_model(name, path)
            cells.setdefault(label, []).append({"seed": seed, **evaluate(bench, name, nasa, alpha)})
        log(f"ablation: {label} done ({time.time() - t0:.0f} s)")
    return {"seeds": list(seeds), "image_seeds": image_seeds, "alpha": alpha, "seconds": round(time.time() - t0, 1),
            "rows": [{"label": label, "mode": mode, "nasa_i": nasa, "runs": cells[label]} for label, mode, nasa in ROWS]}


def _stat(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    return f"{100 * mean:.1f}% ({100 * min(values):.0f}..{100 * max(values):.0f})"


def table(result: dict) -> str:
    lines = ["| student (training mode) | NASA-I at inference | removal ↑ | retention ↑ | defects ↓ "
             "| defects, quality negative ↓ | alpha |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        runs = row["runs"]
        alphas = ", ".join(f"{r['alpha']:g}" for r in runs) if row["nasa_i"] else "-"
        lines.append(f"| {row['label']} | {'yes' if row['nasa_i'] else 'no'} | "
                     + " | ".join(_stat([r["heldout"][k] for r in runs]) for k in ("removal", "retention", "defects"))
                     + f" | {_stat([r['quality_defects'] for r in runs])} | {alphas} |")
    return "\n".join(lines)


def main(folder, seeds, image_seeds, log=print, alpha: Optional[float] = None) -> str:
    """The table (and ``folder``/ablation.json; with ``alpha``, every NASA-I row at that alpha, ablation_alpha<A>.json)."""
    if alpha is not None and not alpha > 0:
        raise ValueError(f"ablation: --alpha is NASA-I's strength for every student, above 0; got {alpha}")
    modes = dict.fromkeys(mode for _, mode, _ in ROWS)
    missing = [str(student_path(folder, m, s)) for m in modes for s in seeds if not student_path(folder, m, s).is_file()]
    if missing:
        raise FileNotFoundError("ablation: students missing (train them first, see docs/nasa-t.md): "
                                + ", ".join(missing))
    result = run(folder, seeds, image_seeds, log=log, alpha=alpha)
    name = "ablation.json" if alpha is None else f"ablation_alpha{alpha:g}.json"
    (Path(folder) / name).write_text(json.dumps(result, indent=1))
    return table(result)
