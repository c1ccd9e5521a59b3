#!/usr/bin/env python
"""The paper's evaluation on your own model: every prompt pair x seed x setting through a workflow, scored with a
local CLIP model (CLIP+, CLIP-, zero-shot removal success). See evaluation/cli.py or ``--help``.

    python scripts/nasa_eval.py WORKFLOW.json --clip CLIP_FOLDER [--pairs FILE] [--settings none nasa:0.5 ...]

Finds ComfyUI like the runner (--comfyui, $COMFYUI_PATH, ComfyUI/custom_nodes/<pack>, ~/ComfyUI).
"""
import sys

import _pack_entry

if __name__ == "__main__":
    _pack_entry.exit_process(_pack_entry.runner("cli").pack_command("evaluation.cli", sys.argv[1:]))
