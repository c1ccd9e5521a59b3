"""SwiftBrush-v2-style image-free one-step distillation by variational score distillation (VSD). Pure torch.

Three networks (paper section 3, eq. 6; SwiftBrush [34], SBv2 [13]):

* the **student** f_theta, initialised from the teacher, maps noise z (and a prompt) to an image
  in one step: x0 = (z - sqrt(1 - a_T) eps_theta(z, T, y)) / sqrt(a_T);
* the frozen **teacher** eps_psi, queried with classifier-free guidance at a scale kappa drawn
  from U(kappa_range) per sample ("SBv2*", the paper's reimplementation with random kappa);
* the **LoRA teacher** eps_pi: the same frozen weights plus low-rank adapters (:class:`LoRA`),
  trained by the usual denoising loss on the student's own samples, so it tracks the student's
  distribution. Adapters are switched off to query the frozen teacher, so the two teachers share
  one set of weights.

The student's gradient is w (eps_psi(x_t) - eps_pi(x_t)) d x0 / d theta at x_t = noised student
sample, t ~ U(t_range). With ``weighting="normalized"`` (default) it is applied in x0 space and
divided by the mean |x0 - x0_psi| of each sample (DMD's weighting: a w(t, x) that keeps the step
size even across t); ``weighting="eps"`` uses eq. 6 as written with w(t) = 1.

Two additions, both off by default (pure SBv2): ``lora_updates`` > 1 trains the LoRA teacher several
times per student update (DMD2's two time-scale rule), and ``regression_weight`` > 0 adds DMD's
regression loss onto the frozen teacher's DDIM samples (:meth:`SBv2Trainer.build_pool`);
:meth:`SBv2Trainer.regression_step` is the same loss alone, a warm start for a student whose
parameterization differs from the teacher's (``student_eps_fn``, e.g. v-prediction).

``student_timesteps`` > (T-1,) also trains the student at later timesteps on its own renoised
one-step samples (backward simulation, as DMD2 does), so it can be sampled in a few steps.

Everything model-specific comes in through small interfaces, so the same trainer serves the toy
world's ComfyUI UNet and real checkpoints:

* ``eps_fn(module, x_t, t, cond) -> eps`` runs a network (student or teacher) on a batch
  (``student_eps_fn`` for a student of another prediction type);
* ``encode(prompts) -> cond`` is the frozen text encoder ("" is the unconditional prompt);
* the LoRA teacher is a :class:`LoRA` on the teacher module (or pass your own).

:meth:`SBv2Trainer.state_dict` / :meth:`load_state_dict` hold everything needed to resume exactly.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from . import diffusion

EpsOf = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, object], torch.Tensor]
Encode = Callable[[Sequence[str]], object]


class LoRA(torch.nn.Module):
    """Low-rank adapters on the ``Linear`` and ``Conv2d`` layers of a module, added by forward hooks.

    ``scale`` is the paper's gamma (the adapter output is multiplied by gamma / rank, as PEFT's
    lora_alpha). Down projections start as Kaiming-uniform, up projections at zero, so a fresh
    LoRA changes nothing. A convolution's down projection is a convolution of the layer's own
    kernel, stride and padding into ``rank`` channels, its up projection a 1x1 convolution (the
    usual LoRA of a diffusion UNet's resnets: without it the LoRA teacher cannot follow the
    student's pixel-level statistics, e.g. noise). ``select(name, module)`` picks the layers
    (default: every Linear and Conv2d).
    """

    def __init__(self, module: torch.nn.Module, rank: int, scale: float,
                 select: Callable[[str, torch.nn.Module], bool] = lambda name, m: True):
        super().__init__()
        self.rank, self.gamma = int(rank), float(scale)
        self.enabled = True
        self.down = torch.nn.ModuleDict()
        self.up = torch.nn.ModuleDict()
        self._handles = []
        for name, sub in module.named_modules():
            if not isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) or not select(name, sub):
                continue
            key = name.replace(".", "__")
            weight = sub.weight
            if isinstance(sub, torch.nn.Linear):
                down = torch.nn.Linear(sub.in_features, self.rank, bias=False)
                up = torch.nn.Linear(self.rank, sub.out_features, bias=False)
            else:
                down = torch.nn.Conv2d(sub.in_channels, self.rank, sub.kernel_size, sub.stride, sub.padding,
                                       sub.dilation, bias=False)
                up = torch.nn.Conv2d(self.rank, sub.out_channels, 1, bias=False)
            self.down[key] = down.to(weight.device, weight.dtype)
            self.up[key] = up.to(weight.device, weight.dtype)
            torch.nn.init.kaiming_uniform_(self.down[key].weight, a=math.sqrt(5))
            torch.nn.init.zeros_(self.up[key].weight)
            self._handles.append(sub.register_forward_hook(self._hook(key)))
        if not self._handles:
            raise ValueError("LoRA: no Linear or Conv2d layer selected in the module")

    def _hook(self, key: str):
        def hook(module, inputs, output):
            if not self.enabled:
                return output
            x = inputs[0]
            delta = self.up[key](self.down[key](x.to(self.down[key].weight.dtype)))
            return output + (self.gamma / self.rank) * delta.to(output.dtype)
        return hook

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def layers(self) -> int:
        return len(self.down)


@dataclass
class VSDConfig:
    student_lr: float = 1e-6          # the paper's SD/PixArt settings (Table 6); the toy world uses more
    lora_lr: float = 1e-3
    lora_rank: int = 64
    lora_scale: float = 128.0
    kappa_range: Tuple[float, float] = (0.5, 4.0)
    t_range: Tuple[int, int] = (20, 980)
    student_timesteps: Tuple[int, ...] = (999,)
    weighting: str = "normalized"     # or "eps" (eq. 6 with w(t) = 1)
    lora_updates: int = 1             # LoRA-teacher updates per student update (SBv2: 1; DMD2's TTUR: 5)
    regression_weight: float = 0.0    # DMD's regression loss next to VSD (SBv2: 0); needs build_pool()
    grad_clip: float = 1.0
    seed: int = 0

    def check(self, num_timesteps: int) -> None:
        if self.weighting not in ("normalized", "eps"):
            raise ValueError(f"VSDConfig.weighting must be 'normalized' or 'eps', not {self.weighting!r}")
        lo, hi = self.t_range
        if not 0 <= lo < hi < num_timesteps:
            raise ValueError(f"VSDConfig.t_range {self.t_range} must satisfy 0 <= lo < hi < {num_timesteps}")
        if not self.student_timesteps or any(not 0 <= t < num_timesteps for t in self.student_timesteps):
            raise ValueError(f"VSDConfig.student_timesteps {self.student_timesteps} must lie in [0, {num_timesteps})")
        if self.kappa_range[0] > self.kappa_range[1]:
            raise ValueError(f"VSDConfig.kappa_range {self.kappa_range} is reversed")
        if self.lora_updates < 1:
            raise ValueError(f"VSDConfig.lora_updates must be >= 1, not {self.lora_updates}")


class SBv2Trainer:
    """One VSD iteration per :meth:`step`: a student update, then a LoRA-teacher update."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, eps_fn: EpsOf, encode: Encode,
                 alphas_cumprod: torch.Tensor, sample_shape: Sequence[int], config: VSDConfig = VSDConfig(),
                 lora: Optional[LoRA] = None, device: Optional[torch.device] = None,
                 student_eps_fn: Optional[EpsOf] = None):
        self.config = config
        config.check(len(alphas_cumprod))
        self.student, self.teacher = student, teacher
        self.eps_fn, self.encode = eps_fn, encode
        self.student_eps_fn = student_eps_fn or eps_fn   # e.g. a v-prediction student (diffusion.eps_from_v)
        self.ac = alphas_cumprod.detach().double().cpu()
        self.T = len(self.ac)
        self.shape = tuple(sample_shape)
        self.device = device or next(student.parameters()).device
        teacher.requires_grad_(False)
        student.requires_grad_(True)
        self.lora = lora if lora is not None else LoRA(teacher, config.lora_rank, config.lora_scale)
        self.lora.requires_grad_(True)
        self.student_opt = torch.optim.AdamW(student.parameters(), lr=config.student_lr, weight_decay=0.0)
        self.lora_opt = torch.optim.AdamW(self.lora.parameters(), lr=config.lora_lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.steps = 0
        self.pool = None          # (prompts, x_T, teacher sample) of build_pool
        self.pool_kappa = 3.0
        self._uncond: Dict[int, object] = {}

    # -- pieces a subclass (NASA-T) may replace -------------------------------------------------

    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n,) + self.shape, generator=self.generator).to(self.device)

    def _x_T(self, n: int) -> torch.Tensor:
        """The model input at t = T-1 as ComfyUI's samplers make it at full denoise: unit noise z
        (``noise_scaling`` with max_denoise scales the noise by sqrt(1 + sigma_max^2))."""
        return self._randn(n)

    def _timesteps(self, n: int, value: int) -> torch.Tensor:
        return torch.full((n,), int(value), dtype=torch.long, device=self.device)

    def _pick_timestep(self) -> int:
        """One of ``student_timesteps`` (for the whole batch)."""
        steps = self.config.student_timesteps
        return steps[int(torch.randint(0, len(steps), (1,), generator=self.generator))]

    def _update(self, optimizer: torch.optim.Optimizer, params, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optimizer.step()

    def unconditional(self, n: int):
        if n not in self._uncond:
            self._uncond[n] = self.encode([""] * n)
        return self._uncond[n]

    def student_x0(self, cond, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The student's sample (with grad) and the timestep it was made at (backward simulation
        for timesteps below T-1: the input is the student's own one-step sample, renoised)."""
        pick = self._pick_timestep()
        top = self._timesteps(n, self.T - 1)
        x = self._x_T(n)
        if pick < self.T - 1:
            with torch.no_grad():
                x0 = diffusion.predict_x0(x, self.student_eps_fn(self.student, x, top, cond), top, self.ac)
            t = self._timesteps(n, pick)
            x = diffusion.add_noise(x0, self._randn(n), t, self.ac)
        else:
            t = top
        return diffusion.predict_x0(x, self.student_eps_fn(self.student, x, t, cond), t, self.ac), t

    def teacher_eps(self, x_t, t, cond, uncond, kappa) -> torch.Tensor:
        """The frozen teacher with CFG (eq. 4): adapters off."""
        with self.lora.disabled():
            return diffusion.cfg(self.eps_fn(self.teacher, x_t, t, uncond), self.eps_fn(self.teacher, x_t, t, cond), kappa)

    def lora_eps(self, x_t, t, cond) -> torch.Tensor:
        return self.eps_fn(self.teacher, x_t, t, cond)

    def build_pool(self, prompts: Sequence[str], ode_steps: int = 8, kappa: float = 3.0, batch: int = 32) -> None:
        """DMD's regression pairs, computed once: for each prompt a noise and the frozen teacher's
        deterministic DDIM sample from it (``ode_steps`` steps, CFG ``kappa``)."""
        xs, x0s = [], []

        def teacher(x, t, c):
            return self.eps_fn(self.teacher, x, t, c)
        with torch.no_grad(), self.lora.disabled():
            for i in range(0, len(prompts), batch):
                chunk = list(prompts[i:i + batch])
                x_T = self._x_T(len(chunk))
                xs.append(x_T)
                x0s.append(diffusion.ddim_sample(teacher, x_T, self.encode(chunk), self.unconditional(len(chunk)),
                                                 kappa, self.ac, ode_steps))
        self.pool, self.pool_kappa = (list(prompts), torch.cat(xs), torch.cat(x0s)), float(kappa)

    def regression_loss(self, n: int, pick: Optional[int] = None) -> torch.Tensor:
        """DMD's regression loss on ``n`` pool pairs (sum over pixels, mean over samples, as the VSD
        loss): the student's one-step sample from the pair's noise against the teacher's sample; at a
        backward-simulation timestep ``pick``, the teacher's x0 prediction of that sample renoised."""
        if self.pool is None:
            raise RuntimeError("SBv2Trainer: call build_pool(prompts) before using the regression loss")
        prompts, x_T, x0_ode = self.pool
        idx = torch.randint(0, len(prompts), (n,), generator=self.generator)
        cond = self.encode([prompts[i] for i in idx.tolist()])
        x, target, t = x_T[idx], x0_ode[idx], self._timesteps(n, self.T - 1)
        if pick is not None and pick < self.T - 1:
            t = self._timesteps(n, pick)
            with torch.no_grad():
                x = diffusion.add_noise(target, self._randn(n), t, self.ac)
                eps = self.teacher_eps(x, t, cond, self.unconditional(n), self.pool_kappa)
                target = diffusion.predict_x0(x, eps, t, self.ac)
        x0 = diffusion.predict_x0(x, self.student_eps_fn(self.student, x, t, cond), t, self.ac)
        return 0.5 * (x0 - target).pow(2).sum() / n

    def regression_step(self, n: int) -> Dict[str, float]:
        """A warm-start iteration with the regression loss alone (not part of SBv2): needed when the
        student's parameterization differs from the teacher's (a v-prediction student initialised
        from an eps teacher). The student's timestep is drawn from ``student_timesteps``."""
        pick = self._pick_timestep()
        loss = self.regression_loss(n, pick)
        self._update(self.student_opt, self.student.parameters(), loss)
        self.steps += 1
        return {"regression": float(loss.detach())}

    # -- the iteration --------------------------------------------------------------------------

    def step(self, prompts: Sequence[str]) -> Dict[str, float]:
        cfg = self.config
        n = len(prompts)
        cond = self.encode(list(prompts))
        uncond = self.unconditional(n)

        # Student update (VSD).
        x0, _ = self.student_x0(cond, n)
        t = torch.randint(cfg.t_range[0], cfg.t_range[1] + 1, (n,), generator=self.generator).to(self.device)
        noise = self._randn(n)
        x_t = diffusion.add_noise(x0.detach(), noise, t, self.ac)
        lo, hi = cfg.kappa_range
        kappa = lo + (hi - lo) * torch.rand(n, generator=self.generator)
        with torch.no_grad():
            eps_real = self.teacher_eps(x_t, t, cond, uncond, kappa.to(self.device))
            eps_fake = self.lora_eps(x_t, t, cond)
            if cfg.weighting == "normalized":
                x0_real = diffusion.predict_x0(x_t, eps_real, t, self.ac)
                x0_fake = diffusion.predict_x0(x_t, eps_fake, t, self.ac)
                dims = tuple(range(1, x0.dim()))
                norm = (x0.detach() - x0_real).abs().mean(dims, keepdim=True).clamp(min=1e-5)
                grad = (x0_fake - x0_real) / norm
            else:
                grad = eps_real - eps_fake
            grad = torch.nan_to_num(grad)
        student_loss = 0.5 * torch.nn.functional.mse_loss(x0, (x0 - grad).detach(), reduction="sum") / n
        total = student_loss
        if cfg.regression_weight > 0:
            regression = self.regression_loss(n)
            total = student_loss + cfg.regression_weight * regression
        self._update(self.student_opt, self.student.parameters(), total)

        # LoRA-teacher update(s): denoise the student's samples.
        for _ in range(cfg.lora_updates):
            t2 = torch.randint(0, self.T, (n,), generator=self.generator).to(self.device)
            noise2 = self._randn(n)
            lora_loss = torch.nn.functional.mse_loss(
                self.lora_eps(diffusion.add_noise(x0.detach(), noise2, t2, self.ac), t2, cond), noise2)
            self._update(self.lora_opt, self.lora.parameters(), lora_loss)
        self.steps += 1
        out = {"student": float(student_loss.detach()), "lora": float(lora_loss.detach()),
               "grad_abs": float(grad.abs().mean())}
        if cfg.regression_weight > 0:
            out["regression"] = float(regression.detach())
        return out

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "lora": self.lora.state_dict(),
                "student_opt": self.student_opt.state_dict(), "lora_opt": self.lora_opt.state_dict(),
                "generator": self.generator.get_state(), "steps": self.steps, "config": asdict(self.config),
                "pool": self.pool, "pool_kappa": self.pool_kappa}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.lora.load_state_dict(state["lora"])
        self.student_opt.load_state_dict(state["student_opt"])
        self.lora_opt.load_state_dict(state["lora_opt"])
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]
        self.pool, self.pool_kappa = state.get("pool"), state.get("pool_kappa", 3.0)


def one_step(student: torch.nn.Module, eps_fn: EpsOf, cond, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The student's one-step sample from unit noise at t = T-1 (what ComfyUI's 1-step sampling does
    from an empty latent: x_T = sqrt(1 - a_T) noise)."""
    t = torch.full((noise.shape[0],), len(alphas_cumprod) - 1, dtype=torch.long, device=noise.device)
    x_T = diffusion.add_noise(torch.zeros_like(noise), noise, t, alphas_cumprod)
    return diffusion.predict_x0(x_T, eps_fn(student, x_T, t, cond), t, alphas_cumprod)
