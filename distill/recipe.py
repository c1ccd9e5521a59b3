"""The real-scale recipe: distil a one-step SBv2 or NASA-T student from a local SD1.5, SD2.1 or
PixArt-α model with nasa_core's trainer, and save it as a checkpoint ComfyUI loads.

Defaults are the paper's (section 6.1, appendix Table 6): LoRA teacher rank 64 / scaling 128,
learning rates 1e-6 (student) and 1e-3 (LoRA teacher), AdamW, bf16 mixed precision (fp32 master
weights for the student, bf16 compute; the frozen teacher is stored in bf16, ``teacher_dtype``), kappa ~ U(0.5, 4)
for SD and U(0.5, 3) for PixArt-α, alpha ~ U(0, 1) per iteration, batch 64 / 64 / 32 and
60k / 40k / 50k iterations. Prompts and negatives are local text files, one per line.

The networks come in through the same interfaces as the toy world's (:func:`.steering.comfy_eps`:
ComfyUI's own ``apply_model`` and the family's NASA patches), so what the toy ablation measures is
the code that runs here. Not wired: SBv2's clamped CLIP loss (the trainer takes ``align_fn``, but no
CLIP image tower reaches our machines to test it with).

Several GPUs: run it under ``torchrun --nproc_per_node N`` (or ``accelerate launch``). Each process takes its
share of every batch (``--batch`` stays the total, split evenly; ``--micro-batch`` slices each share), every random
draw is the whole batch's on every process, the gradients are summed over the processes before clipping, so the
update is the one-process update; rank 0 writes the checkpoints and the student, and every process resumes from the
same ``trainer.ckpt``.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch

from . import steering as comfy_distill
from ..nasa_core import processes, vsd

NODE = "nasa_distill.py"

PRESETS = {
    # Table 6 of the paper.
    "sd15": {"batch": 64, "iterations": 60000, "kappa_low": 0.5, "kappa_high": 4.0, "resolution": 512},
    "sd21": {"batch": 64, "iterations": 40000, "kappa_low": 0.5, "kappa_high": 4.0, "resolution": 512},
    "pixart": {"batch": 32, "iterations": 50000, "kappa_low": 0.5, "kappa_high": 3.0, "resolution": 512},
}


@dataclass
class RecipeConfig:
    backbone: str = "sd15"                # sd15 | sd21 | pixart: picks the Table 6 column
    mode: str = "nasa-t"                  # nasa_core.vsd.MODES: sbv2, teacher-neg, teacher-lora-neg, nasa-t, ...
    iterations: int = 0                   # 0 = the preset's
    batch: int = 0                        # 0 = the preset's
    micro_batch: int = 0                  # slices per batch (gradient accumulation); 0 = whole batch
    resolution: int = 0                   # image side in pixels; 0 = the preset's
    student_lr: float = 1e-6
    lora_lr: float = 1e-3
    lora_rank: int = 64
    lora_scale: float = 128.0
    kappa_low: float = 0.0                # 0 = the preset's
    kappa_high: float = 0.0
    alpha_low: float = 0.0
    alpha_high: float = 1.0
    precision: str = "bf16"               # bf16 (mixed) | fp32 (use fp32 on a CPU: see _precision_warning)
    teacher_dtype: str = "bf16"           # storage of the frozen teacher (ComfyUI casts it for compute): bf16 | fp32
    checkpoint_every: int = 500
    save_dtype: str = "fp16"              # dtype of the saved student checkpoint: fp16 | bf16 | fp32
    seed: int = 0

    def resolved(self) -> "RecipeConfig":
        if self.backbone not in PRESETS:
            raise ValueError(f"{NODE}: --backbone {self.backbone!r} is not one of {sorted(PRESETS)}")
        vsd.mode_switches(self.mode)
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"{NODE}: --precision must be bf16 or fp32, not {self.precision!r}")
        for key in ("save_dtype", "teacher_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"{NODE}: --{key.replace('_', '-')} must be one of {sorted(DTYPES)}, "
                                 f"not {getattr(self, key)!r}")
        preset = PRESETS[self.backbone]
        values = asdict(self)
        for key in ("iterations", "batch", "resolution", "kappa_low", "kappa_high"):
            if not values[key]:
                values[key] = preset[key]
        out = RecipeConfig(**values)
        for key in ("iterations", "batch", "checkpoint_every"):
            if getattr(out, key) < 1:
                raise ValueError(f"{NODE}: --{key.replace('_', '-')} must be >= 1, not {getattr(out, key)}")
        if out.micro_batch < 0:
            raise ValueError(f"{NODE}: --micro-batch must be >= 0 (0 = the whole batch), not {out.micro_batch}")
        if out.resolution % 8:
            raise ValueError(f"{NODE}: --resolution {out.resolution} must be a multiple of 8 (the VAE's scale)")
        return out


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def read_lines(path, what: str) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{NODE}: {what} file {path} not found (one prompt per line)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{NODE}: {what} file {path} holds no prompt (one per line; # starts a comment)")
    return lines


EXAMPLES = Path(__file__).resolve().parent / "examples"


def combine_negatives(terms: List[str], count: int, seed: int = 0, most: int = 4) -> List[str]:
    """A pool of ``count`` distinct negative prompts, each 1..``most`` of ``terms`` joined by ", " (the
    paper's 10K pool is "derived from commonly used terms"); fewer if the terms cannot make that many."""
    if count < 1 or most < 1:
        raise ValueError(f"{NODE}: --count and --most must be >= 1")
    g = torch.Generator().manual_seed(seed)
    out: dict = dict.fromkeys(terms[:count])
    tries = 0
    while len(out) < count and tries < 20 * count:
        k = 1 + int(torch.randint(0, min(most, len(terms)), (1,), generator=g))
        pick = torch.randperm(len(terms), generator=g)[:k].tolist()
        out.setdefault(", ".join(terms[i] for i in pick))
        tries += 1
    return list(out)


class TextEncoder:
    """prompts -> (B, tokens, width) with a ComfyUI CLIP, as CLIPTextEncode encodes them. Encodings
    of different lengths (T5: PixArt) cannot share a batch: run those with micro_batch 1."""

    def __init__(self, clip, cache: int = 16384):
        self.clip = clip
        self._one = functools.lru_cache(maxsize=cache)(self._encode)

    def _encode(self, prompt: str) -> torch.Tensor:
        with torch.no_grad():
            return self.clip.encode_from_tokens(self.clip.tokenize(prompt)).float().cpu()

    def __call__(self, prompts):
        conds = [self._one(p) for p in prompts]
        lengths = {c.shape[1] for c in conds}
        if len(lengths) > 1:
            raise ValueError(f"{NODE}: prompts of one micro-batch encode to different lengths {sorted(lengths)} "
                             f"(a T5 text encoder does not pad); run with --micro-batch 1")
        return torch.cat(conds)


def load(checkpoint=None, diffusion_model=None, text_encoder=None, clip_type="pixart", dtype=torch.float32,
         text: bool = True):
    """``(model_patcher, clip, vae or None)`` with ComfyUI's own loaders: a full checkpoint (SD1.5/SD2.1),
    or a diffusion model file plus a text encoder file (PixArt: the T5 encoder, ``clip_type`` pixart).
    ``text=False`` loads the diffusion model alone (clip and vae None): the frozen teacher's copy."""
    import comfy.sd
    options = {"dtype": dtype}
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{NODE}: --checkpoint {checkpoint} not found")
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=text, output_clip=text,
                                                                    model_options=options)
        if text and clip is None:
            raise ValueError(f"{NODE}: {checkpoint} holds no text encoder; pass it as --diffusion-model {checkpoint} "
                             f"together with --text-encoder FILE")
        return model, clip, vae
    if not (diffusion_model and text_encoder):
        raise ValueError(f"{NODE}: give --checkpoint, or --diffusion-model together with --text-encoder")
    for p, flag in ((diffusion_model, "--diffusion-model"), (text_encoder, "--text-encoder")):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{NODE}: {flag} {p} not found")
    kind = getattr(comfy.sd.CLIPType, clip_type.upper(), None)
    if kind is None:
        raise ValueError(f"{NODE}: --clip-type {clip_type!r} is not a ComfyUI CLIP type")
    model = comfy.sd.load_diffusion_model(str(diffusion_model), model_options=options)
    return model, (comfy.sd.load_clip([str(text_encoder)], clip_type=kind) if text else None), None


def _mixed(eps_fn, precision: str):
    if precision == "fp32":
        return eps_fn

    def eps(module, *args, **kwargs):
        device = next(module.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            return eps_fn(module, *args, **kwargs).float()
    return eps


def build_trainer(student_patcher, teacher_patcher, clip, negatives: vsd.NegativePool, config: RecipeConfig):
    """The SBv2/NASA-T trainer on ComfyUI models (student trains in place in ``student_patcher``)."""
    student, teacher = student_patcher.model, teacher_patcher.model
    for net in (student, teacher):
        net.train(False)
    device = student_patcher.load_device
    student.to(device)
    teacher.to(device)
    channels = student.latent_format.latent_channels
    side = config.resolution // 8
    vsd_config = vsd.VSDConfig(student_lr=config.student_lr, lora_lr=config.lora_lr, lora_rank=config.lora_rank,
                               lora_scale=config.lora_scale, kappa_range=(config.kappa_low, config.kappa_high),
                               micro_batch=config.micro_batch, alpha_range=(config.alpha_low, config.alpha_high),
                               seed=config.seed, **vsd.mode_switches(config.mode))
    lora = vsd.LoRA(teacher, config.lora_rank, config.lora_scale, select=lambda name, m: isinstance(m, torch.nn.Linear),
                    dtype=torch.float32)
    eps = _mixed(comfy_distill.comfy_eps, config.precision)
    return vsd.SBv2Trainer(student, teacher, eps, TextEncoder(clip), comfy_distill.alphas_cumprod(teacher),
                           (channels, side, side), vsd_config, lora=lora, device=device, negatives=negatives)


def checkpoint_state_dict(model_patcher, clip_sd=None, vae_sd=None) -> dict:
    """The checkpoint state dict ComfyUI saves for ``model_patcher`` (with a CLIP's and a VAE's state dicts),
    as comfy.sd.save_checkpoint builds it, bound by name: the ModelPatcher's method from ComfyUI 0.3.7x on (the
    model's own then takes the diffusion model's state dict first), the model's before."""
    saving = getattr(model_patcher, "state_dict_for_saving", None) or model_patcher.model.state_dict_for_saving
    return saving(clip_state_dict=clip_sd, vae_state_dict=vae_sd)


def save_student(path, student_patcher, clip, vae, dtype: torch.dtype, info: dict) -> Path:
    """A checkpoint ComfyUI loads: with CheckpointLoaderSimple when the teacher came as one (its CLIP and
    VAE are stored alongside), else the diffusion model alone (Load Diffusion Model)."""
    import comfy.model_management as mm
    import comfy.utils
    clip_sd = vae_sd = None
    if vae is not None:
        mm.load_models_gpu([clip.load_model()], force_full_load=True)
        clip_sd = clip.get_sd()
        vae_sd = vae.get_sd()
    sd = checkpoint_state_dict(student_patcher, clip_sd, vae_sd)
    sd = {k: (v.to(dtype) if torch.is_floating_point(v) else v).contiguous() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(sd, str(path), metadata={"nasa_distill": json.dumps(info)})
    return path


def run(out_dir, prompts: List[str], negatives: List[str], config: RecipeConfig, checkpoint=None,
        diffusion_model=None, text_encoder=None, clip_type="pixart", resume: bool = True, progress: bool = True,
        log=print, loaded=None) -> Path:
    """Train and save; resumable from ``out_dir/trainer.ckpt`` (written every ``checkpoint_every``).
    ``loaded=(student, teacher, clip, vae)`` skips the file loaders (tests build models in memory)."""
    from tqdm import tqdm
    config = config.resolved()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if loaded is None:
        student_p, clip, vae = load(checkpoint, diffusion_model, text_encoder, clip_type, torch.float32)
        teacher_p, _, _ = load(checkpoint, diffusion_model, text_encoder, clip_type, DTYPES[config.teacher_dtype],
                               text=False)
    else:
        student_p, teacher_p, clip, vae = loaded
    if config.precision == "bf16" and student_p.load_device.type == "cpu":
        log(f"{NODE}: WARNING --precision bf16 on a CPU: without native bf16 matmuls (AVX512-BF16/AMX) torch runs "
            f"a reference kernel, ~100x slower than fp32 (a 1024x1024 matmul: 5.3 s vs 0.05 s on an AVX2 CPU); "
            f"pass --precision fp32 on a CPU")
    pool = vsd.NegativePool(negatives)
    trainer = build_trainer(student_p, teacher_p, clip, pool, config)
    rank, world = processes.environment()
    group = processes.Group(world, "nccl" if trainer.device.type == "cuda" else "gloo")
    if world > 1:       # each process its share of every batch; the gradients summed: the one-process update
        trainer.data_parallel = vsd.DataParallel(rank, world, group.all_reduce)
        trainer.data_parallel.share(config.batch)            # a batch that does not split is refused here
        log(f"{NODE}: process {rank} of {world}: {config.batch // world} of each batch of {config.batch}")
    main = rank == 0
    data = torch.Generator().manual_seed(config.seed + 1)
    ckpt = out_dir / "trainer.ckpt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location=trainer.device)
        if state["config"] != asdict(config):
            raise ValueError(f"{NODE}: {ckpt} was written with another configuration; use a new --out folder or "
                             f"--no-resume")
        trainer.load_state_dict(state["trainer"])
        data.set_state(state["data"])
        log(f"{NODE}: resumed at iteration {trainer.steps}")
    bar = tqdm(total=config.iterations, initial=trainer.steps, disable=not (progress and main),
               desc=f"{config.mode} {config.backbone}", dynamic_ncols=True)
    t0, start = time.time(), trainer.steps
    while trainer.steps < config.iterations:
        idx = torch.randint(0, len(prompts), (config.batch,), generator=data)
        losses = trainer.step([prompts[i] for i in idx.tolist()])
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
        if trainer.steps % config.checkpoint_every == 0 and trainer.steps < config.iterations and main:
            vsd.save_checkpoint(ckpt, trainer=trainer.state_dict(), data=data.get_state(), config=asdict(config))
    bar.close()
    info = {"mode": config.mode, "config": asdict(config), "iterations_this_run": trainer.steps - start,
            "seconds_this_run": round(time.time() - t0, 1), "processes": world}
    path = out_dir / f"student_{config.mode}_{config.backbone}.safetensors"
    if main:            # every process holds the same weights: one writes them
        save_student(path, student_p, clip, vae, DTYPES[config.save_dtype], info)
        if ckpt.is_file():
            ckpt.unlink()
        log(f"{NODE}: wrote {path}")
    group.close()
    return path

