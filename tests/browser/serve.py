"""Start the real ComfyUI server (its own main.py) for the browser end-to-end test.

Usage: python serve.py COMFYUI_DIR [main.py arguments...]

The only thing added to a plain ``python main.py``: where torchvision or torchaudio cannot be imported (this
CPU machine has no wheel of either for its torch), the pack's stand-in is registered first. ComfyUI imports
them at module-import time for Cascade/Cosmos/ACE and audio code the test never runs; a stand-in raises if
anything calls it (runner/standins.py). With the real packages it does nothing.
"""
import importlib.util
import logging
import os
import runpy
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python serve.py COMFYUI_DIR [main.py arguments...]")
    comfy_dir = Path(sys.argv[1]).resolve()
    spec = importlib.util.spec_from_file_location("nasa_standins", PACK_ROOT / "runner" / "standins.py")
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    quiet = logging.NullHandler()       # the stand-in's own warning must not configure logging before ComfyUI does
    logging.getLogger().addHandler(quiet)
    try:
        installed = standin.install("(browser-test server launcher)")
        if installed:
            print(f"[tests/browser/serve.py] {' and '.join(installed)} not importable here: registered the pack's "
                  f"stand-in before starting ComfyUI", file=sys.stderr, flush=True)
    finally:
        logging.getLogger().removeHandler(quiet)
    os.chdir(comfy_dir)
    sys.path.insert(0, str(comfy_dir))
    sys.argv = [str(comfy_dir / "main.py")] + sys.argv[2:]
    runpy.run_path(str(comfy_dir / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
