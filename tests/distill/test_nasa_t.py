"""NASA-T on real ComfyUI models: the trainer's ComfyUI network path (adapters/distill.py), the toy
world's training modes end to end, resume after a real kill, and the real-scale recipe (distill/) on
an in-memory SD1.5-shaped model.

Held against ComfyUI itself: the one-step sample ``comfy_eps`` implies is the sample ComfyUI's own
sampler makes (without NASA, and with Apply NASA Attention at the same alpha); per-row negatives
equal each row run alone (toy UNet and PixArt-α); a steered forward leaves the model as it found it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nasa_test_support as support
from nasa_core import vsd

PACK_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = PACK_ROOT / "toy" / "weights"
SBV2 = WEIGHTS / "toy_student_sbv2.safetensors"


@pytest.fixture(scope="module")
def env(comfyui):
    models = comfyui.mod("toy.models")
    model, clip, _, _ = models.load_checkpoint("student SBv2 (one-step)")
    enc = comfyui.nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode
    return dict(models=models, distill=comfyui.mod("distill.steering"), diffusion=comfyui.mod("nasa_core.diffusion"),
                model=model, clip=clip, enc=lambda text: enc(clip, text)[0], text=models.TextEncoder(clip))


def _one_step(env, noise, cond, negative=None):
    base = env["model"].model
    t = torch.full((noise.shape[0],), 999, dtype=torch.long)
    ac = env["distill"].alphas_cumprod(base)
    with torch.no_grad():
        eps = env["distill"].comfy_eps(base, noise, t, cond, negative)
    return env["diffusion"].predict_x0(noise, eps, t, ac)


def test_comfy_eps_is_what_comfyui_samples(env):
    """x0 from the trainer's eps at t = 999 is ComfyUI's own one-step sample of the same noise: plain,
    and with NASA on the negative at alpha 0.6 (Apply NASA Attention, the sampler's negative)."""
    noise = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    pos, neg = env["enc"]("a circle"), env["enc"]("red")
    cond, neg_cond = env["text"](["a circle"] * 2), env["text"](["red"] * 2)
    latent = torch.zeros(2, 3, 24, 24)
    plain = support.sample(env["model"], latent, pos, neg, noise=noise)
    ours = _one_step(env, noise, cond)
    assert torch.allclose(ours, plain, atol=1e-4), (ours - plain).abs().max()
    steered = support.sample(support.apply_nasa(env["model"], alpha=0.6), latent, pos, neg, noise=noise)
    ours_nasa = _one_step(env, noise, cond, (neg_cond, 0.6))
    support.check_close(ours_nasa, steered, plain, tol=1e-3)


def test_per_row_negatives_and_no_leftovers_on_the_toy_unet(env):
    """Each training prompt has its own negative: a batch of two equals each row alone. A steered
    forward leaves nothing behind: the plain forward after it is bit-identical to the one before."""
    noise = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    cond, negs = env["text"](["a circle", "a square"]), env["text"](["red", "blurry"])
    before = _one_step(env, noise, cond)
    both = _one_step(env, noise, cond, (negs, 0.8))
    for i in range(2):
        alone = _one_step(env, noise[i:i + 1], cond[i:i + 1], (negs[i:i + 1], 0.8))
        assert torch.allclose(both[i:i + 1], alone, atol=1e-5), i
    assert (both - before).abs().max() > 0.05, "NASA must change the sample for this test to mean anything"
    assert torch.equal(_one_step(env, noise, cond), before)
    assert torch.equal(_one_step(env, noise, cond, (negs, 0.0)), before)
    with pytest.raises(ValueError, match="3 negatives for a batch of 2"):
        _one_step(env, noise, cond, (env["text"](["red"] * 3), 0.5))


def test_per_row_negatives_on_pixart(comfyui, env):
    """The same on ComfyUI's PixArt-α class (random weights; its NASA rides on object patches that
    must be set only for the steered forward)."""
    rm = comfyui.mod("runner.random_weights.models")
    mp = rm.build_dit_model("pixart", dtype=torch.float32, seed=0)
    base, distill = mp.model, env["distill"]
    width = rm.DIT_FAMILIES["pixart"][1]["caption_channels"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 34, 34, generator=g)
    cond, negs = torch.randn(2, 12, width, generator=g), torch.randn(2, 7, width, generator=g)
    t = torch.tensor([999, 600])
    forward = type(base.diffusion_model.blocks[0].cross_attn).forward

    def eps(x, t, cond, negative=None):
        with torch.no_grad():
            return distill.comfy_eps(base, x, t, cond, negative)
    plain = eps(x, t, cond)
    both = eps(x, t, cond, (negs, 1.0))
    assert (both - plain).abs().max() > 1e-2 * plain.abs().max()
    for i in range(2):
        alone = eps(x[i:i + 1], t[i:i + 1], cond[i:i + 1], (negs[i:i + 1], 1.0))
        assert torch.allclose(both[i:i + 1], alone, atol=1e-4, rtol=1e-4), i
    assert all(b.cross_attn.forward.__func__ is forward for b in base.diffusion_model.blocks), "object patch left behind"
    assert torch.equal(eps(x, t, cond), plain)


def test_the_gradient_reaches_the_student_through_the_negative(env):
    """NASA-T trains the student through its NASA attention: the loss's gradient flows into the
    negative branch (the negative's encoding gets a gradient) and changes the weights' gradient."""
    student = env["models"].load_checkpoint("student SBv2 (one-step)")[0].model   # its own copy (ComfyUI 0.33's
    student.requires_grad_(True)                                                    # model configs refuse deepcopy)
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([999, 999])
    cond = env["text"](["a circle", "a square"])
    neg = env["text"](["red", "blue"]).requires_grad_(True)
    grads = []
    for negative in (None, (neg, 0.7)):
        student.zero_grad(set_to_none=True)
        env["distill"].comfy_eps(student, x, t, cond, negative).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    assert neg.grad is not None and neg.grad.abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])


def _tiny_student(train, mode, **kw):
    config = dict(steps=2, batch=2, pool_size=4, pool_ode_steps=2, init=str(SBV2))
    config.update(kw)
    return train.StudentConfig(**{**config, **vsd.mode_switches(mode)})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import shutil
    folder = tmp_path_factory.mktemp("toy_weights")
    for name in ("toy_clip.safetensors", "toy_teacher.safetensors"):
        shutil.copy(WEIGHTS / name, folder / name)
    return folder


@pytest.mark.parametrize("mode", ["sbv2", "teacher-neg", "teacher-lora-neg", "nasa-t", "nasa-t-lora"])
def test_every_training_mode_runs_a_few_steps(comfyui, weights, tmp_path, mode):
    """train-student in each mode: a few finite steps on a tiny batch from the shipped SBv2 student,
    a loadable v-prediction student whose info names the mode."""
    train, models = comfyui.mod("toy.train"), comfyui.mod("toy.models")
    config = _tiny_student(train, mode)
    assert config.mode == mode
    logs = []
    info = train.train_student(tmp_path, weights, config, log=logs.append, out_file=f"{mode}.safetensors")
    history = json.loads((tmp_path / f"{mode}.losses.json").read_text())
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(v)) for h in history for v in h.values())
    assert all(("alpha" in h) == ("nasa-t" in mode) for h in history)
    assert all(0.0 <= h.get("alpha", 0.0) <= 1.0 for h in history)
    model, _ = models.load_unet(tmp_path / f"{mode}.safetensors")
    assert info["kind"] == f"student_{mode}" and model.model.model_type.name == "V_PREDICTION"
    shipped, _ = models.load_unet(SBV2)
    moved = [not torch.equal(a, b) for a, b in zip(model.model.parameters(), shipped.model.parameters())]
    assert any(moved), "two steps must move the student away from its --init"
    assert not any(tmp_path.glob("*.ckpt")) and any(f"student ({mode}) step 2/2" in line for line in logs)


def test_init_must_match_the_prediction(comfyui, weights, tmp_path):
    train = comfyui.mod("toy.train")
    with pytest.raises(ValueError, match=r"--init .* predicts 'v' but --prediction is 'eps'"):
        train.train_student(tmp_path, weights, _tiny_student(train, "nasa-t", prediction="eps"), log=lambda s: None)


def _train_args(out, weights):
    return ["train-student", "--mode", "nasa-t", "--steps", "6", "--batch", "2", "--pool-size", "4",
            "--pool-ode-steps", "2", "--init", str(SBV2), "--checkpoint-every", "1", "--weights", str(weights),
            "--out", str(out), "--out-file", "s.safetensors", "--ema", "0.9"]   # the average resumes too


def _train_cmd(out, weights):
    return [sys.executable, str(PACK_ROOT / "scripts" / "nasa_toy.py")] + _train_args(out, weights)


def test_resume_after_a_kill_gives_the_uninterrupted_weights(comfyui, weights, tmp_path):
    """A NASA-T run killed with SIGKILL mid-training and started again with the same command ends
    with exactly the weights (and loss history) of a run that was never interrupted (same seed); the file is the
    weights' moving average (--ema), so its state must resume too."""
    from safetensors.torch import load_file
    env = {**os.environ, "COMFYUI_PATH": str(comfyui.dir)}
    assert comfyui.mod("toy.cli").main(_train_args(tmp_path / "straight", weights)) == 0   # the same command, here
    killed = subprocess.Popen(_train_cmd(tmp_path / "killed", weights), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "killed" / "s.ckpt"
    deadline = time.time() + 900
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stderr.read()[-3000:]
    time.sleep(0.5)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    assert not (tmp_path / "killed" / "s.safetensors").exists()
    resumed = subprocess.run(_train_cmd(tmp_path / "killed", weights), env=env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(resumed.stderr.split("resumed at step ")[1].split()[0])
    assert 1 <= step < 6, resumed.stderr[-3000:]
    a, b = load_file(str(tmp_path / "straight" / "s.safetensors")), load_file(str(tmp_path / "killed" / "s.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((tmp_path / "killed" / "s.losses.json").read_text())
    assert history == json.loads((tmp_path / "straight" / "s.losses.json").read_text())


# -- the real-scale recipe on an in-memory SD1.5-shaped model ---------------------------------------

PROMPTS = ["a photo of a dog on a beach", "an oil painting of a lighthouse", "a red car in the rain",
           "a bowl of fruit on a table"]
NEGATIVES = ["blurry", "low quality, jpeg artifacts", "watermark, text", "deformed hands"]


def _loaded(rm):
    student, clip, vae = rm.build_checkpoint("sd15", "tiny", torch.float32, 0)
    teacher, _, _ = rm.build_checkpoint("sd15", "tiny", torch.float32, 0)
    return student, teacher, clip, vae


class _Killed(Exception):
    pass


def test_recipe_trains_saves_and_resumes(comfyui, tmp_path, monkeypatch):
    """distill.recipe.run on a tiny random SD1.5 (bf16 mixed precision, micro-batches): the saved file
    is a full checkpoint ComfyUI's loader reads back (UNet + CLIP + VAE), and a run interrupted after
    iteration 2 and resumed from trainer.ckpt saves exactly the uninterrupted run's weights."""
    import comfy.utils
    recipe, rm, vsd = comfyui.mod("distill.recipe"), comfyui.mod("runner.random_weights.models"), comfyui.mod("nasa_core.vsd")
    config = recipe.RecipeConfig(iterations=4, batch=2, micro_batch=1, resolution=64, student_lr=1e-3,
                                 checkpoint_every=1, save_dtype="fp32", lora_rank=4, lora_scale=8.0)
    quiet = dict(progress=False, log=lambda s: None)
    straight = recipe.run(tmp_path / "straight", PROMPTS, NEGATIVES, config, loaded=_loaded(rm), **quiet)

    real_step, calls = vsd.SBv2Trainer.step, []

    def dies_at_third(self, prompts):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed
        return real_step(self, prompts)
    monkeypatch.setattr(vsd.SBv2Trainer, "step", dies_at_third)
    with pytest.raises(_Killed):
        recipe.run(tmp_path / "resumed", PROMPTS, NEGATIVES, config, loaded=_loaded(rm), **quiet)
    monkeypatch.setattr(vsd.SBv2Trainer, "step", real_step)
    assert (tmp_path / "resumed" / "trainer.ckpt").is_file()
    logs = []
    resumed = recipe.run(tmp_path / "resumed", PROMPTS, NEGATIVES, config, loaded=_loaded(rm), progress=False,
                         log=logs.append)
    assert any("resumed at iteration 2" in line for line in logs)
    a, b = comfy.utils.load_torch_file(str(straight)), comfy.utils.load_torch_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prefixes = {k.split(".")[0] for k in a}
    assert prefixes >= {"model", "cond_stage_model", "first_stage_model"}, prefixes
    teacher = recipe.checkpoint_state_dict(_loaded(rm)[1])
    unet = [k for k in a if k.startswith("model.diffusion_model.")]
    assert unet and set(unet) <= set(teacher)
    assert any(not torch.equal(a[k], teacher[k].float()) for k in unet), "the student must have trained"
    meta = json.loads(comfy.utils.safetensors.safe_open(str(straight), "pt").metadata()["nasa_distill"])
    assert meta["mode"] == "nasa-t" and meta["config"]["lora_rank"] == 4
    assert not (tmp_path / "resumed" / "trainer.ckpt").exists()

    changed = recipe.RecipeConfig(**{**config.__dict__, "iterations": 5})
    monkeypatch.setattr(vsd.SBv2Trainer, "step", dies_at_third)
    calls.clear()
    with pytest.raises(_Killed):
        recipe.run(tmp_path / "other", PROMPTS, NEGATIVES, config, loaded=_loaded(rm), **quiet)
    monkeypatch.setattr(vsd.SBv2Trainer, "step", real_step)
    with pytest.raises(ValueError, match="another configuration"):
        recipe.run(tmp_path / "other", PROMPTS, NEGATIVES, changed, loaded=_loaded(rm), **quiet)


def test_recipe_on_pixart_saves_the_diffusion_model(comfyui, tmp_path):
    """The recipe's PixArt-α path: ComfyUI's PixArt class and its T5 text encoder class (tiny, random),
    NASA-T with per-row negatives through the PixArt object patches, micro-batch 1 (T5 encodings differ
    in length: a whole batch is refused with the fix); the result is the diffusion model alone."""
    import comfy.utils
    recipe, rm = comfyui.mod("distill.recipe"), comfyui.mod("runner.random_weights.models")
    rdit = comfyui.mod("runner.random_weights.dit")
    clip = rdit.build_text_encoder("pixart")
    loaded = (rm.build_dit_model("pixart", seed=0), rm.build_dit_model("pixart", seed=0), clip, None)
    prompts = ["a photo of a dog", "an oil painting of a lighthouse on a rocky coast at night"]
    config = recipe.RecipeConfig(backbone="pixart", iterations=2, batch=2, micro_batch=1, resolution=272,
                                 lora_rank=4, lora_scale=8.0, student_lr=1e-3, precision="fp32", save_dtype="fp32")
    path = recipe.run(tmp_path, prompts, NEGATIVES, config, loaded=loaded, progress=False, log=lambda s: None)
    saved = comfy.utils.load_torch_file(str(path))
    teacher = recipe.checkpoint_state_dict(rm.build_dit_model("pixart", seed=0))
    assert saved.keys() == teacher.keys() and all(k.startswith("model.diffusion_model.") for k in saved)
    assert any(not torch.equal(saved[k], teacher[k].float()) for k in saved)
    whole = recipe.RecipeConfig(**{**config.__dict__, "micro_batch": 0})
    with pytest.raises(ValueError, match="different lengths .* --micro-batch 1"):
        recipe.run(tmp_path / "whole", prompts, NEGATIVES, whole, loaded=loaded, progress=False, log=lambda s: None)


def test_recipe_on_sd21_v_prediction(comfyui, tmp_path):
    """The SD2.1 preset on a tiny random SD2.1-v checkpoint (v-prediction, linear transformer projections):
    two NASA-T iterations move the student, and the saved file holds every UNet tensor."""
    import comfy.utils
    recipe, rm = comfyui.mod("distill.recipe"), comfyui.mod("runner.random_weights.models")
    student, clip, vae = rm.build_checkpoint("sd21v", "tiny", torch.float32, 0)
    teacher, _, _ = rm.build_checkpoint("sd21v", "tiny", torch.float32, 0)
    assert student.model.model_type.name == "V_PREDICTION"
    config = recipe.RecipeConfig(backbone="sd21", iterations=2, batch=2, resolution=64, lora_rank=4, lora_scale=8.0,
                                 student_lr=1e-3, precision="fp32", save_dtype="fp32")
    path = recipe.run(tmp_path, PROMPTS, NEGATIVES, config, loaded=(student, teacher, clip, vae), progress=False,
                      log=lambda s: None)
    saved = comfy.utils.load_torch_file(str(path))
    reference = recipe.checkpoint_state_dict(teacher)
    unet = [k for k in saved if k.startswith("model.diffusion_model.")]
    assert set(unet) == {k for k in reference if k.startswith("model.diffusion_model.")}
    assert any(not torch.equal(saved[k], reference[k]) for k in unet)


def test_recipe_errors_name_the_option_and_the_fix(comfyui, tmp_path):
    recipe = comfyui.mod("distill.recipe")
    with pytest.raises(ValueError, match="--backbone 'sdxl'"):
        recipe.RecipeConfig(backbone="sdxl").resolved()
    with pytest.raises(ValueError, match="unknown training mode"):
        recipe.RecipeConfig(mode="nasa").resolved()
    with pytest.raises(ValueError, match="--resolution 100 must be a multiple of 8"):
        recipe.RecipeConfig(resolution=100).resolved()
    with pytest.raises(ValueError, match="--checkpoint-every"):
        recipe.RecipeConfig(checkpoint_every=0).resolved()
    with pytest.raises(ValueError, match="--precision"):
        recipe.RecipeConfig(precision="fp16").resolved()
    cfg = recipe.RecipeConfig(backbone="pixart").resolved()
    assert (cfg.batch, cfg.iterations, cfg.kappa_high, cfg.lora_rank, cfg.lora_scale) == (32, 50000, 3.0, 64, 128.0)
    assert (cfg.student_lr, cfg.lora_lr, cfg.precision) == (1e-6, 1e-3, "bf16")
    with pytest.raises(FileNotFoundError, match="--prompts file .*missing.txt not found"):
        recipe.read_lines(tmp_path / "missing.txt", "--prompts")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="--negatives file .* holds no prompt"):
        recipe.read_lines(tmp_path / "empty.txt", "--negatives")
    with pytest.raises(FileNotFoundError, match="--checkpoint .*nope.safetensors not found"):
        recipe.load(checkpoint=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="give --checkpoint, or --diffusion-model together with --text-encoder"):
        recipe.load(diffusion_model=tmp_path / "x.safetensors")


def test_nasa_t_workflow_runs(comfyui, tmp_path):
    """The example workflow for a NASA-T student: the shipped toy NASA-T student through the same nodes
    (one-step KSampler, Apply NASA Attention), judged side by side."""
    import nasa_runner.cli as cli
    result = cli.run_workflow(PACK_ROOT / "workflows" / "toy_1step_nasat.json", out_dir=tmp_path)
    assert result.ok, result.error
    texts = cli.collect_texts(result.outputs)
    assert len(texts) == 1 and "with NASA" in texts[0]
    graph = json.loads((PACK_ROOT / "workflows" / "toy_1step_nasat.json").read_text())
    loaders = [n for n in graph["nodes"] if n["type"] == "NASAToyModelLoader"]
    assert [n["widgets_values"][0] for n in loaders] == ["student NASA-T (one-step)"]


def test_recipe_on_two_processes(comfyui, tmp_path):
    """distill.recipe.run under torchrun --nproc_per_node 2 on CPU (gloo), batch 4 split 2 + 2: the student one
    process trains with the whole batch, up to float summation order (AdamW's first steps turn the sign of a
    near-zero gradient into a full step, so a few hundred of 13M weights differ by more than 1e-5); killed at the
    third iteration and resumed by two new processes, the student of the straight two-process run, bit for bit."""
    worker = Path(__file__).parent / "recipe_dp_worker.py"

    def launch(procs, out, *extra, ok=True):
        return support.launch(procs, worker, [tmp_path / out, 4, *extra], ok=ok, COMFYUI_PATH=str(comfyui.dir))
    import comfy.utils

    def student(out):
        return comfy.utils.load_torch_file(str(tmp_path / out / "student_nasa-t_sd15.safetensors"))
    launch(1, "one")
    log = launch(2, "two")
    assert "process 1 of 2: 2 of each batch of 4" in log
    one, two = student("one"), student("two")
    assert one.keys() == two.keys()
    diffs = torch.cat([(one[k] - two[k]).abs().flatten() for k in one if one[k].is_floating_point()])
    assert (diffs > 1e-5).float().mean() < 1e-3 and diffs.max() < 1e-3, (int((diffs > 1e-5).sum()), diffs.max())
    meta = json.loads(comfy.utils.safetensors.safe_open(str(tmp_path / "two" / "student_nasa-t_sd15.safetensors"),
                                                        "pt").metadata()["nasa_distill"])
    assert meta["processes"] == 2
    launch(2, "resumed", 3, ok=False)
    assert (tmp_path / "resumed" / "trainer.ckpt").is_file()
    assert "resumed at iteration 2" in launch(2, "resumed")
    resumed = student("resumed")
    assert all(torch.equal(two[k], resumed[k]) for k in two)
