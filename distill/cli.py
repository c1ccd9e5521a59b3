"""``python scripts/nasa_distill.py COMMAND``: the real-scale SBv2 / NASA-T recipe.

    train               distil a one-step student from a local checkpoint and prompt files
    negatives           write a negative-prompt pool: combinations of common quality terms
    random-checkpoint   write a random-weight checkpoint (full-size SD1.5 / SD2.1) to try the recipe on
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from . import recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasa_distill.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="SBv2 / NASA-T distillation (the paper's Table 6 by default)")
    t.add_argument("--checkpoint", help="a full checkpoint ComfyUI's CheckpointLoaderSimple loads (SD1.5, SD2.1)")
    t.add_argument("--diffusion-model", help="a diffusion model file (PixArt-α), with --text-encoder")
    t.add_argument("--text-encoder", help="the text encoder file for --diffusion-model (PixArt: T5-XXL)")
    t.add_argument("--clip-type", default="pixart", help="ComfyUI CLIP type of --text-encoder (default pixart)")
    t.add_argument("--prompts", required=True, help="text file, one training prompt per line (JourneyDB/LAION captions)")
    t.add_argument("--negatives", required=True, help="text file, one negative prompt per line (the negative pool)")
    t.add_argument("--out", required=True, help="folder for trainer.ckpt and the student checkpoint")
    t.add_argument("--no-resume", action="store_true", help="ignore a trainer.ckpt left by an interrupted run")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in fields(recipe.RecipeConfig):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    n = sub.add_parser("negatives", help="a negative-prompt pool from terms (default: distill/examples/negatives.txt)")
    n.add_argument("--terms", default=str(recipe.EXAMPLES / "negatives.txt"), help="text file, one term per line")
    n.add_argument("--count", type=int, default=10000, help="prompts to write (default 10000, the paper's pool size)")
    n.add_argument("--most", type=int, default=4, help="at most this many terms per prompt (default 4)")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", required=True, help="the text file to write")
    r = sub.add_parser("random-checkpoint", help="a random-weight checkpoint to try the recipe on (no download)")
    r.add_argument("--family", default="sd15", choices=["sd15", "sd21", "sd21v"])
    r.add_argument("--size", default="full", choices=["tiny", "full"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="the .safetensors file to write")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "negatives":
        pool = recipe.combine_negatives(recipe.read_lines(args.terms, "--terms"), args.count, args.seed, args.most)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in pool))
        log(f"wrote {len(pool)} negative prompts to {args.out}")
        return 0
    if args.command == "random-checkpoint":
        import torch

        from ..runner.random_weights import models as random_models
        model, clip, vae = random_models.build_checkpoint(args.family, args.size, torch.float32, args.seed)
        recipe.save_student(args.out, model, clip, vae, torch.float16, {"random": args.family, "seed": args.seed})
        log(f"wrote {args.out}")
        return 0
    config = recipe.RecipeConfig(**{f.name: getattr(args, f.name) for f in fields(recipe.RecipeConfig)})
    recipe.run(args.out, recipe.read_lines(args.prompts, "--prompts"), recipe.read_lines(args.negatives, "--negatives"),
               config, checkpoint=args.checkpoint, diffusion_model=args.diffusion_model, text_encoder=args.text_encoder,
               clip_type=args.clip_type, resume=not args.no_resume, progress=not args.no_progress, log=log)
    return 0
