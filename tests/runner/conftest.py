"""The runner's tests run whole workflows through ComfyUI in this process, after every other test module of the
session has built (and dropped) its models.

ComfyUI keeps a ``LoadedModel`` for each model it loaded. One whose ModelPatcher is gone while its model is still
referenced from somewhere ("dead") makes ComfyUI run a full ``gc.collect()`` at every model load and every prompt
(``comfy.model_management.cleanup_models_gc``), and in a long test session with a large heap each of those takes
seconds: the workflow runs here, 0.2 s alone, took 10 s at the end of a full suite. Before each module, the models
other tests left loaded are unloaded, collected once, and the dead entries (no patcher: nothing can use them again)
are dropped from ComfyUI's list. Nothing of the runner's own state is touched (its random-weight models are built
and loaded by the runs themselves).
"""
from __future__ import annotations

import gc
import sys

import pytest


@pytest.fixture(scope="module", autouse=True)
def _release_models_other_tests_left_loaded():
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        gc.collect()
        mm.cleanup_models()
        mm.current_loaded_models[:] = [m for m in mm.current_loaded_models if not m.is_dead()]
    yield
