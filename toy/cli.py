"""``python scripts/nasa_toy.py COMMAND``: rebuild the toy world's models from a seed and benchmark them.

    judges          accuracy of every judge against the generator's ground truth
    train-teacher   the multi-step teacher (writes toy_clip + toy_teacher)
    train-student   a one-step student distilled from the teacher image-free: SBv2 or NASA-T (--mode)
    quality         the one-step student's own quality (no negative) next to the teacher's, and the bar it must meet
    benchmark       the removal table (markdown) and a labeled image grid
    joint-study     NASA's variants on the FLUX-class toy and the stability guard on both toy models (issue 9)
    method-study    NASA, NAG and VSF (and ComfyUI's NAGuidance) side by side on both toy models (issue 27)
    ablation        the NASA-T ablation table from students trained with train-student --mode
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path


from ..nasa_core import vsd
from . import benchmark, judges, models, train


def _add_config(p: argparse.ArgumentParser, cls) -> None:
    for f in fields(cls):
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs="+", default=list(f.default))
        elif f.name == "arch":
            continue           # one --arch for both trainers, in build_parser
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _config(cls, args):
    values = {f.name: getattr(args, f.name) for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_parser(preset: str = "") -> argparse.ArgumentParser:
    """The command line; with ``preset`` (a key of train.PRESETS) train-student's defaults are that recipe's."""
    p = argparse.ArgumentParser(prog="nasa_toy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("judges", help="judge accuracy on fresh generator images")
    j.add_argument("--n", type=int, default=5000)
    for name, cls in (("train-teacher", train.TeacherConfig), ("train-student", train.StudentConfig)):
        t = sub.add_parser(name, help=f"train the {name.split('-')[1]} from a seed")
        t.add_argument("--out", default=str(models.WEIGHTS_DIR), help="weights directory (default: the shipped one)")
        t.add_argument("--no-resume", action="store_true", help="ignore a checkpoint left by an interrupted run")
        t.add_argument("--checkpoint-every", type=_positive, default=250 if cls is train.TeacherConfig else 100,
                       help="steps between resumable checkpoints (<file>.ckpt next to the output)")
        _add_config(t, cls)
        t.add_argument("--arch", choices=train.ARCHS, default="unet",
                       help="unet: the SD UNet toy (default); mmdit: the FLUX-class toy (ComfyUI's Flux class, "
                            "flow matching)")
        if cls is train.TeacherConfig:
            t.add_argument("--weights", default=None,
                           help="--arch mmdit: folder of the toy CLIP the MMDiT reads (default: the shipped one)")
        if cls is train.StudentConfig:
            t.add_argument("--mode", choices=sorted(vsd.MODES), default=None,
                           help="where the negative prompt enters distillation (sets the three switches): "
                                "sbv2 = none, teacher-neg, teacher-lora-neg, nasa-t (teacher + NASA student), nasa-t-lora")
            t.add_argument("--out-file", default="", help="student file name (default by mode)")
            t.add_argument("--weights", default=None, help="folder of the teacher and CLIP (default: --out)")
            t.add_argument("--preset", choices=sorted(train.PRESETS), default="",
                           help="a shipped student's recipe: v2 = fine-tune the SBv2 student into toy_student_v2; "
                                "v3 = fine-tune v2 at a lower learning rate into toy_student_v3; "
                                "nasa-t = fine-tune v3 with NASA-T into toy_student_nasat; mmdit-v2, mmdit-v3 = the "
                                "same two steps for the FLUX-class toy into toy_mmdit_student_v2, _v3 (its settings "
                                "become the defaults; flags given, --mode too, still win)")
            if preset:
                _, target, values = train.PRESETS[preset]
                t.set_defaults(out_file=models.TRAINED_FILES[target], **{k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in values.items()})
    a = sub.add_parser("ablation", help="the NASA-T ablation table (Table 5) from trained students")
    a.add_argument("--students", default="output/toy_ablation", help="folder of <mode>_s<seed>.safetensors")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    a.add_argument("--image-seeds", type=int, default=100, help="image seeds per prompt pair (default 100)")
    a.add_argument("--alpha", type=float, default=None,
                   help="NASA-I at this alpha for every student (default: the benchmark's rule picks it per student)")
    q = sub.add_parser("quality", help="the student's defects and retention without a negative, next to the teacher's")
    q.add_argument("--weights", default=str(models.WEIGHTS_DIR), help="folder of the teacher and CLIP (and student)")
    q.add_argument("--student", default=None, help="a toy student file to measure (default: the shipped v3 student)")
    q.add_argument("--seeds", type=_positive, default=100, help="seeds per prompt pair (default 100)")
    q.add_argument("--split", choices=("heldout", "tune"), default="heldout", help="which prompt pairs' positives")
    q.add_argument("--arch", choices=train.ARCHS, default="unet",
                   help="unet (default) or mmdit: the FLUX-class toy's teacher and student (a --student of that kind)")
    q.add_argument("--null-alpha", type=float, nargs="+", default=[], metavar="ALPHA",
                   help="also the one-step student with NASA at ALPHA on the empty negative '' (names nothing): "
                        "what the subtraction itself costs")
    b = sub.add_parser("benchmark", help="the removal benchmark: markdown table, image grid, results.json")
    b.add_argument("--weights", default=str(models.WEIGHTS_DIR))
    b.add_argument("--seeds", type=int, default=100, help="seeds per prompt pair (default 100)")
    b.add_argument("--out", default="output/toy_benchmark", help="folder for grid.png and results.json")
    js = _study(sub, "joint-study", "variants x alpha on joint attention, the guard on both toy models",
                ["mmdit", "mmdit4", "unet", "unet4"], "output/joint_study", "folder for <world>.json and the grids")
    js.add_argument("--tables-from", nargs="*", default=[], help="earlier <world>.json results to put in the tables")
    js.add_argument("--grids", action="store_true", help="also write <world>_grid.png: no negative, best, worst")
    _study(sub, "method-study", "NASA, NAG and VSF (and ComfyUI's NAGuidance) on both toy models",
           ["unet", "unet4", "mmdit", "mmdit4"], "output/method_study", "folder for <world>.json")
    return p


def _study(sub, name: str, help_text: str, worlds: list, out: str, out_help: str):
    """A study's subcommand over the toy worlds (joint_study.WORLDS): worlds, weights, seeds, out, resume."""
    s = sub.add_parser(name, help=help_text)
    s.add_argument("--worlds", nargs="*", default=worlds,
                   help="some of mmdit, mmdit4 (FLUX-class student, 1 and 4 steps), unet, unet4 (default: all)")
    s.add_argument("--weights", default=str(models.WEIGHTS_DIR))
    s.add_argument("--seeds", type=_positive, default=100, help="seeds per held-out prompt pair (default 100)")
    s.add_argument("--out", default=out, help=out_help)
    s.add_argument("--no-resume", action="store_true", help="re-run worlds whose <world>.json is in --out")
    return s


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", ""):
        args = build_parser(args.preset).parse_args(argv)
        if not args.init:       # the preset's starting student, from the teacher's folder
            source = train.PRESETS[args.preset][0]     # from --out (an earlier preset's output) or --weights
            where = [Path(d) / models.TRAINED_FILES[source] for d in dict.fromkeys((args.out, args.weights or args.out))]
            found = [p for p in where if p.is_file()]
            if not found:
                raise FileNotFoundError(f"train-student --preset {args.preset} starts from the {source}, which is not "
                                        f"at {' or '.join(map(str, where))}: build it first with `python "
                                        f"scripts/nasa_toy.py {models.REBUILD.get(source, 'train-student')}` "
                                        f"(the same --out), or give --init")
            args.init = str(found[0])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "judges":
        acc = judges.judge_accuracy(args.n)
        print("| judge | accuracy |\n|---|---|")
        for k, v in acc.items():
            print(f"| {k} | {100 * v:.2f}% |")
        return 0 if min(acc.values()) >= 0.99 else 1
    if args.command == "train-teacher":
        train.train_teacher(args.out, _config(train.TeacherConfig, args), log=log, resume=not args.no_resume,
                            checkpoint_every=args.checkpoint_every, arch=args.arch, weights_dir=args.weights)
        return 0
    if args.command == "train-student":
        if args.mode is not None:
            for k, on in vsd.mode_switches(args.mode).items():
                setattr(args, k, on)
        train.train_student(args.out, args.weights or args.out, _config(train.StudentConfig, args), log=log,
                            resume=not args.no_resume, checkpoint_every=args.checkpoint_every, out_file=args.out_file)
        return 0
    if args.command == "joint-study":
        from . import joint_study
        print(joint_study.main(args.worlds, args.seeds, args.out, args.tables_from, args.grids, args.weights,
                               resume=not args.no_resume, log=log))
        return 0
    if args.command == "method-study":
        from . import method_study
        print(method_study.main(args.worlds, args.seeds, args.out, args.weights, resume=not args.no_resume, log=log))
        return 0
    if args.command == "quality":
        from . import quality
        print(quality.main(args.weights, args.seeds, args.student, args.split, log=log, arch=args.arch,
                           null_alphas=args.null_alpha))
        return 0
    if args.command == "ablation":
        from . import ablation
        print(ablation.main(args.students, args.seeds, args.image_seeds, log=log, alpha=args.alpha))
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
