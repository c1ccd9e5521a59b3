#!/usr/bin/env python
"""The real-scale SBv2 / NASA-T distillation recipe (see docs/nasa-t.md).

    python scripts/nasa_distill.py train --checkpoint sd15.safetensors --prompts prompts.txt \
        --negatives negatives.txt --out output/nasa_t_sd15
    python scripts/nasa_distill.py random-checkpoint --out /tmp/sd15_random.safetensors

Needs ComfyUI (found like the runner: $COMFYUI_PATH, ComfyUI/custom_nodes/<pack>, ~/ComfyUI): the
models are ComfyUI's own classes. ComfyUI loads the pack as it loads any custom-node folder (scripts/_pack_entry.py).
"""
import sys

import _pack_entry

if __name__ == "__main__":
    _pack_entry.exit_process(_pack_entry.pack_main("distill.cli", sys.argv[1:]))
