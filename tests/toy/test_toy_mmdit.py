"""The FLUX-class toy model (issue 9) in real ComfyUI: ComfyUI's Flux class through the loader node, its
pooled text, training through ComfyUI's in-place blocks, the flow <-> VP conversion of the distillation
trainer, NASA's variants on it, the joint-attention study's bookkeeping and the example workflow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

PACK_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = PACK_ROOT / "toy" / "weights"
WORKFLOW = PACK_ROOT / "workflows" / "toy_mmdit_1step_nasa.json"


@pytest.fixture(scope="module")
def mmdit(comfy):
    models = comfy.mod("toy.models")
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["NASAToyModelLoader"]
    return models, {choice: loader.execute(choice).result for choice in models.MMDIT_FILES}


def test_loader_node_gives_comfyui_flux(comfyui, mmdit):
    import comfy.latent_formats
    import comfy.ldm.flux.model
    import comfy.model_base
    models, loaded = mmdit
    for choice, (model, clip, vae) in loaded.items():
        assert type(model.model) is comfy.model_base.Flux, choice
        assert type(model.model.diffusion_model) is comfy.ldm.flux.model.Flux
        assert model.model.model_type == comfy.model_base.ModelType.FLOW
        assert isinstance(model.get_model_object("latent_format"), comfy.latent_formats.ChromaRadiance)
        assert len(model.model.diffusion_model.double_blocks) == 2 and len(model.model.diffusion_model.single_blocks) == 2
        assert comfyui.mod("adapters").find_adapter(model) is comfyui.mod("adapters.flux").FAMILY
    teacher, student = (loaded[c][0].model.diffusion_model for c in models.MMDIT_FILES)
    assert any(not torch.equal(p, q) for p, q in zip(teacher.parameters(), student.parameters()))


def test_pooled_text_encoder_equals_clip_text_encode(comfy, mmdit):
    models, loaded = mmdit
    clip = loaded[models.MMDIT_STUDENT][1]
    encode = comfy.nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode
    prompts = ["a red circle", "", "a small square on the left"]
    ours = models.TextEncoder(clip, pooled=True)(prompts)
    assert set(ours) == {"c_crossattn", "y"}
    for i, p in enumerate(prompts):
        cond, extra = encode(clip, p)[0][0]
        assert torch.equal(ours["c_crossattn"][i:i + 1], cond), p
        assert torch.equal(ours["y"][i:i + 1], extra["pooled_output"]), p


def _inputs(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3, 24, 24), generator=g), torch.tensor([0.7, 0.3])


def test_training_through_comfyui_blocks_needs_trainable(comfy, mmdit):
    """ComfyUI's FLUX blocks add in place onto tensors autograd saved (and from 0.3.7x run RoPE in comfy-kitchen
    kernels without a backward): backward fails as is; inside ``trainable()`` it works and the forward is the same
    computation, bit for bit."""
    models, loaded = mmdit
    mm = comfy.mod("toy.mmdit")
    base = mm.build_model(loaded[models.MMDIT_STUDENT][0].model.diffusion_model.state_dict()).model
    conds = models.TextEncoder(loaded[models.MMDIT_STUDENT][1], pooled=True)(["a red circle", "a square"])
    x, sigma = _inputs()
    base.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inplace|no autograd formula"):
        base.apply_model(x, sigma, **conds).square().mean().backward()
    base.zero_grad(set_to_none=True)
    with mm.trainable():
        out = base.apply_model(x, sigma, **conds)
    out.square().mean().backward()
    grads = [p.grad for p in base.parameters() if p.grad is not None]
    assert len(grads) == len(list(base.parameters())) and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        assert torch.equal(out.detach(), base.apply_model(x, sigma, **conds))


def test_flow_model_in_the_trainer_convention(comfy, mmdit):
    """distill.steering maps the flow model onto VP: x0 from the trainer's eps is ComfyUI's denoised at the
    flow sigma; alpha_bar = (1-s)^2 / ((1-s)^2 + s^2); the VP (UNet) path is untouched (test_nasa_t)."""
    models, loaded = mmdit
    distill = comfy.mod("distill.steering")
    diffusion = comfy.mod("nasa_core.diffusion")
    base = loaded[models.MMDIT_STUDENT][0].model
    assert distill.is_flow(base)
    ac = distill.alphas_cumprod(base)
    s = base.model_sampling.sigmas.float()
    assert ac.shape == (1000,) and ac[-1] == distill.FLOW_ALPHA_MIN
    torch.testing.assert_close(ac[:-1], (1 - s[:-1]) ** 2 / ((1 - s[:-1]) ** 2 + s[:-1] ** 2))
    conds = models.TextEncoder(loaded[models.MMDIT_STUDENT][1], pooled=True)(["a red circle", "a square"])
    x0, _ = _inputs(1)
    noise, _ = _inputs(2)
    t = torch.tensor([700, 250])
    x_t = diffusion.add_noise(x0, noise, t, ac)
    with torch.no_grad():
        eps = distill.comfy_eps(base, x_t, t, conds)
        a = ac[t].view(-1, 1, 1, 1)
        sigma = ((1 - a).sqrt() / (a.sqrt() + (1 - a).sqrt()))
        x_flow = x_t / (a.sqrt() + (1 - a).sqrt())
        torch.testing.assert_close(x_flow, (1 - sigma) * x0 + sigma * noise, rtol=1e-5, atol=1e-5)
        denoised = base.apply_model(x_flow, sigma.flatten(), **conds)
        torch.testing.assert_close(diffusion.predict_x0(x_t, eps, t, ac), denoised, rtol=1e-4, atol=1e-4)
        negative = models.TextEncoder(loaded[models.MMDIT_STUDENT][1], pooled=True)(["red"])
        assert torch.equal(distill.comfy_eps(base, x_t, t, conds, negative=(negative, 0.0)), eps)
        steered = distill.comfy_eps(base, x_t, t, conds, negative=(negative, 1.0))
        assert torch.isfinite(steered).all() and not torch.equal(steered, eps)


def test_mmdit_trainers_run_and_write_loadable_files(comfy, tmp_path):
    models, train = comfy.mod("toy.models"), comfy.mod("toy.train")
    logs = []
    info = train.train_teacher(tmp_path, train.TeacherConfig(steps=10, batch=8, warmup=1, lr=2e-3), log=logs.append,
                               arch="mmdit", weights_dir=WEIGHTS)
    losses = json.loads((tmp_path / "toy_mmdit_teacher.losses.json").read_text())
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert info["arch"] == "mmdit" and (tmp_path / models.CLIP_FILE).read_bytes() == (WEIGHTS / models.CLIP_FILE).read_bytes()
    config = train.StudentConfig(arch="mmdit", steps=2, warm_steps=1, batch=2, pool_size=2, pool_ode_steps=2)
    train.train_student(tmp_path, tmp_path, config, log=logs.append)       # the first SBv2 student (a preset stage)
    assert (tmp_path / models.TRAINED_FILES[models.MMDIT_SBV2]).is_file()
    cli = comfy.mod("toy.cli")     # then the shipped student's two presets, each from the file the last one wrote
    for preset in ("mmdit-v2", "mmdit-v3"):
        assert cli.main(["train-student", "--preset", preset, "--steps", "1", "--batch", "2", "--out", str(tmp_path)]) == 0
    model, _, _, student_info = models.load_checkpoint(models.MMDIT_STUDENT, tmp_path)
    assert student_info["kind"] == "student_sbv2" and student_info["config"]["arch"] == "mmdit"
    assert student_info["config"]["init"] == str(tmp_path / models.TRAINED_FILES[models.MMDIT_V2])
    assert (student_info["config"]["lora_updates"], student_info["config"]["student_lr"]) == (4, 3e-5)
    assert type(model.model.diffusion_model).__name__ == "Flux"
    with pytest.raises(ValueError, match="is a unet file but --arch is 'mmdit'"):
        train.train_student(tmp_path, tmp_path, train.StudentConfig(arch="mmdit", init=str(WEIGHTS / "toy_teacher.safetensors")))
    with pytest.raises(ValueError, match="architecture must be one of"):
        train.train_teacher(tmp_path, train.TeacherConfig(steps=1), arch="dit")


@pytest.fixture(scope="module")
def bench(comfy):
    models, benchmark = comfy.mod("toy.models"), comfy.mod("toy.benchmark")
    return benchmark.Bench(seeds=4, names=(models.MMDIT_STUDENT,), log=lambda s: None)


def test_nasa_variants_on_the_toy_mmdit(comfy, bench):
    """alpha 0 is the unpatched model bit for bit; every variant of the study steers (changes the image) and
    the variants differ from each other; a guard that no token reaches (clip 1e6) is plain NASA."""
    js = comfy.mod("toy.joint_study")
    world = comfy.mod("toy.world")
    sampler, pair = js.WORLDS["mmdit"].sampler, world.pairs("heldout")[0]
    plain = bench.images(sampler, pair, "none", None)
    assert torch.equal(bench.images(sampler, pair, "nasa", 0.0), plain)
    images = {s.label: bench.images(sampler, pair, "nasa", 1.0, s.nasa_options()) for s in js.WORLDS["mmdit"].settings}
    assert len(images) == 7
    for label, im in images.items():
        assert not torch.equal(im, plain), label
    labels = list(images)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not torch.equal(images[a], images[b]), (a, b)
    Guard = comfy.mod("nasa_core").Guard
    unreached = bench.images(sampler, pair, "nasa", 1.0, {"guard": Guard("clip", 1e6)})
    assert torch.equal(unreached, images[js.PROPAGATED])


def test_study_settings_and_tables(comfy, tmp_path):
    js = comfy.mod("toy.joint_study")
    Guard = comfy.mod("nasa_core").Guard
    assert js.Setting("x", "off").nasa_options() == {}
    assert js.Setting("x", "clip 1.5", (("stream", "embedded"),)).nasa_options() == {"stream": "embedded",
                                                                                       "guard": Guard("clip", 1.5)}
    assert js.Setting("x", "rescale").nasa_options() == {"guard": Guard("rescale", 1.0)}
    base = {"n": 500, "removal": 0.3, "retention": 0.9, "presence": 0.7, "defects": 0.1}
    good = dict(base, removal=0.6)                       # +30 points, same retention and defects
    defective = dict(base, removal=0.7, defects=0.2)     # +10 points of defects: not usable
    lossy = dict(base, removal=0.7, retention=0.8)       # retention below 95% of 0.9
    cells = [{"variant": js.PROPAGATED, "guard": g, "alpha": a, "scores": s}
             for g in ("off", "rescale") for a, s in zip(js.ALPHAS, (good, defective, lossy, base, good, good))]
    result = {"world": "mmdit", "sampler": "MMDiT student 1-step", "seeds": 100, "pairs": 5, "baseline": base,
              "cells": cells, "cost": {js.PROPAGATED: {"flops": 1.02, "time": 1.1}}}
    assert [js.usable(js.scores_of(base), js.scores_of(s)) for s in (good, defective, lossy, base)] == [True, False, False, False]
    assert [js.usable(js.scores_of(base), js.scores_of(s), defects=False) for s in (good, defective, lossy, base)] == \
        [True, True, False, False]
    text = js.tables([result])
    assert (f"| MMDiT student 1-step | {js.PROPAGATED} | 0.25, 1.5, 2 | 60.0 (α 0.25) | 0.25, 0.5, 1.5, 2 | 70.0 (α 0.5) "
            f"| 1.0200× | 1.10× |") in text
    assert (f"| MMDiT student 1-step | {js.PROPAGATED} + guard rescale | 0.25, 1.5, 2 | 60.0 (α 0.25) | 0.25, 0.5, 1.5, 2 "
            f"| 70.0 (α 0.5) | – | – |") in text
    assert "| 60.0 / 90.0 / 10.0 ✓ | 70.0 / 90.0 / 20.0 | 70.0 / 80.0 / 10.0 |" in text
    best, worst = js.extremes(result)
    assert (best["alpha"], worst["alpha"]) == (0.25, 0.5)
    js.save(result, tmp_path / "mmdit.json")
    assert js.load(tmp_path / "mmdit.json") == result
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a joint-study result"):
        js.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="unknown world"):
        js.main(["flux"], 1, tmp_path)


def test_mmdit_example_workflow_removes_the_attribute(comfy, tmp_path):
    """The shipped workflow through ComfyUI's executor: the toy prompt's bias shows without NASA in at least 12
    of 16 seeds and NASA removes it from at least 4 more (the browser test checks the same on the UI's pixels)."""
    import nasa_runner.cli as cli
    graph = json.loads(WORKFLOW.read_text())
    loader = next(n for n in graph["nodes"] if n["type"] == "NASAToyModelLoader")
    assert loader["widgets_values"] == [comfy.mod("toy.models").MMDIT_STUDENT]
    result = cli.run_workflow(WORKFLOW, out_dir=tmp_path)
    assert result.ok, result.error
    (text,) = cli.collect_texts(result.outputs)
    counts = [int(part.split(" removed in ")[1].split("/")[0]) for part in text.splitlines()[:2]]
    assert counts[0] <= 4 and counts[1] >= counts[0] + 4, text


def test_study_cli_parses(comfy):
    cli = comfy.mod("toy.cli")
    args = cli.build_parser().parse_args(["joint-study", "--worlds", "mmdit", "--seeds", "3", "--grids"])
    assert (args.worlds, args.seeds, args.grids, args.tables_from) == (["mmdit"], 3, True, [])
    args = cli.build_parser().parse_args(["train-teacher", "--arch", "mmdit", "--steps", "5"])
    assert (args.arch, args.steps) == ("mmdit", 5)
    assert cli.build_parser().parse_args(["train-student", "--arch", "mmdit"]).arch == "mmdit"
    for command in ("train-teacher", "train-student"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--arch", "dit"])
