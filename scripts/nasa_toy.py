#!/usr/bin/env python
"""The toy world: rebuild its models from a seed, check its judges, run the removal benchmark.

    python scripts/nasa_toy.py judges
    python scripts/nasa_toy.py train-teacher          # ~45 min on 2 CPU cores
    python scripts/nasa_toy.py train-student          # ~35 min
    python scripts/nasa_toy.py benchmark --out output/toy_benchmark

Needs ComfyUI (found like the runner: $COMFYUI_PATH, ComfyUI/custom_nodes/<pack>, ~/ComfyUI): the
models are ComfyUI's own classes. The pack's root is not put on sys.path (its nodes/ package would
hide ComfyUI's nodes module); ComfyUI loads the pack as it loads any custom-node folder.
"""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("nasa_runner", ROOT / "runner" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "runner")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["nasa_runner"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("nasa_runner.comfy_env")


def main(argv):
    comfy_env = _runner()
    comfy_dir, how = comfy_env.find_comfyui(ROOT)
    if comfy_dir is None:
        print(f"error: {how}", file=sys.stderr)
        return 2
    nodes = comfy_env.bootstrap(comfy_dir)
    comfy_env.quiet_comfy_logging()
    pack = comfy_env.load_pack(nodes, ROOT)
    return comfy_env.pack_submodule(pack, "toy.cli").main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
