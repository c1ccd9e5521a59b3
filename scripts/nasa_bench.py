#!/usr/bin/env python
"""Time NASA against the plain forward and CFG on ComfyUI's own classes with random weights (a table, not a test).

    python scripts/nasa_bench.py layer                          # one cross-attention layer, SD1.5/SDXL shapes
    python scripts/nasa_bench.py forward --model sd15           # whole forward: plain / NASA / CFG interleaved
    python scripts/nasa_bench.py forward --model flux-small     # FLUX at real width, 2 double + 4 single blocks
    python scripts/nasa_bench.py forward --model sdxl --model flux --device cuda   # on a GPU
    python scripts/nasa_bench.py forward --nag ~/ComfyUI-NAG    # side by side with a ComfyUI-NAG checkout
    python scripts/nasa_bench.py forward --core-nag --model flux-small --model klein-small  # side by side with ComfyUI's own NAGuidance (0.33+)
    python scripts/nasa_bench.py forward --methods --core-nag --model flux-small   # ... and the pack's NAG and VSF
    python scripts/nasa_bench.py trim                           # FLUX: does trimming the negative's T5 padding keep NASA?
    python scripts/nasa_bench.py forward --compile inductor     # whole runs, TorchCompileModel on plain and NASA
    python scripts/nasa_bench.py forward --cache easycache --steps 10   # whole runs with ComfyUI's EasyCache

Forward mode: >= 8 rounds after warm-up, the order rotating each round; per mode the median time, the ratio to
the same round's plain forward (median, min-max), the FLOPs ratio (FlopCounterMode on the same architecture) and
peak memory on CUDA. Layer mode: many repetitions of one steered layer against the plain layer at real shapes,
with the target steered <= 1.25 x plain x FLOPs ratio. fp32 by default: bf16 matmuls are ~100x slower on
CPUs without bf16 units. Needs ComfyUI (COMFYUI_PATH, the custom_nodes location, or ~/ComfyUI), no model files.
"""
import argparse
import sys

import _pack_entry

import torch

PACK = _pack_entry.ROOT
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("layer", "forward", "trim"),
                        help="trim: would trimming the negative's T5 padding keep FLUX's NASA result? (a study)")
    parser.add_argument("--model", action="append", default=None,
                        help="forward: sd15, sdxl, flux-small, flux (repeatable; default sd15 and flux-small); "
                             "layer: sd15-64, sd15-16, sdxl-64, sdxl-32 (default all)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default forward 8, layer 200)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default forward 2, layer 10)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="CPU: leave glibc's malloc as it is (by default the bench makes it keep freed memory, "
                             "as a GPU's caching allocator does; page faults otherwise swamp sub-ms differences)")
    parser.add_argument("--nag", metavar="PATH", default=None,
                        help="forward: also time ComfyUI-NAG (its defaults, the same negative) from a checkout of "
                             "github.com/ChenDarYen/ComfyUI-NAG at PATH; nothing of it is shipped here")
    parser.add_argument("--core-nag", action="store_true",
                        help="forward: also time ComfyUI's own NAGuidance node (ComfyUI 0.33+, its defaults, the "
                             "negative as the batch's second row)")
    parser.add_argument("--methods", action="store_true",
                        help="forward: also time the pack's NAG and VSF (Apply NASA Attention (Advanced)'s method, "
                             "their defaults, the same negative)")
    parser.add_argument("--compile", choices=("inductor", "eager", "aot_eager", "cudagraphs"), default=None,
                        help="forward: time whole sampling runs with ComfyUI's TorchCompileModel (this backend) on "
                             "the plain model and on NASA")
    parser.add_argument("--cache", choices=("easycache", "lazycache"), default=None,
                        help="forward: time whole sampling runs with ComfyUI's EasyCache / LazyCache on both")
    parser.add_argument("--steps", type=int, default=8, help="steps of a run with --compile / --cache (default 8)")
    args = parser.parse_args(argv)
    stack = args.compile is not None or args.cache is not None
    if stack and args.mode != "forward":
        parser.error("--compile and --cache apply to forward mode")
    if stack and args.nag:
        parser.error("--nag times single forwards; leave it out with --compile / --cache")
    if args.nag and args.mode != "forward":
        parser.error("--nag applies to forward mode")
    if args.core_nag and (stack or args.mode != "forward"):
        parser.error("--core-nag times single forwards: forward mode, without --compile / --cache")
    if args.threads:
        torch.set_num_threads(args.threads)
    comfy_env = _pack_entry.runner("comfy_env")
    comfy_dir, how = comfy_env.find_comfyui()
    if comfy_dir is None:
        print(f"nasa_bench: ComfyUI not found ({how}); set COMFYUI_PATH", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("nasa_bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    nodes = comfy_env.bootstrap(comfy_dir, cpu=args.device == "cpu")
    if stack:
        comfy_env.init_builtin_nodes(nodes)     # TorchCompileModel, EasyCache, LazyCache: ComfyUI's extra nodes
    pack = comfy_env.load_pack(nodes, PACK)
    bench = comfy_env.pack_submodule(pack, "bench.timing")
    kept = args.device == "cpu" and not args.system_malloc and bench.keep_freed_memory()
    try:
        nag = bench.load_nag(args.nag) if args.nag else None
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.core_nag and not bench.core_nag_available():
        print(f"nasa_bench: --core-nag needs ComfyUI's NAGuidance node (comfy_extras/nodes_nag.py), which ComfyUI "
              f"{comfy_env.comfyui_version(comfy_dir)} does not have; use ComfyUI 0.33 or newer", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.mode == "trim":
        trim = comfy_env.pack_submodule(pack, "bench.trim")
        print(trim.trim_markdown(trim.run_trim(dtype=dtype)))
        return 0
    cases = bench.LAYER_CASES if args.mode == "layer" else bench.FORWARD_CASES
    names = args.model or ([n for n in bench.LAYER_CASES if n != "tiny"] if args.mode == "layer" else ["sd15", "flux-small"])
    unknown = [n for n in names if n not in cases]
    if unknown:
        print(f"nasa_bench: unknown --model {unknown} for {args.mode}; choose from {list(cases)}", file=sys.stderr)
        return 2
    no_switch = [n for n in names if nag is not None and cases[n].nag is None]
    if no_switch:
        print(f"nasa_bench: --nag: ComfyUI-NAG has no model switch for --model {no_switch}; leave --nag out for "
              f"them (--core-nag times ComfyUI's own NAGuidance there)", file=sys.stderr)
        return 2
    print(f"nasa_bench {args.mode}: torch {torch.__version__}, {args.dtype}, {args.device}, "
          f"{torch.get_num_threads()} threads, ComfyUI {comfy_env.comfyui_version(comfy_dir)}"
          + (", glibc malloc keeping freed memory" if kept else ""), file=sys.stderr)
    rows = []
    for i, name in enumerate(names):
        if i:
            print(f"(so far)\n{bench.markdown(rows)}", file=sys.stderr, flush=True)
        print(f"timing {name} ...", file=sys.stderr)
        if stack:
            rows += bench.run_stack(cases[name], steps=args.steps, compile_backend=args.compile, cache=args.cache,
                                    rounds=args.rounds or 3, warmup=args.warmup if args.warmup is not None else 1,
                                    dtype=dtype, device=device)
        elif args.mode == "layer":
            rows += bench.run_layer(cases[name], rounds=args.rounds or 200,
                                    warmup=args.warmup if args.warmup is not None else 10, dtype=dtype, device=device)
        else:
            rows += bench.run_forward(cases[name], rounds=args.rounds or 8,
                                      warmup=args.warmup if args.warmup is not None else 2, dtype=dtype, device=device,
                                      nag=nag, core_nag=args.core_nag, methods=args.methods)
    print(bench.markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
