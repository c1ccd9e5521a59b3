"""Stand-ins for torchvision and torchaudio, used only when the real package cannot be imported.

ComfyUI imports torchvision at module-import time for a few model families (Stable Cascade, Cosmos,
ACE) and, from 0.3.7x on, torchaudio too (the Gemma text encoder, the audio VAEs and audio nodes), none
of which NASA uses. On machines without a matching build (CPU-only boxes where only a CUDA wheel exists,
or none for this torch) that import alone stops ComfyUI from loading. A stand-in provides the module
names so the import succeeds; every attribute is a placeholder that raises a clear error the moment
anything actually calls or instantiates it. Nothing is faked: code that really needs the package fails
loudly, naming it.
"""
from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from typing import List

STANDIN_FLAG = "__nasa_standin__"
PACKAGES = {
    "torchvision": ("transforms", "transforms.functional", "transforms.v2", "transforms.v2.functional",
                    "models", "ops", "ops.misc", "io", "utils", "datasets"),
    "torchaudio": ("functional", "transforms", "io", "compliance", "compliance.kaldi", "models", "pipelines",
                   "utils"),
}
USED_BY = {
    "torchvision": "ComfyUI only needs it to import Cascade/Cosmos/ACE code",
    "torchaudio": "ComfyUI only needs it to import audio VAEs, audio nodes and the Gemma 4 text encoder",
}


class _Unavailable:
    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        package = self._name.split(".", 1)[0]
        raise RuntimeError(f"{self._name} is not available: {package} is not installed here and the NASA "
                           f"runner loaded a stand-in for it. Install a {package} build that matches your torch.")

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}")

    def __repr__(self):
        return f"<unavailable {self._name} (stand-in)>"

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


def importable(package: str) -> bool:
    try:
        __import__(package)
    except Exception:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]        # a half-imported package must not shadow the stand-in
        return False
    return True


def is_standin(package: str) -> bool:
    return bool(getattr(sys.modules.get(package), STANDIN_FLAG, False))


def _install_one(package: str, reason: str) -> bool:
    if is_standin(package):
        return True
    if importable(package):
        return False
    root = _make(package)
    sys.modules[package] = root
    for sub in PACKAGES[package]:
        full = f"{package}.{sub}"
        mod = _make(full)
        sys.modules[full] = mod
        parent_name, _, leaf = full.rpartition(".")
        setattr(sys.modules[parent_name], leaf, mod)
    logging.warning("NASA: %s is not importable here; using a STAND-IN that raises if any %s function is called "
                    "(%s). %s", package, package, USED_BY[package], reason)
    return True


def install(reason: str = "") -> List[str]:
    """Register a stand-in for each of torchvision and torchaudio that does not import; returns their names."""
    return [p for p in PACKAGES if _install_one(p, reason)]


def standins() -> List[str]:
    """The packages a stand-in is registered for in this process."""
    return [p for p in PACKAGES if is_standin(p)]
