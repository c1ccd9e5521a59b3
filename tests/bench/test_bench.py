"""The benchmark script's machinery (runner/bench.py) on tiny shapes: it times what it claims and reports the
columns docs/cost.md shows. No timing is asserted: speed targets live in the benchmark's table."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(comfyui):
    return comfyui.mod("bench.timing")


def test_layer_mode_rows_and_targets(bench, comfyui):
    rows = bench.run_layer(bench.LAYER_CASES["tiny"], rounds=3, warmup=1, device=torch.device("cpu"))
    assert [r.mode for r in rows] == ["plain", "NASA", "NASA, steps 2+"]
    plain, nasa, later = rows
    assert plain.ratio == 1.0 and nasa.flops_ratio > 1.0 and nasa.target == pytest.approx(1.25 * nasa.flops_ratio)
    assert 1.0 < later.flops_ratio < nasa.flops_ratio      # K-/V- kept from the first step: fewer FLOPs
    table = bench.markdown(rows)
    assert "tiny (for tests)" in table and "FLOPs × plain" in table and len(table.splitlines()) == 5


@pytest.mark.parametrize("tools", [dict(cache="easycache"), dict(compile_backend="eager"),
                                   dict(cache="lazycache", compile_backend="eager")])
def test_stack_mode_times_whole_runs_with_the_speed_tools(bench, comfyui, tools):
    """Forward mode with --compile / --cache: whole runs of the plain model and of NASA through ComfyUI's own
    TorchCompileModel and step-cache nodes (tiny SD1.5, its shapes from a tiny cost case)."""
    rm = comfyui.mod("runner.random_weights.models")
    costs = comfyui.mod("bench.costs")
    width = rm.unet_config("sd15")["context_dim"]
    shapes = costs.CostCase("tiny SD1.5", "SD15", {"random_weights": "sd15"}, "tiny", (4, 8, 8), (77, width), 21)
    case = bench.ForwardCase("tiny SD1.5", lambda dtype: rm.build_unet_model("sd15", "tiny", dtype=dtype, seed=0),
                             shapes)
    rows = bench.run_stack(case, steps=3, rounds=2, warmup=1, flops=False, **tools)
    assert [r.mode for r in rows] == ["plain", "NASA"] and rows[0].ratio == 1.0 and rows[1].median_s > 0
    assert "3-step run" in rows[0].name and (("torch.compile eager" in rows[0].name) == ("compile_backend" in tools))


@pytest.mark.parametrize("family", ["flux", "klein"])
def test_forward_mode_times_core_naguidance_beside_nasa_and_cfg(bench, comfyui, family):
    """--core-nag: ComfyUI's own NAGuidance node, applied through the node on the same tiny FLUX.1 / FLUX.2 Klein,
    timed beside plain, NASA and CFG (it steers: checked by the benchmark before timing); FLOPs twice the plain
    forward's. ComfyUI 0.3.64 has no NAGuidance: the benchmark says so."""
    if not bench.core_nag_available():
        import comfyui_version
        assert comfyui_version.__version__ == "0.3.64"
        return
    rm = comfyui.mod("runner.random_weights.models")
    costs = comfyui.mod("bench.costs")
    config_class, config = rm.DIT_FAMILIES[family]
    pooled = config["vec_in_dim"]         # FLUX.1's CLIP-L vector; Klein takes none
    shapes = costs.CostCase(f"tiny {family}", config_class, config, "tiny", (config["in_channels"], 8, 8),
                            (16, config["context_in_dim"]), 16,
                            lambda dtype: {"y": costs.meta_tensor(1, pooled, dtype=dtype)} if pooled else {})
    case = bench.ForwardCase(f"tiny {family}", lambda dtype: rm.build_dit_model(family, dtype=dtype, seed=0), shapes,
                             lambda batch, dtype, device: {"y": torch.randn(batch, pooled, dtype=dtype)} if pooled else {},
                             "flux" if pooled else None, pooled=pooled)
    rows = bench.run_forward(case, rounds=2, warmup=1, device=torch.device("cpu"), core_nag=True)
    by_mode = {r.mode: r for r in rows}
    assert list(by_mode) == ["plain", "NASA", "CFG", "NAGuidance (core)"], list(by_mode)
    assert by_mode["NAGuidance (core)"].flops_ratio == 2.0 and by_mode["NAGuidance (core)"].peak_mib > 0
    assert f"| tiny {family} | NAGuidance (core) |" in bench.markdown(rows)


def test_forward_mode_times_the_packs_nag_and_vsf(bench, comfyui):
    """--methods: the pack's NAG and VSF (their defaults, Apply NASA Attention's one pass) beside NASA on a tiny FLUX:
    both steer (checked before timing); NAG costs NASA's FLOPs (its normalisation is elementwise), VSF more (its one
    softmax recomputes the image tokens' attention with the negative's keys)."""
    rm = comfyui.mod("runner.random_weights.models")
    costs = comfyui.mod("bench.costs")
    config_class, config = rm.DIT_FAMILIES["flux"]
    pooled = config["vec_in_dim"]
    shapes = costs.CostCase("tiny flux", config_class, config, "tiny", (config["in_channels"], 8, 8),
                            (16, config["context_in_dim"]), 16, lambda dtype: {"y": costs.meta_tensor(1, pooled, dtype=dtype)})
    case = bench.ForwardCase("tiny flux", lambda dtype: rm.build_dit_model("flux", dtype=dtype, seed=0), shapes,
                             lambda batch, dtype, device: {"y": torch.randn(batch, pooled, dtype=dtype)}, "flux",
                             pooled=pooled)
    rows = {r.mode: r for r in bench.run_forward(case, rounds=2, warmup=1, device=torch.device("cpu"), methods=True)}
    assert list(rows) == ["plain", "NASA", "CFG", "NAG (pack)", "VSF (pack)"], list(rows)
    assert rows["NAG (pack)"].flops_ratio == pytest.approx(rows["NASA"].flops_ratio, rel=0.02)
    assert rows["VSF (pack)"].flops_ratio > rows["NASA"].flops_ratio


def test_interleaving_rotates_the_order(bench):
    seen = []
    fns = {name: (lambda name=name: seen.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved(fns, rounds=3, warmup=0, device=torch.device("cpu"))
    assert seen == ["a", "b", "c", "b", "c", "a", "c", "a", "b"] and all(len(t) == 3 for t in times.values())


def test_a_path_that_does_not_steer_is_refused(bench):
    with pytest.raises(RuntimeError, match="does not steer"):
        bench.check_steers(lambda: torch.ones(2), lambda: torch.ones(2), "x")
    with pytest.raises(RuntimeError, match="reused projections differs"):
        bench.check_steers(lambda: torch.ones(2), lambda: torch.zeros(2), "x", same=True)


def test_framed_calls_are_timed_without_their_set_up(bench):
    import time
    seen = []
    framed = bench.Framed(lambda: (seen.append("on"), time.sleep(0.2)), lambda: seen.append("run"),
                          lambda: seen.append("off"))
    times = bench.interleaved({"framed": framed}, rounds=2, warmup=1, device=torch.device("cpu"))
    assert seen == ["on", "run", "off"] * 3 and max(times["framed"]) < 0.1


def test_tensor_peak_counts_live_allocations(bench):
    def fn():
        a = torch.zeros(1024)               # 4 KiB
        b = torch.zeros(2048)               # 8 KiB, both alive: 12 KiB
        b.add_(1.0)                         # in place: nothing new
        view = b[:10]                       # a view: nothing new
        del a, b, view
        torch.zeros(512)                    # 2 KiB, after the others are freed
    peak = bench.TensorPeak()
    assert peak.measure(fn) == 12 * 1024 and peak.live == 0


def test_nag_checkout_is_checked(bench, tmp_path):
    with pytest.raises(ValueError, match="not a ComfyUI-NAG checkout"):
        bench.load_nag(str(tmp_path))


def test_command_line_layer_mode(comfy, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "nasa_bench.py"
    env = dict(os.environ, COMFYUI_PATH=str(comfy.dir))
    r = subprocess.run([sys.executable, str(script), "layer", "--model", "tiny", "--rounds", "2", "--warmup", "0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| tiny (for tests) | NASA |" in r.stdout
    bad = subprocess.run([sys.executable, str(script), "layer", "--model", "nope"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown --model ['nope']" in bad.stderr
    stack = subprocess.run([sys.executable, str(script), "layer", "--cache", "easycache"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert stack.returncode == 2 and "--compile and --cache apply to forward mode" in stack.stderr
    core = subprocess.run([sys.executable, str(script), "layer", "--core-nag"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert core.returncode == 2 and "--core-nag times single forwards" in core.stderr


def test_trim_study_counts_real_tokens_and_compares_both_paths(comfyui):
    """The padding-trim study (nasa_bench trim) on one seed: T5's real tokens (through its end token) of the
    256 it pads to, and a finite deviation of the trimmed path from the padded one."""
    trim = comfyui.mod("bench.trim")
    rows = trim.run_trim(seeds=(0,))
    assert [r.prompt for r in rows] == list(trim.TRIM_PROMPTS)
    assert [r.tokens for r in rows] == sorted(r.tokens for r in rows) and rows[0].tokens == 2     # "glasses" + </s>
    assert all(r.padded == 256 and 0 < r.deviation < float("inf") for r in rows)
    assert "real / padded tokens" in trim.trim_markdown(rows)
