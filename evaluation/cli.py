"""``python scripts/nasa_eval.py WORKFLOW --clip CLIP_FOLDER``: the paper's evaluation on your own model.

Runs every prompt pair x seed x setting through the workflow (its sampler, prompt and negative text nodes, seed,
cfg and Apply NASA Attention node found by structure), saves each image, scores it with the CLIP model in
``--clip`` (CLIP+, CLIP-, zero-shot removal success) and writes ``<out>/table.md``, ``<out>/results.json`` (the
table and every image's scores), ``<out>/grid.png`` (first seed: pairs x settings) and ``<out>/images/``.
Interrupted runs resume: run the same command again.

    python scripts/nasa_eval.py workflows/sdxl_dmd2_1step_nasa.json --clip ~/models/clip-vit-large-patch14 \\
        --settings none cfg:2 nasa:0.25 nasa:0.5 nag:5 --seeds 4 --out output/eval_dmd2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from ..nasa_core import processes
from . import graph, harness, pairs as pair_files, settings as setting_specs
from .clip import ClipLoadError, ClipScorer
from .detector import DEFAULT_THRESHOLD, Detector
from .hps import load_hps
from .graph import GraphError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasa_eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="a workflow file (UI or API format) with one sampler and its text prompts")
    p.add_argument("--pairs", default="builtin",
                   help="a prompt-pair file (.jsonl, .json, .csv, .tsv, NegOpt .parquet) or 'builtin' (default: "
                        "the pack's 18 pairs)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a random subset of this many pairs")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the random subset (default 0)")
    p.add_argument("--settings", nargs="+", default=["none", "nasa:0.5"],
                   help="what to compare: none, cfg:K, nasa:A, nag:S, vsf:S (default: none nasa:0.5)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per pair and setting: 0 .. N-1 (default 4)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--clip", default=None,
                   help="a local transformers CLIP folder (e.g. a copy of openai/clip-vit-large-patch14); "
                        "without it the images are made but NOT scored")
    p.add_argument("--clip-vision", default=None, metavar="FILE",
                   help="instead of --clip: a CLIP vision file (ComfyUI's models/clip_vision, transformers layout), "
                        "with --clip-text the text encoder of the same CLIP (e.g. clip_vision_g + SDXL's clip_g)")
    p.add_argument("--clip-text", default=None, metavar="FILE", help="see --clip-vision")
    p.add_argument("--hps", default=None, metavar="FILE",
                   help="a local HPSv2 checkpoint (HPS_v2_compressed.pt or HPS_v2.1_compressed.pt) for an HPSv2 "
                        "column beside CLIP's; without it HPSv2 is reported as not measured")
    p.add_argument("--detector", default=None, metavar="FOLDER",
                   help="a local transformers OWL-ViT / OWLv2 folder: removal and keep judged by detection too, "
                        "on the pairs that name objects; needs --clip")
    p.add_argument("--detector-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"the detector's confidence from which a thing counts as present (default {DEFAULT_THRESHOLD})")
    p.add_argument("--out", default="output/evaluation", help="output folder (default output/evaluation)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input of the workflow before the evaluation (as the runner's --set)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="the model file to evaluate, in place of the one the workflow's model loader names "
                        "(CheckpointLoaderSimple, UNETLoader, a GGUF loader): a path anywhere, or a name in "
                        "ComfyUI's models folders; the workflow gives the rest (sampler, steps, size, VAE, text "
                        "encoders)")
    p.add_argument("--random-weights", default=None, metavar="FAMILY[:SIZE]",
                   help="swap the workflow's loaders for random weights (a smoke test of the harness)")
    p.add_argument("--comfyui", default=None, help="the ComfyUI checkout (default: as the runner finds it)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--cpu", dest="cpu", action="store_true", default=None)
    dev.add_argument("--gpu", dest="cpu", action="store_false")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="ComfyUI's node-by-node progress too")
    return p


MODEL_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models"}   # ComfyUI's folder_paths kinds


def use_checkpoint(prompt: dict, value: str, classes) -> str:
    """``--checkpoint``: the file the workflow's model loader loads, set to ``value`` (a path: its folder is added
    to ComfyUI's model folders of that kind, first, for this process; or a name ComfyUI already lists)."""
    import folder_paths
    node, name = graph.model_file(prompt, graph.find_roles(prompt, classes).sampler)
    kind = MODEL_FOLDERS.get(name)
    if name == "unet_name" and value.lower().endswith(".gguf") and "unet_gguf" in folder_paths.folder_names_and_paths:
        kind = "unet_gguf"                                  # ComfyUI-GGUF's own folder kind
    if kind is None:
        raise GraphError(f"--checkpoint {value}: the workflow's model loader {prompt[node]['class_type']} takes "
                         f"its file in {name!r}, a kind of model folder this option does not know; use --set "
                         f"{node}.{name}=FILE with FILE in ComfyUI's models folder")
    path = Path(value).expanduser()
    if path.is_file():
        folder_paths.add_model_folder_path(kind, str(path.resolve().parent), is_default=True)
        if path.name not in folder_paths.get_filename_list(kind):
            raise GraphError(f"--checkpoint {value}: ComfyUI does not list it among its {kind} (a model file "
                             f"ends in {', '.join(sorted(folder_paths.folder_names_and_paths[kind][1]))})")
        value = path.name
    elif value not in folder_paths.get_filename_list(kind):
        raise GraphError(f"--checkpoint {value}: no such file, and not a name in ComfyUI's {kind} folders")
    prompt[node]["inputs"][name] = value
    return f"{node}.{name}={value} (--checkpoint)"


def write_grid(records: dict, jobs: Sequence[harness.Job], out: Path, seed: int) -> Optional[Path]:
    """``grid.png``: the first seed's (first) images, one row per pair, one column per setting, labelled."""
    from PIL import Image, ImageDraw
    first = [j for j in jobs if j.seed == seed]
    pair_ids = list(dict.fromkeys(j.pair.id for j in first))
    keys = list(dict.fromkeys(j.setting.key for j in first))
    if not first:
        return None
    with Image.open(out / harness.IMAGES / records[first[0].key]["images"][0]) as im:
        w, h = im.size
    if max(w, h) < 128:                          # small images (the toy world's) shown larger, pixel for pixel
        w, h = w * -(-128 // max(w, h)), h * -(-128 // max(w, h))
    head, side = 18, 110
    grid = Image.new("RGB", (side + w * len(keys), head + h * len(pair_ids)), "white")
    draw = ImageDraw.Draw(grid)
    for c, key in enumerate(keys):
        label = next(j.setting.label for j in first if j.setting.key == key).replace("α", "alpha")   # bitmap font
        draw.text((side + c * w + 4, 3), label, fill="black")
    for r, pid in enumerate(pair_ids):
        draw.text((4, head + r * h + 4), pid[:16], fill="black")
    for j in first:
        with Image.open(out / harness.IMAGES / records[j.key]["images"][0]) as im:
            grid.paste(im.convert("RGB").resize((w, h), Image.NEAREST if im.width < w else Image.BICUBIC),
                       (side + keys.index(j.setting.key) * w, head + pair_ids.index(j.pair.id) * h))
    grid.save(out / "grid.png")
    return out / "grid.png"


def main(argv: Optional[Sequence[str]], session) -> int:
    """``session``: the runner's WorkflowSession, already up (scripts/nasa_eval.py makes it)."""
    args = build_parser().parse_args(argv)
    try:
        rank, world = processes.environment()
    except ValueError as e:
        print(f"nasa_eval: {e}")
        return 2
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    log = (lambda s: None) if args.quiet else (lambda s: print(tag + s, flush=True))
    try:
        chosen = setting_specs.parse_all(args.settings)
        pairs = list(pair_files.BUILTIN) if args.pairs == "builtin" else pair_files.load(args.pairs)
        if args.limit is not None:
            pairs = pair_files.subset(pairs, args.limit, args.subset_seed)
        if args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
        if bool(args.clip_vision) != bool(args.clip_text) or (args.clip and args.clip_vision):
            raise ClipLoadError("give --clip FOLDER, or --clip-vision FILE with --clip-text FILE (the two halves of "
                                "one CLIP), not both")
        for flag, given, what in (("--hps", args.hps, "HPSv2"), ("--detector", args.detector, "the detector")):
            if given and not (args.clip or args.clip_vision):
                raise ClipLoadError(f"{flag} {given}: {what} scores beside CLIP; give --clip (or --clip-vision "
                                    "and --clip-text) too")
        if args.checkpoint and args.random_weights:
            raise ValueError("--checkpoint and --random-weights both say where the weights come from; give one")
        prompt, _fmt, notes, _data = session.to_api(args.workflow, args.set)
        if args.checkpoint:
            notes.append(use_checkpoint(prompt, args.checkpoint, session.nodes.NODE_CLASS_MAPPINGS))
        if args.random_weights:
            notes += session.random_weights(prompt, args.random_weights)
        scorer = None
        if args.clip or args.clip_vision:
            tokenizer = args.clip or _comfy_tokenizer()
            clip = ClipScorer.from_folder(args.clip, device=_device()) if args.clip else \
                ClipScorer.from_files(args.clip_vision, args.clip_text, tokenizer, device=_device())
            scorer = harness.Scorer(clip, load_hps(args.hps, tokenizer, device=_device()) if args.hps else None,
                                    Detector.from_folder(args.detector, _device(), args.detector_threshold)
                                    if args.detector else None)
    except (ValueError, GraphError, ClipLoadError) as e:        # pair files, settings, --set, the workflow
        print(f"nasa_eval: {e}")
        return 2
    for n in notes:
        log(f"evaluation: set {n}")
    if scorer is None and rank == 0:
        print("nasa_eval: NO --clip given: the images are made but not scored (give a local CLIP folder)")
    out = Path(args.out)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    todo = harness.jobs(pairs, seeds, chosen)
    group = processes.Group(world)
    try:
        code = 0
        try:          # this process's share: every world-th job; the records file of its own
            harness.run(session, prompt, todo[rank::world], out, scorer, log, rank, world)
        except GraphError as e:
            print(f"nasa_eval: {tag}{e}")
            code = 2
        except RuntimeError as e:
            print(f"nasa_eval: {tag}{e}")
            code = 1
        code = group.all_ok(code)
        if code or rank != 0:
            return code
        return _write_outputs(args, out, todo, chosen, len(pairs), seeds)
    finally:
        group.close()


def _write_outputs(args, out: Path, todo, chosen, n_pairs: int, seeds) -> int:
    """Rank 0, after every process finished: the table, results.json and the grid from every process's records."""
    records = harness.load_records(out)
    missing = [j.key for j in todo if j.key not in records]
    if missing:
        print(f"nasa_eval: {len(missing)} runs have no record (e.g. {missing[0]}): run the command again")
        return 1
    rows = harness.summarize((records[j.key] for j in todo), chosen)
    skipped = harness.not_measured(rows, detector_given=bool(args.detector))
    text = harness.table(rows) + "\n\nNot measured:\n" + "".join(f"- {line}\n" for line in skipped)
    (out / "table.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"workflow": str(args.workflow), "pairs": n_pairs,
                                                  "seeds": seeds, "hps": args.hps, "detector": args.detector,
                                                  "clip": args.clip or _halves(args),
                                                  "table": rows, "not_measured": skipped,
                                                  "images": [{k: v for k, v in records[j.key].items()
                                                              if k != "written"} for j in todo]}, indent=1),
                                      encoding="utf-8")
    write_grid(records, todo, out, seeds[0])
    print(text, end="")
    print(f"nasa_eval: {len(todo)} runs, {sum(len(records[j.key]['images']) for j in todo)} images; table.md, "
          f"results.json, grid.png and images/ in {out}")
    return 0


def _halves(args) -> Optional[list]:
    return [args.clip_vision, args.clip_text] if args.clip_vision else None


def _comfy_tokenizer() -> Path:
    """CLIP's tokenizer files as ComfyUI ships them (for the CLIP halves and HPSv2, which carry none)."""
    import comfy.sd1_clip
    return Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer"


def _device() -> str:
    import comfy.model_management
    return str(comfy.model_management.get_torch_device())
