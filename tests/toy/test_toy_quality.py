"""The student's own quality, next to its teacher's (toy/quality.py): the bar, the measurement against the
benchmark's own scores, and the command."""
from __future__ import annotations

import dataclasses

import pytest
import torch


def _row(quality, defects: float, retention: float, steps: int = 1):
    return quality.Row("r", steps, 10, retention, defects, 0.0, 0.0, 0.0, 0.0)


def test_the_bar_is_the_teachers_defects_plus_ten_points_and_nine_tenths_of_its_retention(comfy):
    quality = comfy.mod("toy.quality")
    teacher = _row(quality, defects=0.40, retention=0.80, steps=10)
    assert quality.verdict(teacher, _row(quality, 0.50, 0.72)).ok
    assert quality.verdict(teacher, _row(quality, 0.05, 0.99)).ok           # cleaner than the teacher is fine
    worse = quality.verdict(teacher, _row(quality, 0.51, 0.72))
    assert not worse.ok and not worse.defects_ok and worse.retention_ok
    lost = quality.verdict(teacher, _row(quality, 0.50, 0.71))
    assert not lost.ok and lost.defects_ok and not lost.retention_ok
    assert (lost.defect_limit, lost.retention_floor) == pytest.approx((0.50, 0.72))


def test_rows_equal_the_benchmarks_scores_and_the_breakdown_adds_up(comfy):
    """measure() judges the same images the benchmark's no-negative cell does: same retention and defects; each
    defect's share is at most the defect rate, which is at most their sum plus the invalid share."""
    quality, benchmark, world = comfy.mod("toy.quality"), comfy.mod("toy.benchmark"), comfy.mod("toy.world")
    bench = benchmark.Bench(seeds=6, log=lambda s: None)
    pairs = world.pairs("heldout")
    for sampler in quality.samplers():
        row = quality.measure(bench, sampler, pairs)
        scores, _ = bench.cell(sampler, pairs, "none")
        assert row.n == scores.n == 6 * len(pairs)
        assert row.retention == pytest.approx(scores.retention) and row.defects == pytest.approx(scores.defects)
        parts = (row.blurry, row.noisy, row.stray, row.invalid)
        assert max(parts) <= row.defects + 1e-9 <= sum(parts) + 1e-9, row
        assert 0.0 <= row.prior_color <= 1.0 and 0.0 <= row.black_background <= 1.0, row


def test_quality_command_prints_the_table_and_the_bar(comfy, capsys):
    cli = comfy.mod("toy.cli")
    assert cli.main(["quality", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 pairs x 2 seeds" in out and "| teacher 10-step |" in out and "| student 1-step |" in out
    assert "One-step bar: defects <=" in out and "retention >=" in out


def test_quality_command_on_the_mmdit_measures_its_own_teacher_and_student(comfy, capsys):
    cli, quality, models = comfy.mod("toy.cli"), comfy.mod("toy.quality"), comfy.mod("toy.models")
    rows = quality.samplers("mine", "mmdit")
    assert [r.model for r in rows] == [models.MMDIT_TEACHER, "mine", "mine"] and [r.steps for r in rows] == [8, 1, 4]
    assert [r.model for r in quality.samplers(arch="mmdit")][1:] == [models.MMDIT_STUDENT] * 2
    assert cli.main(["quality", "--arch", "mmdit", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "| teacher 8-step |" in out and "| student 4-step |" in out and models.MMDIT_STUDENT in out
    assert "One-step bar" in out


def test_null_alpha_rows_are_nasa_on_the_empty_negative(comfy, capsys):
    """--null-alpha adds the one-step student with NASA on "": the same images as the benchmark's NASA cell of the
    positives with the negative "", and not the plain student's images."""
    quality, benchmark, world, cli = (comfy.mod(m) for m in ("toy.quality", "toy.benchmark", "toy.world", "toy.cli"))
    bench = benchmark.Bench(seeds=4, log=lambda s: None)
    pairs = world.pairs("heldout")[:2]
    one = quality.samplers()[1]
    row = quality.measure(bench, one, pairs, null_alpha=1.5)
    nulls = [dataclasses.replace(p, negative="") for p in pairs]
    scores, _ = bench.cell(one, nulls, "nasa", 1.5)
    assert row.label == "student 1-step, NASA α 1.5, negative ''" and row.steps == 1
    assert row.defects == pytest.approx(scores.defects) and row.retention == pytest.approx(scores.retention)
    assert not torch.equal(bench.images(one, nulls[0], "nasa", 1.5), bench.images(one, pairs[0], "none", None))
    assert cli.main(["quality", "--seeds", "1", "--null-alpha", "1"]) == 0
    out = capsys.readouterr().out
    assert "| student 1-step, NASA α 1, negative '' |" in out and "One-step bar" in out
    with pytest.raises(ValueError, match="--null-alpha takes alphas above 0"):
        cli.main(["quality", "--seeds", "1", "--null-alpha", "0"])


def test_quality_command_refuses_a_missing_student_file(comfy, tmp_path):
    cli = comfy.mod("toy.cli")
    with pytest.raises(FileNotFoundError, match="train-student"):
        cli.main(["quality", "--seeds", "1", "--student", str(tmp_path / "nope.safetensors")])


@pytest.mark.parametrize("preset, out_file", [("v2", "toy_student_v2.safetensors"),
                                              ("v3", "toy_student_v3.safetensors"),
                                              ("nasa-t", "toy_student_nasat.safetensors"),
                                              ("mmdit-v2", "toy_mmdit_student_v2.safetensors"),
                                              ("mmdit-v3", "toy_mmdit_student_v3.safetensors")])
def test_preset_is_the_recipe_and_flags_given_still_win(comfy, preset, out_file):
    cli, train = comfy.mod("toy.cli"), comfy.mod("toy.train")
    source, target, values = train.PRESETS[preset]
    args = cli.build_parser(preset).parse_args(["train-student", "--preset", preset, "--steps", "7"])
    config = cli._config(train.StudentConfig, args)
    assert config.steps == 7 and args.out_file == out_file
    for key, value in values.items():
        if key != "steps":
            assert getattr(config, key) == value, key
    plain = cli._config(train.StudentConfig, cli.build_parser().parse_args(["train-student"]))
    assert [k for k in values if getattr(plain, k) == values[k]] == [], "the preset must change every value it names"
    assert config.mode == ("nasa-t" if preset == "nasa-t" else "sbv2")


def test_preset_nasa_t_starts_from_v3_and_mode_picks_another_ablation_row(comfy, tmp_path, monkeypatch):
    """train-student --preset nasa-t --mode M: the v3 student as the start and v2's recipe, M's switches (the rows
    of the NASA-T ablation, docs/nasa-t.md)."""
    cli, train, models = comfy.mod("toy.cli"), comfy.mod("toy.train"), comfy.mod("toy.models")
    seen = {}
    monkeypatch.setattr(train, "train_student", lambda out, weights, config, **kw: seen.update(config=config, **kw))
    assert cli.main(["train-student", "--preset", "nasa-t", "--mode", "teacher-neg", "--out", str(tmp_path),
                     "--weights", str(models.WEIGHTS_DIR)]) == 0
    config = seen["config"]
    assert config.mode == "teacher-neg" and config.init == str(models.WEIGHTS_DIR / "toy_student_v3.safetensors")
    assert (config.steps, config.regression_weight, config.lora_convs, config.student_timesteps) == (100, 0.0, True,
                                                                                                     (999,))


def test_presets_v2_then_v3_train_from_the_sbv2_student_into_their_own_files(comfy, tmp_path):
    """The whole chain on a tiny budget: v2 starts from the SBv2 student of --weights (no warm start, no pool) and
    writes toy_student_v2, a v-prediction student; v3 continues from that file into toy_student_v3 (the loader's
    "student v3 (one-step)")."""
    import json
    cli, models = comfy.mod("toy.cli"), comfy.mod("toy.models")
    assert cli.main(["train-student", "--preset", "v2", "--steps", "2", "--batch", "2", "--out", str(tmp_path),
                     "--weights", str(models.WEIGHTS_DIR)]) == 0
    history = json.loads((tmp_path / "toy_student_v2.losses.json").read_text())
    assert [set(h) for h in history] == [{"student", "lora", "grad_abs"}] * 2
    model, info = models.load_unet(tmp_path / "toy_student_v2.safetensors")
    assert info["config"]["init"] == str(models.WEIGHTS_DIR / "toy_student_sbv2.safetensors")
    assert info["config"]["lora_convs"] is True and info["config"]["student_timesteps"] == [999]
    assert model.model.model_type == __import__("comfy.model_base").model_base.ModelType.V_PREDICTION
    # v3 continues from the v2 just written to --out (not the teacher's folder), at v3's learning rate
    assert cli.main(["train-student", "--preset", "v3", "--steps", "1", "--batch", "2", "--out", str(tmp_path),
                     "--weights", str(models.WEIGHTS_DIR)]) == 0
    _, info = models.load_unet(tmp_path / "toy_student_v3.safetensors")
    assert info["config"]["init"] == str(tmp_path / "toy_student_v2.safetensors")
    assert info["config"]["student_lr"] == 3e-5 and info["config"]["steps"] == 1


def test_preset_v3_without_v2_names_the_command_that_builds_it(comfy, tmp_path):
    cli, models = comfy.mod("toy.cli"), comfy.mod("toy.models")
    with pytest.raises(FileNotFoundError, match=r"--preset v3 starts from the student v2 .*train-student --preset v2"):
        cli.main(["train-student", "--preset", "v3", "--out", str(tmp_path), "--weights", str(models.WEIGHTS_DIR)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [(["--ema", "1"], r"--ema is the moving average's decay.*not 1\.0"),
                                            (["--ema", "-0.5"], r"--ema is the moving average's decay.*not -0\.5"),
                                            (["--t-low", "600", "--t-high", "500"], r"t_range \(600, 500\) must satisfy")])
def test_student_training_refuses_a_bad_ema_or_noise_range(comfy, tmp_path, flags, message):
    cli, models = comfy.mod("toy.cli"), comfy.mod("toy.models")
    with pytest.raises(ValueError, match=message):
        cli.main(["train-student", "--preset", "v3", "--init", str(models.WEIGHTS_DIR / "toy_student_v3.safetensors"),
                  "--steps", "1", "--batch", "2", "--out", str(tmp_path), "--weights", str(models.WEIGHTS_DIR)] + flags)
    assert not list(tmp_path.glob("*.safetensors"))


def test_student_ema_is_written_and_follows_the_decay_rule(comfy, tmp_path):
    """train-student --ema D writes the moving average, not the last weights: after one step with the decay's
    warm-up (d = 2/11) it is init + 9/11 (last - init); a decay of ~0 writes the last weights exactly. (One large
    step, so that the average stands out of the files' float16 rounding.)"""
    from safetensors.torch import load_file
    cli, models = comfy.mod("toy.cli"), comfy.mod("toy.models")
    init = models.WEIGHTS_DIR / "toy_student_v3.safetensors"
    common = ["train-student", "--preset", "v3", "--init", str(init), "--steps", "1", "--batch", "2",
              "--student-lr", "1e-2", "--out", str(tmp_path), "--weights", str(models.WEIGHTS_DIR)]
    files = {}
    for name, ema in (("plain", []), ("tiny", ["--ema", "1e-30"]), ("ema", ["--ema", "0.999"])):
        assert cli.main(common + ["--out-file", f"{name}.safetensors"] + ema) == 0
        files[name] = load_file(str(tmp_path / f"{name}.safetensors"))
    start = load_file(str(init))
    assert all(torch.equal(files["tiny"][k], v) for k, v in files["plain"].items())
    moved = [k for k in start if not torch.equal(start[k], files["plain"][k])]
    assert moved
    total_off = total_step = 0.0
    for k in moved:
        expected = start[k].float() + 9 / 11 * (files["plain"][k].float() - start[k].float())
        off, step = (files["ema"][k].float() - expected).abs(), (files["plain"][k].float() - expected).abs()
        assert bool((off <= expected.abs() * 2 ** -9 + 1e-5).all()), (k, off.max())      # files are float16
        total_off, total_step = total_off + float(off.sum()), total_step + float(step.sum())
    assert total_off < total_step / 10, (total_off, total_step)     # nearer the average than the last weights


def test_ablation_at_a_fixed_alpha_runs_every_row_at_it(comfy, tmp_path):
    """ablation --alpha A: every NASA-I row at A (no per-student choice); rows of the same student file at the same
    setting agree, so a row is its student's measurement and nothing else."""
    import json
    import shutil
    ablation, models = comfy.mod("toy.ablation"), comfy.mod("toy.models")
    with pytest.raises(FileNotFoundError, match="students missing"):
        ablation.main(tmp_path, [0], 2, log=lambda s: None)
    for mode in ("sbv2", "teacher-neg", "teacher-lora-neg", "nasa-t"):
        shutil.copyfile(models.WEIGHTS_DIR / "toy_student_v3.safetensors", ablation.student_path(tmp_path, mode, 0))
    with pytest.raises(ValueError, match="--alpha is NASA-I's strength"):
        ablation.main(tmp_path, [0], 2, log=lambda s: None, alpha=0.0)
    table = ablation.main(tmp_path, [0], 2, log=lambda s: None, alpha=0.75)
    result = json.loads((tmp_path / "ablation_alpha0.75.json").read_text())
    assert result["alpha"] == 0.75 and len(table.splitlines()) == 2 + len(ablation.ROWS)
    runs = {row["label"]: row["runs"][0] for row in result["rows"]}
    assert {r["alpha"] for label, r in runs.items() if "NASA-I" in label} == {0.75}
    assert runs["NASA-T + NASA-I"] == runs["plain SBv2 + NASA-I"] != runs["plain SBv2"]
    assert runs["plain SBv2"]["alpha"] is None and runs["plain SBv2"] == runs["NASA-T (teacher + NASA student)"]
