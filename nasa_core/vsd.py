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

**NASA-T** (paper section 5.3; all off by default): ``teacher_negative`` replaces the frozen
teacher's unconditional prediction by the negative prompt's (eq. 5), ``student_nasa`` runs the
student with NASA attention on the negative at a strength alpha ~ U(``alpha_range``) drawn per
iteration, ``lora_negative`` queries the LoRA teacher with the same negative-prompt guidance (the
paper found it worse; off). Negatives come from a :class:`NegativePool`, one per sample. An optional
clamped alignment loss (SBv2's clamped CLIP loss) takes ``align_fn(x0, prompts) -> similarity``
with ``align_weight`` decaying linearly to zero over ``align_decay_steps`` and margin
``align_margin``.

``student_timesteps`` > (T-1,) also trains the student at later timesteps on its own renoised
one-step samples (backward simulation, as DMD2 does), so it can be sampled in a few steps.

Everything model-specific comes in through small interfaces, so the same trainer serves the toy
world's ComfyUI UNet and real checkpoints:

* ``eps_fn(module, x_t, t, cond) -> eps`` runs a network (student or teacher) on a batch
  (``student_eps_fn`` for a student of another prediction type); for NASA-T the student's is
  called with ``negative=(negative_cond, alpha)`` and must steer every cross-attention layer;
* ``encode(prompts) -> cond`` is the frozen text encoder ("" is the unconditional prompt);
* the LoRA teacher is a :class:`LoRA` on the teacher module (or pass your own).

:meth:`SBv2Trainer.state_dict` / :meth:`load_state_dict` hold everything needed to resume exactly.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import diffusion

EpsOf = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, object], torch.Tensor]
Encode = Callable[[Sequence[str]], object]
AlignFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def _words(text: str) -> set:
    return {w.strip(",.;:") for w in text.lower().split()} - {"", "a", "an", "the", "on", "of", "with"}


def shares_a_word(prompt: str, negative: str) -> bool:
    """The default conflict rule of :class:`NegativePool`: the negative names a word of the prompt."""
    return bool(_words(prompt) & _words(negative))


class NegativePool:
    """Negative prompts for NASA-T, one drawn per training prompt (uniformly, from the generator).

    A negative that ``conflicts(prompt, negative)`` (default: shares a content word with the prompt,
    e.g. "red" for "a red circle") is redrawn; a prompt every negative conflicts with gets "".
    ``exclude`` lists (prompt, negative) pairs never drawn together (a benchmark's held-out pairs).
    """

    def __init__(self, negatives: Sequence[str], conflicts: Callable[[str, str], bool] = shares_a_word,
                 exclude: Sequence[Tuple[str, str]] = ()):
        self.negatives = [n for n in dict.fromkeys(str(n).strip() for n in negatives) if n]
        if not self.negatives:
            raise ValueError("NegativePool: no negative prompts (give at least one non-empty line)")
        self.conflicts = conflicts
        self.exclude = set(exclude)

    @classmethod
    def from_file(cls, path, **kwargs) -> "NegativePool":
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        try:
            return cls([line for line in lines if line and not line.startswith("#")], **kwargs)
        except ValueError as e:
            raise ValueError(f"{e}: {path} holds no negative prompt (one per line, # comments)") from None

    def _allowed(self, prompt: str) -> List[str]:
        return [n for n in self.negatives if not self.conflicts(prompt, n) and (prompt, n) not in self.exclude]

    def draw(self, prompts: Sequence[str], generator: torch.Generator) -> List[str]:
        out = []
        for p in prompts:
            allowed = self._allowed(p)
            out.append(allowed[int(torch.randint(0, len(allowed), (1,), generator=generator))] if allowed else "")
        return out


def save_checkpoint(path, **state) -> None:
    """``torch.save(state)`` to ``path`` (a pathlib.Path) through a ``.tmp`` file, so a run killed while
    writing leaves the previous checkpoint intact (the trainers' resumable checkpoints)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


class LoRA(torch.nn.Module):
    """Low-rank adapters on the ``Linear`` and ``Conv2d`` layers of a module, added by forward hooks.

    ``scale`` is the paper's gamma (the adapter output is multiplied by gamma / rank, as PEFT's
    lora_alpha). Down projections start as Kaiming-uniform, up projections at zero, so a fresh
    LoRA changes nothing. A convolution's down projection is a convolution of the layer's own
    kernel, stride and padding into ``rank`` channels, its up projection a 1x1 convolution (the
    usual LoRA of a diffusion UNet's resnets: without it the LoRA teacher cannot follow the
    student's pixel-level statistics, e.g. noise). ``select(name, module)`` picks the layers
    (default: every Linear and Conv2d). ``dtype`` keeps the adapters in e.g. float32 on a bf16 teacher.
    """

    def __init__(self, module: torch.nn.Module, rank: int, scale: float,
                 select: Callable[[str, torch.nn.Module], bool] = lambda name, m: True,
                 dtype: Optional[torch.dtype] = None):
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
            self.down[key] = down.to(weight.device, dtype or weight.dtype)
            self.up[key] = up.to(weight.device, dtype or weight.dtype)
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


MODES = {
    # Where the negative prompt enters distillation: the rows of the paper's Table 5 (section 6.3).
    "sbv2": {},
    "teacher-neg": {"teacher_negative": True},
    "teacher-lora-neg": {"teacher_negative": True, "lora_negative": True},
    "nasa-t": {"teacher_negative": True, "student_nasa": True},
    "nasa-t-lora": {"teacher_negative": True, "student_nasa": True, "lora_negative": True},
}
"""Training mode -> the VSDConfig switches it turns on (the others off)."""


def mode_switches(mode: str) -> Dict[str, bool]:
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; expected one of {sorted(MODES)}")
    return {k: k in MODES[mode] for k in ("teacher_negative", "student_nasa", "lora_negative")}


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
    micro_batch: int = 0              # run each batch in slices of this many (gradient accumulation); 0 = whole
    regression_weight: float = 0.0    # DMD's regression loss next to VSD (SBv2: 0); needs build_pool()
    grad_clip: float = 1.0
    seed: int = 0
    # NASA-T (section 5.3): negatives in the frozen teacher (eq. 5), the student (NASA, alpha per
    # iteration) and, off by default as the paper found best, the LoRA teacher.
    teacher_negative: bool = False
    student_nasa: bool = False
    lora_negative: bool = False
    alpha_range: Tuple[float, float] = (0.0, 1.0)
    # SBv2's clamped CLIP loss, where an alignment model is given: weight * max(0, margin - sim),
    # the weight decaying linearly to 0 over align_decay_steps (0 = constant).
    align_weight: float = 0.0
    align_margin: float = 0.37
    align_decay_steps: int = 0

    @property
    def uses_negatives(self) -> bool:
        return self.teacher_negative or self.student_nasa or self.lora_negative

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
        lo, hi = self.alpha_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi <= 2.0):
            raise ValueError(f"VSDConfig.alpha_range {self.alpha_range} must satisfy 0 <= low <= high <= 2 "
                             f"(the paper draws alpha ~ U(0, 1))")
        if self.micro_batch < 0:
            raise ValueError(f"VSDConfig.micro_batch must be >= 0 (0 = the whole batch), not {self.micro_batch}")
        if self.align_weight < 0 or self.align_decay_steps < 0:
            raise ValueError("VSDConfig.align_weight and align_decay_steps must be >= 0")


class DataParallel:
    """The trainer's share of a batch in one of ``world`` processes (``rank``), and the sum of the processes'
    gradients: every process draws the whole batch's randomness from the same generator (so the draws are the same
    for any number of processes), runs the samples of its contiguous share of the batch, each weighted by its share
    of the *whole* batch, and the gradients are summed over the processes before clipping - the one-process update
    (up to float summation order). ``all_reduce``: sums a list of tensors in place across the processes
    (torch.distributed's all_reduce in the recipe; anything equivalent in a test)."""

    def __init__(self, rank: int, world: int, all_reduce: Callable[[List[torch.Tensor]], None]):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"DataParallel: rank {rank} is not in 0 .. {world - 1}")
        self.rank, self.world, self.all_reduce = rank, world, all_reduce

    def share(self, n: int) -> slice:
        """This process's samples of a batch of ``n`` (which the world size must divide)."""
        if n % self.world:
            raise ValueError(f"DataParallel: the batch of {n} does not split into {self.world} equal shares; use a "
                             f"batch that is a multiple of the number of processes")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.all_reduce(grads)


class SBv2Trainer:
    """One VSD iteration per :meth:`step`: a student update, then a LoRA-teacher update."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, eps_fn: EpsOf, encode: Encode,
                 alphas_cumprod: torch.Tensor, sample_shape: Sequence[int], config: VSDConfig = VSDConfig(),
                 lora: Optional[LoRA] = None, device: Optional[torch.device] = None,
                 student_eps_fn: Optional[EpsOf] = None, negatives: Optional[NegativePool] = None,
                 align_fn: Optional[AlignFn] = None, data_parallel: Optional[DataParallel] = None):
        self.config = config
        self.data_parallel = data_parallel
        config.check(len(alphas_cumprod))
        if config.uses_negatives and negatives is None:
            raise ValueError("SBv2Trainer: NASA-T (teacher_negative / student_nasa / lora_negative) needs a "
                             "NegativePool of negative prompts (negatives=...)")
        if config.align_weight > 0 and align_fn is None:
            raise ValueError("SBv2Trainer: align_weight > 0 needs an alignment model (align_fn=...); set "
                             "align_weight to 0 where none is available")
        self.negatives, self.align_fn = negatives, align_fn
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
        self._step_with(optimizer, params, loss.backward)

    def unconditional(self, n: int):
        if n not in self._uncond:
            self._uncond[n] = self.encode([""] * n)
        return self._uncond[n]

    def student_eps(self, x, t, cond, negative=None) -> torch.Tensor:
        """The student's eps; with ``negative=(cond, alpha)`` through NASA attention (NASA-T)."""
        if negative is None:
            return self.student_eps_fn(self.student, x, t, cond)
        return self.student_eps_fn(self.student, x, t, cond, negative=negative)

    def _draw(self, n: int) -> Dict[str, object]:
        """Every random draw of one student pass over ``n`` samples, in one fixed order, so that
        micro-batches (slices of it) give exactly the whole batch's update."""
        plan: Dict[str, object] = {"pick": self._pick_timestep(), "x_T": self._x_T(n)}
        if plan["pick"] < self.T - 1:
            plan["renoise"] = self._randn(n)
        return plan

    def student_x0(self, cond, n: int, negative=None, plan: Optional[Dict[str, object]] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The student's sample (with grad) and the timestep it was made at (backward simulation
        for timesteps below T-1: the input is the student's own one-step sample, renoised)."""
        plan = plan or self._draw(n)
        pick = plan["pick"]
        top = self._timesteps(n, self.T - 1)
        x = plan["x_T"]
        if pick < self.T - 1:
            with torch.no_grad():
                x0 = diffusion.predict_x0(x, self.student_eps(x, top, cond, negative), top, self.ac)
            t = self._timesteps(n, pick)
            x = diffusion.add_noise(x0, plan["renoise"], t, self.ac)
        else:
            t = top
        return diffusion.predict_x0(x, self.student_eps(x, t, cond, negative), t, self.ac), t

    def teacher_eps(self, x_t, t, cond, uncond, kappa) -> torch.Tensor:
        """The frozen teacher with CFG (eq. 4; eq. 5 when ``uncond`` is the negative): adapters off."""
        with self.lora.disabled():
            return diffusion.cfg(self.eps_fn(self.teacher, x_t, t, uncond), self.eps_fn(self.teacher, x_t, t, cond), kappa)

    def lora_eps(self, x_t, t, cond, negative=None, kappa=None) -> torch.Tensor:
        """The LoRA teacher: conditional (SBv2), or guided away from ``negative`` at ``kappa`` (eq. 5)."""
        eps = self.eps_fn(self.teacher, x_t, t, cond)
        if negative is None:
            return eps
        return diffusion.cfg(self.eps_fn(self.teacher, x_t, t, negative), eps, kappa)

    def draw_negatives(self, prompts: Sequence[str]) -> Tuple[List[str], Optional[float]]:
        """NASA-T's draws for one iteration: a negative per prompt, and alpha ~ U(alpha_range), one for
        the whole batch (None unless the student runs NASA)."""
        negatives = self.negatives.draw(prompts, self.generator)
        alpha = None
        if self.config.student_nasa:
            lo, hi = self.config.alpha_range
            alpha = lo + (hi - lo) * float(torch.rand((), generator=self.generator))
        return negatives, alpha

    def align_weight(self) -> float:
        cfg = self.config
        if cfg.align_weight <= 0:
            return 0.0
        if cfg.align_decay_steps <= 0:
            return cfg.align_weight
        return cfg.align_weight * max(0.0, 1.0 - self.steps / cfg.align_decay_steps)

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

    def regression_loss(self, n: int, pick: Optional[int] = None, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """DMD's regression loss on ``n`` pool pairs (sum over pixels, mean over samples, as the VSD
        loss): the student's one-step sample from the pair's noise against the teacher's sample; at a
        backward-simulation timestep ``pick``, the teacher's x0 prediction of that sample renoised."""
        if self.pool is None:
            raise RuntimeError("SBv2Trainer: call build_pool(prompts) before using the regression loss")
        prompts, x_T, x0_ode = self.pool
        if idx is None:
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
        if self.data_parallel is not None and self.data_parallel.world > 1:
            raise ValueError("SBv2Trainer: the regression warm start runs in one process (it is not shared out); "
                             "run it before launching several")
        pick = self._pick_timestep()
        loss = self.regression_loss(n, pick)
        self._update(self.student_opt, self.student.parameters(), loss)
        self.steps += 1
        return {"regression": float(loss.detach())}

    # -- the iteration --------------------------------------------------------------------------

    def _chunks(self, n: int) -> List[slice]:
        """The micro-batches this process runs: its share of the batch (all of it in one process), sliced."""
        share = self.data_parallel.share(n) if self.data_parallel is not None else slice(0, n)
        size = self.config.micro_batch or (share.stop - share.start)
        return [slice(i, min(share.stop, i + size)) for i in range(share.start, share.stop, size)]

    def _plan(self, n: int) -> Dict[str, object]:
        """The student pass's draws (:meth:`_draw`) and the VSD iteration's: teacher timesteps, noise,
        kappa and the regression loss's pool indices, for the whole batch."""
        cfg = self.config
        plan = self._draw(n)
        plan["t"] = torch.randint(cfg.t_range[0], cfg.t_range[1] + 1, (n,), generator=self.generator).to(self.device)
        plan["noise"] = self._randn(n)
        lo, hi = cfg.kappa_range
        plan["kappa"] = (lo + (hi - lo) * torch.rand(n, generator=self.generator)).to(self.device)
        if cfg.regression_weight > 0:
            if self.pool is None:
                raise RuntimeError("SBv2Trainer: call build_pool(prompts) before using the regression loss")
            plan["idx"] = torch.randint(0, len(self.pool[0]), (n,), generator=self.generator)
        return plan

    @staticmethod
    def _slice(plan: Dict[str, object], c: slice) -> Dict[str, object]:
        return {k: (v[c] if isinstance(v, torch.Tensor) else v) for k, v in plan.items()}

    def _vsd_loss(self, prompts: Sequence[str], neg_prompts: Optional[Sequence[str]], alpha: Optional[float],
                  plan: Dict[str, object], weight: float) -> Tuple[torch.Tensor, object, Dict[str, torch.Tensor]]:
        """One micro-batch of the student's loss (VSD + the optional terms) scaled by ``weight`` (its
        share of the batch), backpropagated; returns the detached student sample, the prompts'
        encoding and the loss terms."""
        cfg = self.config
        n = len(prompts)
        cond = self.encode(list(prompts))
        uncond = self.unconditional(n)
        neg_cond = self.encode(list(neg_prompts)) if neg_prompts is not None else None
        x0, _ = self.student_x0(cond, n, (neg_cond, alpha) if cfg.student_nasa else None, plan)
        t, kappa = plan["t"], plan["kappa"]
        x_t = diffusion.add_noise(x0.detach(), plan["noise"], t, self.ac)
        with torch.no_grad():
            eps_real = self.teacher_eps(x_t, t, cond, neg_cond if cfg.teacher_negative else uncond, kappa)
            eps_fake = self.lora_eps(x_t, t, cond, neg_cond if cfg.lora_negative else None, kappa)
            if cfg.weighting == "normalized":
                x0_real = diffusion.predict_x0(x_t, eps_real, t, self.ac)
                x0_fake = diffusion.predict_x0(x_t, eps_fake, t, self.ac)
                dims = tuple(range(1, x0.dim()))
                norm = (x0.detach() - x0_real).abs().mean(dims, keepdim=True).clamp(min=1e-5)
                grad = (x0_fake - x0_real) / norm
            else:
                grad = eps_real - eps_fake
            grad = torch.nan_to_num(grad)
        terms = {"student": 0.5 * torch.nn.functional.mse_loss(x0, (x0 - grad).detach(), reduction="sum") / n}
        total = terms["student"]
        if cfg.regression_weight > 0:
            terms["regression"] = self.regression_loss(n, idx=plan["idx"])
            total = total + cfg.regression_weight * terms["regression"]
        align_w = self.align_weight()
        if align_w > 0:
            terms["align"] = torch.relu(cfg.align_margin - self.align_fn(x0, list(prompts))).mean()
            total = total + align_w * terms["align"]
        (total * weight).backward()
        terms["grad_abs"] = grad.abs().mean()
        return x0.detach(), cond, {k: v.detach() * weight for k, v in terms.items()}

    def _step_with(self, optimizer: torch.optim.Optimizer, params, accumulate: Callable[[], None]) -> None:
        """zero_grad, the micro-batches' backward passes (``accumulate``), clip, step."""
        params = list(params)
        optimizer.zero_grad(set_to_none=True)
        accumulate()
        if self.data_parallel is not None:
            self.data_parallel.sum_grads(params)
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optimizer.step()

    def step(self, prompts: Sequence[str]) -> Dict[str, float]:
        """One iteration: a student update (VSD, eq. 6; NASA-T's negatives where switched on), then
        ``lora_updates`` LoRA-teacher updates on the student's samples. With ``micro_batch`` the batch
        runs in slices whose gradients add up to the whole batch's (same update, less memory)."""
        cfg = self.config
        prompts = list(prompts)
        n = len(prompts)
        neg_prompts, alpha = None, None
        if cfg.uses_negatives:
            neg_prompts, alpha = self.draw_negatives(prompts)
        chunks = self._chunks(n)
        plan = self._plan(n)
        samples, logs = [], {}

        def student_pass():
            for c in chunks:
                x0, cond, terms = self._vsd_loss(prompts[c], neg_prompts[c] if neg_prompts else None, alpha,
                                                 self._slice(plan, c), (c.stop - c.start) / n)
                samples.append((x0, cond))
                for k, v in terms.items():
                    logs[k] = logs.get(k, 0.0) + float(v)
        self._step_with(self.student_opt, self.student.parameters(), student_pass)

        # LoRA-teacher update(s): denoise the student's samples.
        for _ in range(cfg.lora_updates):
            lora_total = []
            t2 = torch.randint(0, self.T, (n,), generator=self.generator).to(self.device)
            noise2 = self._randn(n)

            def lora_pass():
                for (x0, cond), c in zip(samples, chunks):
                    loss = torch.nn.functional.mse_loss(
                        self.lora_eps(diffusion.add_noise(x0, noise2[c], t2[c], self.ac), t2[c], cond), noise2[c])
                    (loss * ((c.stop - c.start) / n)).backward()
                    lora_total.append(float(loss.detach()) * (c.stop - c.start) / n)
            self._step_with(self.lora_opt, self.lora.parameters(), lora_pass)
        self.steps += 1
        out = {"student": logs["student"], "lora": sum(lora_total), "grad_abs": logs["grad_abs"]}
        for k in ("regression", "align"):
            if k in logs:
                out[k] = logs[k]
        if self.data_parallel is not None:          # each process logged its share: the batch's sums
            values = torch.tensor([out[k] for k in out], dtype=torch.float64)
            self.data_parallel.all_reduce([values])
            out = dict(zip(out, values.tolist()))
        if alpha is not None:
            out["alpha"] = alpha
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
