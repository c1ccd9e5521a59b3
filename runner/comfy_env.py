"""Find a ComfyUI checkout and bring it up in this process (headless, no server).

Used by the headless runner and by the test-suite. Importing this module imports
nothing from ComfyUI; :func:`bootstrap` does, once.

The pack's own ``nodes/`` package has the same name as ComfyUI's top-level ``nodes``
module, so the pack's root folder must never be on ``sys.path`` while ComfyUI is in use.
:func:`bootstrap` removes it if a caller put it there and refuses to continue if the
wrong ``nodes`` was already imported.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional

PACK_ROOT = Path(__file__).resolve().parent.parent
NASA_NODE_IDS = ("NASAApplyAttention", "NASANegativeConditioning")


def is_comfyui_dir(path) -> bool:
    p = Path(path)
    return (p / "comfy" / "model_management.py").is_file() and (p / "nodes.py").is_file() \
        and (p / "execution.py").is_file()


def find_comfyui(pack_dir: Path = PACK_ROOT) -> tuple[Optional[Path], str]:
    """Where ComfyUI is, and how it was found: $COMFYUI_PATH, the pack's ComfyUI/custom_nodes/<pack>
    location, or ~/ComfyUI. Returns (None, explanation) when none of them holds a ComfyUI checkout."""
    tried = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser().resolve()
        if is_comfyui_dir(p):
            return p, f"COMFYUI_PATH={env}"
        tried.append(f"COMFYUI_PATH={env} (no ComfyUI there)")
    else:
        tried.append("COMFYUI_PATH (unset)")
    pack_dir = Path(pack_dir).resolve()
    if pack_dir.parent.name == "custom_nodes" and is_comfyui_dir(pack_dir.parent.parent):
        return pack_dir.parent.parent, f"installed in {pack_dir.parent}"
    tried.append(f"the pack's location ({pack_dir} is not inside a ComfyUI/custom_nodes folder)"
                 if pack_dir.parent.name != "custom_nodes" else f"{pack_dir.parent.parent} (not a ComfyUI checkout)")
    home = Path("~/ComfyUI").expanduser()
    if is_comfyui_dir(home):
        return home.resolve(), f"{home}"
    tried.append(f"{home} (not found)")
    return None, "ComfyUI not found; tried " + "; ".join(tried)


def comfyui_version(comfy_dir) -> str:
    f = Path(comfy_dir) / "comfyui_version.py"
    try:
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read_text())
        return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


def _strip_pack_from_sys_path(pack_dir: Path) -> None:
    pack_dir = pack_dir.resolve()
    keep = []
    for entry in sys.path:
        try:
            resolved = Path(entry or os.getcwd()).resolve()
        except OSError:
            keep.append(entry)
            continue
        if resolved != pack_dir:
            keep.append(entry)
    sys.path[:] = keep


_BOOTED: dict = {}


def booted_dir() -> Optional[Path]:
    """The ComfyUI checkout this process already imported, if any."""
    return _BOOTED.get("dir")


def builtin_nodes_loaded() -> bool:
    return _BOOTED.get("extras_loaded") is not None


def bootstrap(comfy_dir, cpu: Optional[bool] = None, pytorch_attention: Optional[bool] = None,
              pack_dir: Path = PACK_ROOT):
    """Import ComfyUI from ``comfy_dir`` for headless use and return its ``nodes`` module.

    ``cpu=None`` picks CPU mode when torch sees no CUDA device. On CPU, ``pytorch_attention``
    (default on) selects torch SDPA instead of ComfyUI's slower sub-quadratic fallback.
    """
    comfy_dir = Path(comfy_dir).resolve()
    if _BOOTED:
        if _BOOTED["dir"] != comfy_dir:
            raise RuntimeError(f"ComfyUI from {_BOOTED['dir']} is already loaded in this process; cannot switch to {comfy_dir}")
        return _BOOTED["nodes"]
    if not is_comfyui_dir(comfy_dir):
        raise FileNotFoundError(f"{comfy_dir} is not a ComfyUI checkout (no comfy/, nodes.py, execution.py)")
    _strip_pack_from_sys_path(pack_dir)
    loaded_nodes = sys.modules.get("nodes")
    if loaded_nodes is not None and Path(getattr(loaded_nodes, "__file__", "") or "").resolve().parent != comfy_dir:
        raise RuntimeError(f"a module named 'nodes' from {getattr(loaded_nodes, '__file__', '?')} is already imported; "
                           f"ComfyUI's nodes.py cannot load. Do not put the NASA pack folder on sys.path.")
    if str(comfy_dir) in sys.path:
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))

    import torch
    from comfy.cli_args import args
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        args.cpu = True
        if pytorch_attention is None:
            pytorch_attention = True
    if pytorch_attention:
        args.use_pytorch_cross_attention = True

    from . import standins
    standins.install("(headless NASA run)")

    import comfy.model_management  # noqa: F401  (reads args.cpu)
    if (comfy_dir / "utils" / "__init__.py").is_file() and "utils" not in sys.modules:
        # ComfyUI's top-level utils package, imported before nodes.py as main.py does: nodes.py puts comfy/ on
        # sys.path, after which `import utils` would find comfy/utils.py and server.py's `utils.install_util`
        # (0.3.6x; every comfy_extras module that imports server, e.g. nodes_images) would fail to import
        importlib.import_module("utils")
    nodes = importlib.import_module("nodes")
    if Path(nodes.__file__).resolve().parent != comfy_dir:
        raise RuntimeError(f"imported 'nodes' from {nodes.__file__}, expected ComfyUI's at {comfy_dir}")
    _BOOTED.update(dir=comfy_dir, nodes=nodes, cpu=cpu)
    return nodes


def init_builtin_nodes(nodes) -> list:
    """Load ComfyUI's own extra nodes (comfy_extras); returns the modules that failed to import."""
    if _BOOTED.get("extras_loaded") is not None:
        return _BOOTED["extras_loaded"]
    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    _BOOTED["extras_loaded"] = list(failed)
    return _BOOTED["extras_loaded"]


def load_pack(nodes, pack_dir: Path = PACK_ROOT):
    """Load the NASA pack the way ComfyUI loads a custom node folder; return the pack's module."""
    pack_dir = Path(pack_dir).resolve()
    key = ("pack", str(pack_dir))
    if key in _BOOTED:
        return _BOOTED[key]
    ok = asyncio.run(nodes.load_custom_node(str(pack_dir)))
    missing = [n for n in NASA_NODE_IDS if n not in nodes.NODE_CLASS_MAPPINGS]
    if not ok or missing:
        raise RuntimeError(f"ComfyUI could not load the NASA pack from {pack_dir} (missing nodes: {missing}); "
                           f"see the log above for the import error")
    module = sys.modules[str(pack_dir).replace(".", "_x_")]
    _BOOTED[key] = module
    return module


def pack_submodule(pack_module, name: str):
    """The pack's submodule ``name`` (e.g. 'adapters.unet') as loaded by ComfyUI."""
    return importlib.import_module(f"{pack_module.__name__}.{name}")


def quiet_comfy_logging(level=logging.WARNING) -> None:
    logging.getLogger().setLevel(level)


def pin_local_rank_gpu() -> None:
    """Under torchrun / accelerate launch with several processes: each process sees the GPU of its local rank
    (``CUDA_VISIBLE_DEVICES``, unless the user set it), before ComfyUI initialises CUDA and picks cuda:0."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1 \
            and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["LOCAL_RANK"]


def exit_process(code: int) -> None:
    """End a command-line process with ``code``. Under torchrun / accelerate launch with several processes, stdout
    and stderr are flushed and the interpreter's teardown is skipped (``os._exit``): after a gloo process group,
    torch 2.13 sometimes aborts in that teardown ("terminate called without an active exception", SIGABRT; 2 of
    30 two-process CPU runs), and torchrun then reports the whole finished run as failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def pack_main(root, submodule: str, argv, *extra) -> int:
    """Bootstrap ComfyUI, load the pack at ``root`` as ComfyUI loads a custom-node folder, and call
    ``<submodule>.main(argv, *extra)`` (the scripts/ command lines)."""
    comfy_dir, how = find_comfyui(root)
    if comfy_dir is None:
        print(f"error: {how}", file=sys.stderr)
        return 2
    pin_local_rank_gpu()
    nodes = bootstrap(comfy_dir)
    quiet_comfy_logging()
    pack = load_pack(nodes, root)
    return pack_submodule(pack, submodule).main(argv, *extra)
