"""Test harness.

Pure-torch tests always run. Tests that need ComfyUI use the ``comfy`` fixture: it finds a
ComfyUI checkout ($COMFYUI_PATH, the ComfyUI/custom_nodes/<pack> location, or ~/ComfyUI),
imports it on CPU in this process, loads ComfyUI's built-in extra nodes and then this pack
exactly as ComfyUI loads a custom-node folder. Without ComfyUI they are skipped, and the
session header and summary say so in one line.

Under ``CI`` (or ``NASA_STRICT_SKIPS=1``) with a ComfyUI found, a skipped test fails the session unless its
reason says that this ComfyUI version lacks the model family it tests (``support.skip_missing_family``): CI
runs every ComfyUI test on every version it tests.

The pack folder itself is never put on sys.path (its ``nodes/`` package would shadow
ComfyUI's ``nodes`` module); pure modules are loaded by file path instead.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent


def load_standalone(name: str, rel_path: str):
    """Import a package of the pack that does not need ComfyUI (nasa_core, runner) by path."""
    if name in sys.modules:
        return sys.modules[name]
    init = PACK_ROOT / rel_path / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


nasa_core = load_standalone("nasa_core", "nasa_core")
nasa_toy = load_standalone("nasa_toy", "toy")     # the toy world's generator and judges are pure torch
nasa_evaluation = load_standalone("nasa_evaluation", "evaluation")   # its pair files need no ComfyUI
runner = load_standalone("nasa_runner", "runner")
comfy_env = __import__("nasa_runner.comfy_env", fromlist=["x"])
standins = __import__("nasa_runner.standins", fromlist=["x"])

_support_spec = importlib.util.spec_from_file_location("nasa_test_support", Path(__file__).parent / "support.py")
support = sys.modules["nasa_test_support"] = importlib.util.module_from_spec(_support_spec)
_support_spec.loader.exec_module(support)      # the family tests' shared plumbing: import nasa_test_support

COMFY_DIR, COMFY_HOW = comfy_env.find_comfyui(PACK_ROOT)
COMFY_VERSION = comfy_env.comfyui_version(COMFY_DIR) if COMFY_DIR else None
SKIP_REASON = f"ComfyUI not found ({COMFY_HOW}); set COMFYUI_PATH to a ComfyUI checkout to run these tests"


STRICT_SKIPS = bool(os.environ.get("CI")) or os.environ.get("NASA_STRICT_SKIPS") == "1"
_SKIPS: list = []


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append((report.nodeid, reason))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def _forbidden_skips() -> list:
    if not (STRICT_SKIPS and COMFY_DIR):
        return []
    return [(node, reason) for node, reason in _SKIPS if support.MISSING_FAMILY not in reason]


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_report_header(config):
    if COMFY_DIR:
        return f"ComfyUI {COMFY_VERSION} at {COMFY_DIR} (found via {COMFY_HOW}): ComfyUI tests WILL run"
    return f"ComfyUI NOT FOUND - every ComfyUI test is SKIPPED. {COMFY_HOW}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if COMFY_DIR:
        line = f"NASA tests ran against ComfyUI {COMFY_VERSION} at {COMFY_DIR}"
        if standins.standins():
            line += f" ({' and '.join(standins.standins())}: stand-in modules, see runner/standins.py)"
        terminalreporter.write_line(line)
        forbidden = _forbidden_skips()
        if forbidden:
            terminalreporter.write_line(f"FAILED: {len(forbidden)} test(s) skipped against ComfyUI {COMFY_VERSION}; under "
                                        f"CI only a model family this version lacks may be skipped:", red=True)
            for node, reason in forbidden:
                terminalreporter.write_line(f"  {node}: {reason}", red=True)
    else:
        skipped = len(terminalreporter.stats.get("skipped", []))
        terminalreporter.write_line(f"ComfyUI NOT FOUND: {skipped} ComfyUI tests were SKIPPED ({COMFY_HOW})", yellow=True)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported on CPU with this pack loaded. Attributes: nodes, pack, dir, version, mod(name)."""
    if COMFY_DIR is None:
        pytest.skip(SKIP_REASON)
    nodes = comfy_env.bootstrap(COMFY_DIR, cpu=True)
    comfy_env.init_builtin_nodes(nodes)
    pack = comfy_env.load_pack(nodes, PACK_ROOT)
    return SimpleNamespace(nodes=nodes, pack=pack, dir=COMFY_DIR, version=COMFY_VERSION,
                           mod=lambda name: comfy_env.pack_submodule(pack, name))


@pytest.fixture(scope="session")
def comfyui(comfy):
    """Alias of ``comfy`` for test functions that also ``import comfy.*`` (which would shadow the fixture name)."""
    return comfy
