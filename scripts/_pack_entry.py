"""What the pack's command-line scripts share: load the ``runner`` package by file path (as
``nasa_runner``) and run one of the pack's submodules inside ComfyUI.

The pack's root folder is deliberately not put on sys.path: its ``nodes/`` package would hide
ComfyUI's ``nodes`` module. A script's own folder is on sys.path, so ``import _pack_entry`` works.
"""
import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runner(submodule: str):
    """``nasa_runner.<submodule>`` (the runner package loaded from ``ROOT/runner``)."""
    if "nasa_runner" not in sys.modules:
        spec = importlib.util.spec_from_file_location("nasa_runner", ROOT / "runner" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "runner")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["nasa_runner"] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"nasa_runner.{submodule}")


def pack_main(submodule: str, argv) -> int:
    """Bootstrap ComfyUI, load the pack as a custom-node folder, run ``<submodule>.main(argv)``."""
    return runner("comfy_env").pack_main(ROOT, submodule, argv)


def exit_process(code: int) -> None:
    """End the script with ``code`` (under torchrun: without the interpreter teardown torch may abort in)."""
    runner("comfy_env").exit_process(code)
