"""Training the toy world's models from a seed: the multi-step teacher and the one-step student.

Both run on the CPU in minutes (see docs/toy-world.md for the measured times);
the student uses nasa_core's SwiftBrush-v2 trainer (:mod:`..nasa_core.vsd`).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..distill import steering
from ..nasa_core import diffusion, vsd
from . import mmdit, models, world

Log = Callable[[str], None]
ARCHS = ("unet", "mmdit")
"""The toy world's two diffusion models: the SD UNet (:mod:`.models`) and the FLUX-class MMDiT (:mod:`.mmdit`)."""


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"toy model architecture must be one of {ARCHS}, not {arch!r}")


@dataclass
class TeacherConfig:
    steps: int = 2500
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.999
    uncond_p: float = 0.1          # caption dropout, so that the teacher knows "" (CFG's unconditional)
    offset_noise: float = 0.15     # see nasa_core.diffusion.denoising_loss
    grad_clip: float = 1.0
    seed: int = 0


def train_teacher(out_dir, config: TeacherConfig = TeacherConfig(), log: Log = print, resume: bool = True,
                  checkpoint_every: int = 250, arch: str = "unet", weights_dir=None) -> dict:
    """Train the text encoder's reader, the teacher, on the world; write toy_clip and toy_teacher
    (``arch`` "unet"), or toy_mmdit_teacher (``arch`` "mmdit": a flow-matching FLUX-class model reading
    the CLIP of ``weights_dir``, default the shipped one, so both toy models share one text encoder)."""
    _check_arch(arch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if arch == "mmdit":
        clip_path = Path(weights_dir or models.WEIGHTS_DIR) / models.CLIP_FILE
        clip_sd, _ = models.read_file(clip_path, "clip", "train-teacher")
        clip = models.build_clip(clip_sd)
        if not (out_dir / models.CLIP_FILE).exists():      # the folder then holds all train-student --arch mmdit reads
            shutil.copyfile(clip_path, out_dir / models.CLIP_FILE)
        patcher = mmdit.build_model(seed=config.seed)
    else:
        clip = models.build_clip(seed=config.seed)
        patcher = models.build_model(seed=config.seed)
    clip.cond_stage_model.requires_grad_(False)
    encode = models.TextEncoder(clip, pooled=arch == "mmdit")
    unet = patcher.model.diffusion_model
    unet.requires_grad_(True)
    ac = steering.alphas_cumprod(patcher.model)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    ema = diffusion.EMA(unet, config.ema)
    start, losses = 0, []
    ckpt = out_dir / ("teacher.ckpt" if arch == "unet" else "mmdit_teacher.ckpt")
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, losses = state["step"], state["losses"]
        log(f"teacher: resumed at step {start}")

    def eps_fn(x, t, c):
        return models.eps(unet, x, t, c)

    t0 = time.time()
    for step in range(start, config.steps):
        images, captions, _ = world.sample_batch(config.batch, generator)
        drop = torch.rand(config.batch, generator=generator) < config.uncond_p
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        if arch == "mmdit":
            loss = mmdit.flow_loss(patcher.model, world.to_model(images), encode(captions), generator)
        else:
            loss = diffusion.denoising_loss(eps_fn, world.to_model(images), encode(captions), ac, generator,
                                            offset_noise=config.offset_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        ema.update(unet)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            rate = (time.time() - t0) / (step + 1 - start)
            log(f"teacher step {step + 1}/{config.steps} loss {recent:.4f} ({rate:.2f} s/step, "
                f"{rate * (config.steps - step - 1) / 60:.1f} min left)")
        if (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            vsd.save_checkpoint(ckpt, unet=unet.state_dict(), ema=ema.state_dict(),
                        opt=opt.state_dict(), generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                        step=step + 1, losses=losses)
    info = {"kind": "teacher", "arch": arch, "config": asdict(config), "minutes": round((time.time() - t0) / 60, 1),
            "final_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 4)}
    if arch == "mmdit":
        path = out_dir / models.MMDIT_FILES[models.MMDIT_TEACHER]
        mmdit.save(path, ema.module, info)
    else:
        path = out_dir / models.MODEL_FILES["teacher (multi-step)"]
        models.save_clip(out_dir / models.CLIP_FILE, clip, {"seed": config.seed, "trained": False})
        models.save_unet(path, ema.module, info)
    path.with_suffix(".losses.json").write_text(json.dumps(losses))
    if ckpt.is_file():
        ckpt.unlink()
    log(f"teacher: wrote {out_dir} ({info})")
    return info


@dataclass
class StudentConfig:
    steps: int = 1000
    batch: int = 32
    student_lr: float = 1e-4
    lora_lr: float = 1e-3
    lora_rank: int = 8
    lora_scale: float = 16.0
    lora_convs: bool = False       # adapters on the Linear layers only (with convolutions too the toy VSD diverged)
    lora_updates: int = 2          # two LoRA-teacher updates per student update (DMD2's two time-scale rule)
    kappa_low: float = 0.5
    kappa_high: float = 4.0
    t_low: int = 20                # the VSD loss's noise levels t ~ U(t_low, t_high)
    t_high: int = 980
    # Half of the iterations train the one-step sample itself (t = 999); the rest train the 4-step
    # sampler's later timesteps by backward simulation.
    student_timesteps: tuple = (999, 999, 749, 499, 249)
    weighting: str = "normalized"
    # The student predicts v, not eps: its one-step x0 = sqrt(a) x - sqrt(1 - a) v is well conditioned,
    # where an eps model's x0 = (x - sqrt(1 - a) eps) / sqrt(a) multiplies every error of the tiny UNet by
    # 1 / sqrt(a_T) = 14.6 (the teacher's own one-step images are pixel noise). Initialised from the
    # teacher's weights, it first regresses onto the teacher's DDIM samples (warm_steps), then trains by VSD
    # with DMD's regression loss next to it (regression_weight; 0 = SBv2's VSD alone).
    prediction: str = "v"
    warm_steps: int = 300
    warm_lr: float = 1e-3          # the student's learning rate during the warm start (1e-4 left it noisy)
    regression_weight: float = 0.25  # DMD's weight
    pool_size: int = 1024          # (noise, prompt, teacher DDIM sample) pairs for the regression loss
    pool_ode_steps: int = 8
    pool_kappa: float = 3.0
    # NASA-T (see vsd.MODES): negatives from world.negative_prompts(), one per prompt; alpha ~ U(low, high).
    teacher_negative: bool = False
    student_nasa: bool = False
    lora_negative: bool = False
    alpha_low: float = 0.0
    alpha_high: float = 1.0
    init: str = ""                 # a toy student file to start from (skips the warm start), e.g. the shipped SBv2 student
    ema: float = 0.0               # > 0: write an exponential moving average of the student's weights (this decay)
    seed: int = 0
    arch: str = "unet"             # "mmdit": distil the FLUX-class toy (a flow student; prediction is not used)

    @property
    def mode(self) -> str:
        switches = {k: getattr(self, k) for k in vsd.mode_switches("sbv2")}
        return next((m for m in vsd.MODES if vsd.mode_switches(m) == switches), "custom")


_ONE_STEP = {"regression_weight": 0.0, "lora_scale": 8.0, "student_timesteps": (999,)}   # VSD alone, at t = 999
_V2_RECIPE = {**_ONE_STEP, "lora_convs": True}
_MMDIT_RECIPE = {**_ONE_STEP, "arch": "mmdit", "batch": 24, "lora_updates": 4}
PRESETS = {
    # name -> (the student it fine-tunes, the student file it writes, the StudentConfig values it sets)
    "v2": ("student SBv2 (one-step)", "student v2 (one-step)", {"steps": 400, **_V2_RECIPE}),
    "v3": ("student v2 (one-step)", "student v3 (one-step)", {"steps": 200, **_V2_RECIPE, "student_lr": 3e-5}),
    "nasa-t": ("student v3 (one-step)", "student NASA-T (one-step)",
               {"steps": 100, **_V2_RECIPE, "teacher_negative": True, "student_nasa": True}),   # --mode nasa-t
    "mmdit-v2": (models.MMDIT_SBV2, models.MMDIT_V2, {"steps": 300, **_MMDIT_RECIPE}),
    "mmdit-v3": (models.MMDIT_V2, models.MMDIT_STUDENT, {"steps": 200, **_MMDIT_RECIPE, "student_lr": 3e-5}),
}
"""``train-student --preset NAME``: a shipped student's recipe as one command (docs/toy-world.md). "v2" fine-tunes the
first SBv2 student at one step, with a LoRA teacher that also adapts the convolutions (rank 8, gamma 8): a LoRA on
the Linear layers alone cannot follow the student's pixel-level statistics, so VSD neither removed the one-step blur
nor, once DMD's regression loss was dropped, the noise that replaced it. "v3" trains v2 200 steps more at a
learning rate of 3e-5 (from 1e-4): v2 kept too little of the prompt at one step. "nasa-t" fine-tunes v3 100 steps
more with v2's recipe in NASA-T mode (docs/nasa-t.md; with ``--mode`` the other rows of its ablation).
"mmdit-v2" and "mmdit-v3" do the same for the FLUX-class toy, whose LoRA teacher already adapts every layer (it has
no convolutions): without the regression loss its one-step images turned noisy until the LoRA teacher was updated
four times per student step (DMD2's two time-scales) instead of twice; v3 is 200 steps more at a third of the
learning rate, as for the UNet."""


def student_trainer(teacher_patcher, clip, config: StudentConfig, student_state=None):
    """nasa_core's SBv2/NASA-T trainer on the toy models, through ComfyUI's own model path
    (:func:`..distill.steering.comfy_eps`): student = a ComfyUI model of the student's prediction type
    with the teacher's weights (or ``student_state``)."""
    _check_arch(config.arch)
    teacher = teacher_patcher.model
    state = student_state if student_state is not None else teacher.diffusion_model.state_dict()
    eps_fn = steering.comfy_eps
    if config.arch == "mmdit":
        student = mmdit.build_model(state).model

        def eps_fn(module, x_t, t, cond, negative=None):
            with mmdit.trainable():
                return steering.comfy_eps(module, x_t, t, cond, negative)
    else:
        student = models.build_model(state, prediction=config.prediction).model
    for net in (student, teacher):
        net.train(False)           # no dropout anywhere; gradients still flow
    vsd_config = vsd.VSDConfig(student_lr=config.student_lr, lora_lr=config.lora_lr, lora_rank=config.lora_rank,
                               lora_scale=config.lora_scale, kappa_range=(config.kappa_low, config.kappa_high),
                               t_range=(config.t_low, config.t_high),
                               student_timesteps=tuple(config.student_timesteps), weighting=config.weighting,
                               lora_updates=config.lora_updates, regression_weight=config.regression_weight,
                               teacher_negative=config.teacher_negative, student_nasa=config.student_nasa,
                               lora_negative=config.lora_negative, alpha_range=(config.alpha_low, config.alpha_high),
                               seed=config.seed)
    lora = vsd.LoRA(teacher, config.lora_rank, config.lora_scale,
                    select=lambda name, m: config.lora_convs or isinstance(m, torch.nn.Linear))
    pool = vsd.NegativePool(world.negative_prompts(), exclude=world.heldout_combinations())
    return vsd.SBv2Trainer(student, teacher, eps_fn, models.TextEncoder(clip, pooled=config.arch == "mmdit"),
                           steering.alphas_cumprod(teacher),
                           (3, world.SIZE, world.SIZE), vsd_config, lora=lora, negatives=pool)


def student_file(config: StudentConfig) -> str:
    if config.arch == "mmdit":
        if config.student_nasa:
            raise ValueError("train-student --arch mmdit: NASA-T students are trained for the UNet toy only; "
                             "give --out-file to name an experimental one")
        return models.TRAINED_FILES[models.MMDIT_SBV2]
    return models.MODEL_FILES["student NASA-T (one-step)" if config.student_nasa else "student SBv2 (one-step)"]


def train_student(out_dir, weights_dir=models.WEIGHTS_DIR, config: StudentConfig = StudentConfig(), log: Log = print,
                  resume: bool = True, checkpoint_every: int = 100, out_file: str = "") -> dict:
    """Distil a one-step student from the shipped teacher, image-free (prompts only): SBv2, or NASA-T
    and its ablations (``config``'s switches, :data:`..nasa_core.vsd.MODES`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    _check_arch(config.arch)
    if not 0.0 <= config.ema < 1.0:
        raise ValueError(f"train-student: --ema is the moving average's decay, 0 (off) or between 0 and 1 "
                         f"(e.g. 0.99), not {config.ema}")
    path = out_dir / (out_file or student_file(config))
    teacher, clip, _, _ = models.load_checkpoint(models.MMDIT_TEACHER if config.arch == "mmdit" else "teacher (multi-step)",
                                                 weights_dir)
    init_state = None
    if config.init:
        init_state, meta = models.read_file(config.init, "unet", "train-student")
        if (meta["nasa_toy"] == "mmdit") != (config.arch == "mmdit"):
            raise ValueError(f"train-student: --init {config.init} is a {meta['nasa_toy']} file but --arch is {config.arch!r}")
        if config.arch == "unet" and meta.get("prediction", "eps") != config.prediction:
            raise ValueError(f"train-student: --init {config.init} predicts {meta.get('prediction', 'eps')!r} "
                             f"but --prediction is {config.prediction!r}")
    trainer = student_trainer(teacher, clip, config, init_state)
    warm_steps = 0 if config.init else config.warm_steps
    prompts_rng = torch.Generator().manual_seed(config.seed + 1)
    ckpt = path.with_suffix(".ckpt")
    history = []
    ema = diffusion.EMA(trainer.student.diffusion_model, config.ema) if config.ema > 0 else None
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        prompts_rng.set_state(state["prompts_rng"])
        history = state["history"]
        if ema is not None:
            ema.load_state_dict(state["ema"])
        log(f"student: resumed at step {trainer.steps}")
    elif warm_steps > 0 or config.regression_weight > 0:
        t_pool = time.time()
        trainer.build_pool(world.training_prompts(config.pool_size, prompts_rng), config.pool_ode_steps, config.pool_kappa)
        log(f"student: {config.pool_size} teacher DDIM samples for the regression loss ({time.time() - t_pool:.0f} s)")
    t0, start = time.time(), trainer.steps
    while trainer.steps < config.steps:
        prompts = world.training_prompts(config.batch, prompts_rng)
        warm = trainer.steps < warm_steps
        for group in trainer.student_opt.param_groups:
            group["lr"] = config.warm_lr if warm else config.student_lr
        if warm:
            losses = trainer.regression_step(len(prompts))
        else:
            losses = trainer.step(prompts)
            if ema is not None:
                ema.update(trainer.student.diffusion_model)
        history.append(losses)
        s = trainer.steps
        if s % 25 == 0 or s == config.steps:
            recent = [h for h in history[-25:] if h.keys() == losses.keys()]
            mean = {k: sum(h[k] for h in recent) / len(recent) for k in losses}
            rate = (time.time() - t0) / (s - start)
            log(f"student ({config.mode}) step {s}/{config.steps} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                + f" ({rate:.2f} s/step, {rate * (config.steps - s) / 60:.1f} min left)")
        if s % checkpoint_every == 0 and s < config.steps:
            vsd.save_checkpoint(ckpt, trainer=trainer.state_dict(), prompts_rng=prompts_rng.get_state(), history=history,
                                ema=None if ema is None else ema.state_dict())
    info = {"kind": f"student_{config.mode}", "config": asdict(config), "minutes": round((time.time() - t0) / 60, 1)}
    final = trainer.student.diffusion_model if ema is None else ema.module
    if config.arch == "mmdit":
        mmdit.save(path, final, info)
    else:
        models.save_unet(path, final, info, config.prediction)
    (path.with_suffix(".losses.json")).write_text(json.dumps(history))
    if ckpt.is_file():
        ckpt.unlink()
    log(f"student: wrote {path} ({info})")
    return info
