"""The student's own quality, next to its teacher's (toy/quality.py): the bar, the measurement against the
benchmark's own scores, and the command."""
from __future__ import annotations

import pytest


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


def test_quality_command_refuses_a_missing_student_file(comfy, tmp_path):
    cli = comfy.mod("toy.cli")
    with pytest.raises(FileNotFoundError, match="train-student"):
        cli.main(["quality", "--seeds", "1", "--student", str(tmp_path / "nope.safetensors")])


def test_preset_v2_is_the_recipe_and_flags_given_still_win(comfy, tmp_path):
    cli, train = comfy.mod("toy.cli"), comfy.mod("toy.train")
    source, target, values = train.PRESETS["v2"]
    args = cli.build_parser("v2").parse_args(["train-student", "--preset", "v2", "--steps", "7"])
    config = cli._config(train.StudentConfig, args)
    assert config.steps == 7 and args.out_file == "toy_student_v2.safetensors"
    for key, value in values.items():
        if key != "steps":
            assert getattr(config, key) == value, key
    plain = cli._config(train.StudentConfig, cli.build_parser().parse_args(["train-student"]))
    assert [k for k in values if getattr(plain, k) == values[k]] == [], "the preset must change every value it names"


def test_preset_v2_trains_from_the_sbv2_student_into_its_own_file(comfy, tmp_path):
    """The whole command on a tiny budget: it starts from the SBv2 student of --weights (no warm start, no pool)
    and writes toy_student_v2, a v-prediction student the loader offers as "student v2 (one-step)"."""
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
