"""A stand-in for torchvision, used only when the real one cannot be imported.

ComfyUI imports torchvision at module-import time for a few model families (Stable
Cascade, Cosmos, ACE) that NASA never uses; on machines without a working torchvision
(CPU-only boxes where only a CUDA wheel exists) that import alone stops ComfyUI from
loading. This stand-in provides the module names so the import succeeds; every
attribute is a placeholder that raises a clear error the moment anything actually calls
or instantiates it. Nothing is faked: code that really needs torchvision fails loudly.
"""
from __future__ import annotations

import importlib.machinery
import logging
import sys
import types

STANDIN_FLAG = "__nasa_torchvision_standin__"
_SUBMODULES = ("transforms", "transforms.functional", "transforms.v2", "transforms.v2.functional",
               "models", "ops", "io", "utils", "datasets")


class _Unavailable:
    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not available: torchvision is not installed here and the NASA "
                           f"runner loaded a stand-in for it. Install a torchvision build that matches your torch.")

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}")

    def __repr__(self):
        return f"<unavailable {self._name} (torchvision stand-in)>"

    def __mro_entries__(self, bases):
        # `class X(torchvision.something.Base)` at import time: give a base that fails when instantiated.
        name = self._name

        class _Base:
            def __init__(self, *a, **k):
                _Unavailable(name)()
        return (_Base,)


class _StandinModule(types.ModuleType):
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}")


def _make(name: str) -> types.ModuleType:
    mod = _StandinModule(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []
    mod.__version__ = "0.0.0+nasa-standin"
    setattr(mod, STANDIN_FLAG, True)
    return mod


def torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def install(reason: str = "") -> bool:
    """Register the stand-in in sys.modules unless a real torchvision imports. Returns True if installed."""
    existing = sys.modules.get("torchvision")
    if existing is not None and getattr(existing, STANDIN_FLAG, False):
        return True
    if torchvision_importable():
        return False
    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    root = _make("torchvision")
    sys.modules["torchvision"] = root
    for sub in _SUBMODULES:
        full = f"torchvision.{sub}"
        mod = _make(full)
        sys.modules[full] = mod
        parent_name, _, leaf = full.rpartition(".")
        setattr(sys.modules[parent_name], leaf, mod)
    logging.warning("NASA: torchvision is not importable here; using a STAND-IN that raises if any torchvision "
                    "function is called (ComfyUI only needs it to import Cascade/Cosmos/ACE code). %s", reason)
    return True


def is_standin() -> bool:
    return bool(getattr(sys.modules.get("torchvision"), STANDIN_FLAG, False))
