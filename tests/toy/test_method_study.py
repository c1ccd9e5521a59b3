"""The side-by-side study of NASA, NAG and VSF on the toy worlds (toy/method_study.py): its settings reach the
methods they name, ComfyUI's own NAGuidance runs as a second batch where this ComfyUI has it, and the tables and the
"start here" recommendation follow from the scores (not asserted)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def ms(comfy):
    return comfy.mod("toy.method_study")


@pytest.fixture(scope="module")
def bench(comfy):
    models, benchmark = comfy.mod("toy.models"), comfy.mod("toy.benchmark")
    return benchmark.Bench(seeds=2, names=(models.MMDIT_STUDENT,), log=lambda s: None)


def test_settings_call_the_methods_they_name(comfy, ms):
    core = comfy.mod("nasa_core")
    assert ms.Setting("nasa", 0.5).call() == ("nasa", 0.5, {})
    assert ms.Setting("nag", 5.0).call() == ("nasa", 4.0, {"method": core.Nag(5.0, 2.5, 0.25)})
    assert ms.Setting("vsf", 2.0, bias=-1.0).call() == ("nasa", 2.0, {"method": core.Vsf(2.0, -1.0)})
    assert ms.Setting("core NAGuidance", 5.0, 1.5, 0.5).call() == ("core_nag", (5.0, 0.5, 1.5), None)
    assert {s.method for s in ms.SETTINGS} == {"nasa", "nag", "vsf", "core NAGuidance"}
    assert len({s.label for s in ms.SETTINGS}) == len(ms.SETTINGS)


def test_each_method_changes_the_toy_mmdit_image_and_core_nag_runs_a_second_batch(comfy, ms, bench):
    js, world = comfy.mod("toy.joint_study"), comfy.mod("toy.world")
    sampler, pair = js.WORLDS["mmdit"].sampler, world.pairs("heldout")[0]
    plain = bench.images(sampler, pair, "none", None)
    images = {}
    for setting in (ms.Setting("nasa", 0.5), ms.Setting("nag", 5.0), ms.Setting("vsf", 2.0)):
        images[setting.method] = bench.images(sampler, pair, *setting.call())
        assert not torch.equal(images[setting.method], plain), setting.label
    assert not torch.equal(images["nag"], images["nasa"]) and not torch.equal(images["vsf"], images["nasa"])
    core_nag = ms.Setting("core NAGuidance", 5.0, 1.5, 0.5)
    if ms.core_nag_available() is not None:
        assert "NAGuidance" in ms.core_nag_available()
        return
    import comfy.model_base
    batches = []
    forward = comfy.model_base.BaseModel.apply_model

    def counting(self, x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(self, x, *args, **kwargs)
    comfy.model_base.BaseModel.apply_model = counting
    try:
        out = bench.images(sampler, pair, *core_nag.call())
    finally:
        comfy.model_base.BaseModel.apply_model = forward
    # cond and uncond in one batch (a second batch), then the chunk without the node (its check that the node acted)
    assert not torch.equal(out, plain) and batches == [2 * plain.shape[0], plain.shape[0]]


def test_chunks_are_sampled_each_as_its_own_seeds(comfy):
    """The study's bench samples CORE_NAG_CHUNK seeds at a time, as ComfyUI's NAGuidance must be: each chunk equals a
    bench of its seeds alone, so a stochastic sampler (the UNet's 4-step LCM, whose noise depends on the batch)
    gives every method of the study, the node included, the same noise."""
    benchmark, js, world = (comfy.mod(m) for m in ("toy.benchmark", "toy.joint_study", "toy.world"))
    sampler, pair = js.WORLDS["unet4"].sampler, world.pairs("heldout")[0]

    def images(**kw):
        return benchmark.Bench(names=(sampler.model,), log=lambda s: None, **kw).images(sampler, pair, "none", None)
    chunked = images(seeds=4, chunk=2)
    torch.testing.assert_close(chunked, torch.cat([images(seeds=2, first_seed=s) for s in (1000, 1002)]))
    assert not torch.allclose(chunked, images(seeds=4), atol=1e-3)      # the chunking is what makes them equal


def test_costs_count_the_method_alone(comfy, ms, bench):
    """FLOPs relative to no negative: NASA's few percent; ComfyUI's NAGuidance its second batch (at most 2x: the
    VAE decode is shared), not the did-it-act check's extra plain sampling."""
    js = comfy.mod("toy.joint_study")
    sampler = js.WORLDS["mmdit"].sampler
    nasa = ms.cost(bench, sampler, ms.Setting("nasa", 0.5))
    assert 1.0 < nasa["flops"] < 1.5 and nasa["time"] > 0
    if ms.core_nag_available() is not None:
        assert "NAGuidance" in ms.core_nag_available()
        return
    core = ms.cost(bench, sampler, ms.Setting("core NAGuidance", 5.0, 1.5, 0.5))
    assert 1.5 < core["flops"] <= 2.0 + 1e-9 and core["time"] > 0


def test_tables_and_recommendation_follow_the_scores(ms, tmp_path):
    base = {"n": 500, "removal": 0.3, "retention": 0.9, "presence": 0.7, "defects": 0.1}
    cells = [{"setting": {"method": "nasa", "strength": 0.5, "tau": 2.5, "blend": 0.25, "bias": 0.1},
              "scores": dict(base, removal=0.6)},
             {"setting": {"method": "nag", "strength": 5.0, "tau": 2.5, "blend": 0.25, "bias": 0.1},
              "scores": dict(base, removal=0.7)},
             {"setting": {"method": "vsf", "strength": 2.0, "tau": 2.5, "blend": 0.25, "bias": 0.1},
              "scores": dict(base, removal=0.8, defects=0.3)}]      # more removal, but defects: not usable
    result = {"world": "unet", "sampler": "UNet student 1-step", "seeds": 100, "pairs": 5, "baseline": base,
              "cells": cells, "skipped": {"core NAGuidance scale 5, τ 1.5, α 0.5": "no node"},
              "cost": {"nasa": {"flops": 1.03, "time": 1.1}, "nag": {"flops": 1.03, "time": 1.1},
                       "vsf": {"flops": 1.06, "time": 1.2}}}
    method, label, scores = ms.recommend(result)
    assert (method, label, scores.removal) == ("nag", "NAG scale 5, τ 2.5, α 0.25", 0.7)
    text = ms.tables([result])
    assert "| NAG scale 5, τ 2.5, α 0.25 | 70.0 / 90.0 / 70.0 / 10.0 ✓ | 1.030× | 1.10× |" in text
    assert "| VSF scale 2, bias 0.1 | 80.0 / 90.0 / 70.0 / 30.0 | 1.060× | 1.20× |" in text
    assert "| core NAGuidance scale 5, τ 1.5, α 0.5 | not run: no node | – | – |" in text
    assert ("| UNet student 1-step | NAG | 70.0 / 90.0 / 10.0 | NASA α 0.5 (60.0) | NAG scale 5, τ 2.5, α 0.25 (70.0) "
            "| none usable | none usable | VSF scale 2, bias 0.1 (80.0 / 90.0 / 30.0) |") in text
    assert ms.recommend(result, defects=False)[0] == "vsf"
    (tmp_path / "unet.json").write_text("{}")
    with pytest.raises(ValueError, match="not a method-study result"):
        ms.load(tmp_path / "unet.json")
    with pytest.raises(ValueError, match="unknown world"):
        ms.main(["flux"], 1, tmp_path)
