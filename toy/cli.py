"""``python scripts/nasa_toy.py COMMAND``: rebuild the toy world's models from a seed and benchmark them.

    judges          accuracy of every judge against the generator's ground truth
    train-teacher   the multi-step teacher (writes toy_clip + toy_teacher)
    train-student   the one-step SBv2 student, distilled from the teacher image-free
    benchmark       the removal table (markdown) and a labeled image grid
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path


from ..nasa_core import judges
from . import benchmark, models, train


def _add_config(p: argparse.ArgumentParser, cls) -> None:
    for f in fields(cls):
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs="+", default=list(f.default))
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _config(cls, args):
    values = {f.name: getattr(args, f.name) for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasa_toy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("judges", help="judge accuracy on fresh generator images")
    j.add_argument("--n", type=int, default=5000)
    for name, cls in (("train-teacher", train.TeacherConfig), ("train-student", train.StudentConfig)):
        t = sub.add_parser(name, help=f"train the {name.split('-')[1]} from a seed")
        t.add_argument("--out", default=str(models.WEIGHTS_DIR), help="weights directory (default: the shipped one)")
        t.add_argument("--no-resume", action="store_true", help="ignore a checkpoint left by an interrupted run")
        _add_config(t, cls)
    b = sub.add_parser("benchmark", help="the removal benchmark: markdown table, image grid, results.json")
    b.add_argument("--weights", default=str(models.WEIGHTS_DIR))
    b.add_argument("--seeds", type=int, default=100, help="seeds per prompt pair (default 100)")
    b.add_argument("--out", default="output/toy_benchmark", help="folder for grid.png and results.json")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "judges":
        acc = judges.judge_accuracy(args.n)
        print("| judge | accuracy |\n|---|---|")
        for k, v in acc.items():
            print(f"| {k} | {100 * v:.2f}% |")
        return 0 if min(acc.values()) >= 0.99 else 1
    if args.command == "train-teacher":
        train.train_teacher(args.out, _config(train.TeacherConfig, args), log=log, resume=not args.no_resume)
        return 0
    if args.command == "train-student":
        train.train_student(args.out, args.out, _config(train.StudentConfig, args), log=log, resume=not args.no_resume)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = benchmark.Bench(args.weights, seeds=args.seeds, log=log)
    result = benchmark.run(bench)
    print(f"Held-out prompt pairs ({len(benchmark.world.pairs('heldout'))} pairs x {result.seeds} seeds); "
          f"the last two columns are the tuning pairs, on which kappa and alpha were chosen.\n")
    print(benchmark.table(result))
    print(benchmark.sweep_table(result))
    benchmark.grid(bench, result, out / "grid.png")
    (out / "results.json").write_text(json.dumps({
        "seeds": result.seeds, "seconds": round(result.seconds, 1),
        "rows": [{**{k: v for k, v in r.items() if k not in ("tune", "heldout")},
                  "tune": asdict(r["tune"]), "heldout": asdict(r["heldout"])} for r in result.rows],
        "sweeps": {k: [(v, asdict(s)) for v, s in sw] for k, sw in result.sweeps.items()},
        "per_pair": {k: [(name, asdict(s)) for name, s in v] for k, v in result.per_pair.items()},
    }, indent=1))
    log(f"benchmark: {result.seconds:.0f} s; wrote {out / 'grid.png'} and {out / 'results.json'}")
    return 0
