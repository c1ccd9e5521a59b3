"""The benchmark script's machinery (runner/bench.py) on tiny shapes: it times what it claims and reports the
columns the README shows. No timing is asserted: speed targets live in the benchmark's table."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(comfyui):
    return comfyui.mod("runner.bench")


def test_layer_mode_rows_and_targets(bench, comfyui):
    rows = bench.run_layer(bench.LAYER_CASES["tiny"], comfyui.mod("adapters.negatives"), comfyui.mod("adapters.unet"),
                           comfyui.mod("nasa_core.flops"), rounds=3, warmup=1, device=torch.device("cpu"))
    assert [r.mode for r in rows] == ["plain", "NASA"]
    plain, nasa = rows
    assert plain.ratio == 1.0 and nasa.flops_ratio > 1.0 and nasa.target == pytest.approx(1.25 * nasa.flops_ratio)
    table = bench.markdown(rows)
    assert "tiny (for tests)" in table and "FLOPs × plain" in table and len(table.splitlines()) == 4


def test_interleaving_rotates_the_order(bench):
    seen = []
    fns = {name: (lambda name=name: seen.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved(fns, rounds=3, warmup=0, device=torch.device("cpu"))
    assert seen == ["a", "b", "c", "b", "c", "a", "c", "a", "b"] and all(len(t) == 3 for t in times.values())


def test_a_path_that_does_not_steer_is_refused(bench):
    with pytest.raises(RuntimeError, match="does not steer"):
        bench._check_steers(lambda: torch.ones(2), lambda: torch.ones(2), "x")


def test_command_line_layer_mode(comfy, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "nasa_bench.py"
    env = dict(os.environ, COMFYUI_PATH=str(comfy.dir))
    r = subprocess.run([sys.executable, str(script), "layer", "--model", "tiny", "--rounds", "2", "--warmup", "0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| tiny (for tests) | NASA |" in r.stdout
    bad = subprocess.run([sys.executable, str(script), "layer", "--model", "nope"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown --model ['nope']" in bad.stderr
