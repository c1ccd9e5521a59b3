#!/usr/bin/env python
"""The toy world: rebuild its models from a seed, check its judges, run the removal benchmark.

    python scripts/nasa_toy.py judges
    python scripts/nasa_toy.py train-teacher          # ~45 min on 2 CPU cores
    python scripts/nasa_toy.py train-student          # ~35 min
    python scripts/nasa_toy.py benchmark --out output/toy_benchmark

Needs ComfyUI (found like the runner: $COMFYUI_PATH, ComfyUI/custom_nodes/<pack>, ~/ComfyUI): the
models are ComfyUI's own classes. ComfyUI loads the pack as it loads any custom-node folder (scripts/_pack_entry.py).
"""
import sys

import _pack_entry

if __name__ == "__main__":
    sys.exit(_pack_entry.pack_main("toy.cli", sys.argv[1:]))
