#!/usr/bin/env python
"""Run a ComfyUI workflow headless (see runner/cli.py, or --help).

    python scripts/nasa_run.py workflows/sd15_1step_nasa.json --out out/
    python scripts/nasa_run.py workflows/sd15_1step_nasa.json --random-weights sd15 \
        --set EmptyLatentImage.width=64 --set EmptyLatentImage.height=64

The pack's root folder is deliberately not put on sys.path: its ``nodes/`` package would hide
ComfyUI's ``nodes`` module. The ``runner`` package is loaded by file path instead.
"""
import importlib.util
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"


def _load_runner():
    spec = importlib.util.spec_from_file_location("nasa_runner", RUNNER / "__init__.py",
                                                  submodule_search_locations=[str(RUNNER)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["nasa_runner"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("nasa_runner.cli")


if __name__ == "__main__":
    sys.exit(_load_runner().main(sys.argv[1:]))
