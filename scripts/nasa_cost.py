#!/usr/bin/env python
"""Print NASA's extra FLOPs over a plain forward per model family (the table in docs/cost.md).

    python scripts/nasa_cost.py                 # every family, markdown table on stdout
    python scripts/nasa_cost.py --only FLUX     # cases whose name contains FLUX

Models are ComfyUI's own classes at published sizes, built on the meta device (no weights, no
memory); FLOPs are counted by torch's FlopCounterMode (see bench/costs.py). Needs ComfyUI
(COMFYUI_PATH, the custom_nodes location, or ~/ComfyUI), no GPU and no model files.
"""
import argparse
import sys

import _pack_entry

PACK = _pack_entry.ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="only cases whose name contains this text")
    parser.add_argument("--alpha", type=float, default=0.5, help="NASA scale (does not change the count unless 0)")
    args = parser.parse_args(argv)
    comfy_env = _pack_entry.runner("comfy_env")
    comfy_dir, how = comfy_env.find_comfyui()
    if comfy_dir is None:
        print(f"nasa_cost: ComfyUI not found ({how}); set COMFYUI_PATH", file=sys.stderr)
        return 2
    nodes = comfy_env.bootstrap(comfy_dir, cpu=True)
    pack = comfy_env.load_pack(nodes, PACK)
    costs = comfy_env.pack_submodule(pack, "bench.costs")
    cases = [c for c in costs.CASES if args.only.lower() in c.name.lower()]
    if not cases:
        print(f"nasa_cost: no case matches {args.only!r}; cases: {[c.name for c in costs.CASES]}", file=sys.stderr)
        return 2
    rows = []
    for case in cases:
        why = costs.unavailable(case)
        if why is not None:
            print(f"skipping {case.name}: {why}", file=sys.stderr)
            continue
        print(f"counting {case.name} ...", file=sys.stderr)
        rows.append(costs.count(case, alpha=args.alpha))
    print(costs.markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
