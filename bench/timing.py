"""Wall-clock benchmark of NASA against the plain forward and CFG, on ComfyUI's own classes with random weights.

Two modes (``scripts/nasa_bench.py``), and whole runs with speed tools:

* ``forward``: one model, its forwards - plain, NASA (the pack's patches, one negative) at a run's first step
  and at steps 2+ (the negative's projections reused), CFG (the plain model on a batch of two: prompt and
  negative), and ComfyUI-NAG from a checkout the user points at - run interleaved in one process, the order
  rotating every round, after warm-up rounds. Per mode the median time; per round the ratio to that round's
  plain forward, reported as the median with its min-max; the FLOPs ratio counted by nasa_core.flops; peak
  memory of one forward (CUDA: the allocator's peak; CPU: the weights plus the peak of live tensors the forward
  allocates, :class:`TensorPeak`).
* ``layer``: one cross-attention layer at a model's real shapes, plain against steered through the pack's own
  attn2 replace, many repetitions interleaved: the only way to resolve sub-percent differences on a noisy CPU.
  Reported with the layer's FLOPs ratio (nasa_core.flops) and the target: steered time <= 1.25 x plain time x
  FLOPs ratio.

* ``forward --compile BACKEND`` / ``--cache easycache|lazycache``: whole sampling runs of the plain model and of
  NASA with ComfyUI's TorchCompileModel and/or a core step cache on both (:func:`run_stack`), the ratio NASA / plain
  per round.

Nothing here is a test: speed targets live in this table, never in unit tests.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..adapters import apply_nasa, attn2
from ..adapters.run import RUN_KEY, NasaRun, negative_prompt
from ..nasa_core import Nag, Vsf
from ..nasa_core import flops as flop_math
from .costs import CostCase, count, direct_options, find_case, meta_tensor
from ..runner.random_weights.models import FLUX_FULL_WIDTH


@dataclass
class Row:
    name: str
    mode: str
    median_s: float
    ratio: float          # median over rounds of time / plain time of the same round
    ratio_min: float
    ratio_max: float
    flops_ratio: Optional[float]
    peak_mib: Optional[float] = None
    target: Optional[float] = None     # layer mode: 1.25 x FLOPs ratio


class TensorPeak:
    """Peak bytes of the tensors a call allocates, where the device keeps no statistics (CPU): every op's
    non-view outputs are counted while alive (a weakref finalizer frees them). The model's weights, allocated
    before, are not in it; internal scratch of a kernel (e.g. attention's) is not either."""

    def __init__(self):
        self.live = 0
        self.peak = 0

    def _free(self, n):
        self.live -= n

    def measure(self, fn) -> int:
        import weakref
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                          if isinstance(t, torch.Tensor) and t.device.type != "meta"}
                for t in tree_leaves(out):
                    if not isinstance(t, torch.Tensor) or t._is_view() or t.untyped_storage().data_ptr() in inputs:
                        continue         # views and in-place results allocate nothing
                    n = t.untyped_storage().nbytes()
                    tracker.live += n
                    tracker.peak = max(tracker.peak, tracker.live)
                    weakref.finalize(t, tracker._free, n)
                return out
        self.live = self.peak = 0
        with Mode():
            fn()
        return self.peak


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (heap up to 32 MiB per block, no trimming), as the CUDA
    caching allocator does on a GPU. With glibc's defaults a 5 MB tensor freed and allocated again is handed
    back to the kernel and faulted in anew page by page: measured here, two 5 MB allocations took 6 ms in some
    runs against 0.13 ms in others, more than the attention NASA adds, so the layer ratio measured the
    allocator's mood. Returns False where this is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3          # glibc malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Framed:
    """A timed call with untimed set-up and tear-down around it (another pack's patch switched on and off)."""
    setup: Callable[[], object]
    fn: Callable[[], object]
    teardown: Callable[[], object]

    def __call__(self):
        self.setup()
        try:
            return self.fn()
        finally:
            self.teardown()


def _framed(fn) -> Framed:
    """``fn`` as a :class:`Framed` call (a plain function has nothing to set up)."""
    return fn if isinstance(fn, Framed) else Framed(lambda: None, fn, lambda: None)


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int, device) -> Dict[str, List[float]]:
    """Times of each function over ``rounds`` rounds; the order rotates each round; ``warmup`` untimed rounds.
    A :class:`Framed` function is timed without its set-up and tear-down."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            framed = _framed(fns[name])
            framed.setup()
            try:
                _sync(device)
                t0 = time.perf_counter()
                framed.fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            finally:
                framed.teardown()
    return times


def summarize(name: str, times: Dict[str, List[float]], flops: Dict[str, Optional[float]], peaks=None,
              targets=None) -> List[Row]:
    rows = []
    base = times["plain"]
    for mode, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        rows.append(Row(name, mode, statistics.median(ts), statistics.median(ratios), min(ratios), max(ratios),
                        flops.get(mode), (peaks or {}).get(mode), (targets or {}).get(mode)))
    return rows


def markdown(rows: List[Row]) -> str:
    lines = ["| case | mode | median | × plain (min–max) | FLOPs × plain | target | peak memory |",
             "|---|---|---|---|---|---|---|"]
    plain_peak = {r.name: r.peak_mib for r in rows if r.mode == "plain"}
    for r in rows:
        flops = "—" if r.flops_ratio is None else f"×{r.flops_ratio:.4f}"
        target = "—" if r.target is None else f"≤ ×{r.target:.4f}" + (" ✓" if r.ratio <= r.target else " ✗")
        peak = "—" if r.peak_mib is None else f"{r.peak_mib:.0f} MiB"
        if r.peak_mib is not None and r.mode != "plain" and plain_peak.get(r.name):
            peak += f" ({100 * (r.peak_mib / plain_peak[r.name] - 1):+.2f}%)"
        lines.append(f"| {r.name} | {r.mode} | {1000 * r.median_s:.2f} ms | ×{r.ratio:.4f} ({r.ratio_min:.3f}–"
                     f"{r.ratio_max:.3f}) | {flops} | {target} | {peak} |")
    return "\n".join(lines)


def check_steers(plain, steered, name, same=False):
    """The benchmark times what it claims: the guided path changes the output (``same``: two paths that
    must agree bit for bit do)."""
    a, b = plain(), steered()
    if same:
        b = steered()      # the second call: a reusing run has kept its projections by now
        if not torch.equal(a, b):
            raise RuntimeError(f"nasa_bench: {name}: NASA with reused projections differs from NASA; not timing it")
    elif torch.equal(a, b) or not torch.isfinite(b).all():
        raise RuntimeError(f"nasa_bench: {name}: the guided path does not steer (or is not finite); nothing to time")


# ----------------------------------------------------------------------------- forward mode

@dataclass
class ForwardCase:
    name: str
    build: Callable[[torch.dtype], object]        # -> ModelPatcher with random weights
    cost: CostCase                                # the same architecture and shapes, for the FLOPs count
    extra: Callable[[int, torch.dtype, object], dict] = lambda batch, dtype, device: {}
    nag: Optional[str] = "unet"                   # which of ComfyUI-NAG's model switches fits (see load_nag); None:
    # none does (ComfyUI-NAG has no FLUX.2 switch)
    pooled: Optional[int] = None                  # the text encoder's pooled output width its conditioning takes


# ----------------------------------------------------------------------------- ComfyUI-NAG, side by side

NAG_DEFAULTS = dict(scale=5.0, tau=2.5, alpha=0.25)     # ComfyUI-NAG's node defaults


def load_nag(path: str) -> dict:
    """ComfyUI-NAG's per-model switches, imported from a checkout the user points at (never vendored):
    ``{"unet": NAGUNetModelSwitch, "flux": NAGFluxSwitch}``. Only the model modules are imported, not the pack's
    nodes (its sampler module sets a global torch._dynamo option on import)."""
    import importlib
    import os
    import sys
    import types
    path = os.path.abspath(path)
    missing = [f for f in ("utils.py", "sd/openaimodel.py", "flux/model.py") if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise ValueError(f"nasa_bench: --nag {path} is not a ComfyUI-NAG checkout (missing {', '.join(missing)}); "
                         f"point it at a clone of github.com/ChenDarYen/ComfyUI-NAG")
    name = "nasa_bench_comfyui_nag"
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
    return {"unet": importlib.import_module(f"{name}.sd.openaimodel").NAGUNetModelSwitch,
            "flux": importlib.import_module(f"{name}.flux.model").NAGFluxSwitch}


def _unet(family):
    def build(dtype):
        from ..runner.random_weights.models import build_unet_model
        return build_unet_model(family, "full", dtype=dtype, seed=0)
    return build


def _dit(family, config):
    def build(dtype):
        from ..runner.random_weights.models import build_dit_model
        return build_dit_model(family, dtype=dtype, seed=0, **config)
    return build


def _flux(depth, single):
    return _dit("flux", dict(FLUX_FULL_WIDTH, depth=depth, depth_single_blocks=single))


def _pooled(width):
    return lambda batch, dtype, device: {"y": torch.randn(batch, width, dtype=dtype, device=device)}


_FLUX_SMALL = CostCase("FLUX real width, 2 double + 4 single blocks", "FluxSchnell",
                       dict(FLUX_FULL_WIDTH, depth=2, depth_single_blocks=4), "512², T5 256 + 256 tokens",
                       (16, 64, 64), (256, 4096), 256, lambda dtype: {"y": meta_tensor(1, 768, dtype=dtype)})

_KLEIN = find_case("FLUX.2 Klein 4B")
_KLEIN_SMALL = dataclasses.replace(                 # Klein 4B's width (3072, 24 heads, Qwen3 3 x 2560) with few blocks
    _KLEIN, name="FLUX.2 Klein 4B width, 2 double + 4 single blocks",
    unet_config=dict(_KLEIN.unet_config, depth=2, depth_single_blocks=4), setting="512², Qwen3 512 + 512 tokens",
    latent=(128, 32, 32))

FORWARD_CASES = {
    "sd15": ForwardCase("SD1.5 512²", _unet("sd15"), find_case("SD15")),
    "sdxl": ForwardCase("SDXL 1024²", _unet("sdxl"), find_case("SDXL"), _pooled(2816), pooled=1280),
    "flux-small": ForwardCase("FLUX real width, 2+4 blocks, 512²", _flux(2, 4), _FLUX_SMALL, _pooled(768), "flux",
                              pooled=768),
    "flux": ForwardCase("FLUX.1 1024²", _flux(19, 38), find_case("FluxSchnell"), _pooled(768), "flux", pooled=768),
    "klein-small": ForwardCase("FLUX.2 Klein 4B width, 2+4 blocks, 512²", _dit("klein", _KLEIN_SMALL.unet_config),
                               _KLEIN_SMALL, nag=None),
}


def run_forward(case: ForwardCase, rounds=8, warmup=2, dtype=torch.float32, alpha=0.5,
                device=None, nag: Optional[dict] = None, core_nag: bool = False, methods: bool = False) -> List[Row]:
    """Modes: plain; NASA at a run's first step (everything computed); NASA at steps 2+ of a multi-step run
    (the negative's projections reused, cross-attention families); CFG; ComfyUI-NAG when ``nag`` (load_nag) is
    given, with its defaults and the same negative; ComfyUI's own NAGuidance node when ``core_nag``; the pack's
    NAG and VSF (nasa_core.Nag / Vsf at their defaults, Apply NASA Attention's one pass) when ``methods``, their
    FLOPs counted by FlopCounterMode on the forward itself."""
    import comfy.model_management as mm
    device = device or mm.get_torch_device()
    shapes = case.cost
    counted = count(shapes, dtype=dtype)         # FlopCounterMode on a meta copy
    mp = case.build(dtype)
    mm.load_models_gpu([mp])
    model = mp.model
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    x, t = rand(1, *shapes.latent), torch.full((1,), 0.5, device=device)
    pos, neg = rand(1, *shapes.context), rand(1, shapes.neg_tokens, shapes.context[1])
    nasa = apply_nasa(mp, negative=None, alpha=alpha, use_sampler_negative=True, node="nasa_bench")
    options = direct_options(nasa, neg, alpha)
    later = direct_options(nasa, neg, alpha, reuse_projections=True)   # as the sampler wrapper sets it for steps 2+
    extra1, extra2 = case.extra(1, dtype, device), case.extra(2, dtype, device)
    uncond = neg if neg.shape[1] == pos.shape[1] else rand(1, *shapes.context)   # CFG batches equal lengths

    @torch.no_grad()
    def plain():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options={"cond_or_uncond": [0]}, **extra1)

    @torch.no_grad()
    def steered():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options=dict(options), **extra1)

    @torch.no_grad()
    def steered_later():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options=dict(later), **extra1)

    @torch.no_grad()
    def cfg():
        return model.apply_model(torch.cat((x, x)), t.repeat(2), c_crossattn=torch.cat((pos, uncond)),
                                 transformer_options={"cond_or_uncond": [0, 1]}, **extra2)
    fns = {"plain": plain, "NASA": steered}
    flops = {"plain": 1.0, "NASA": counted.nasa / counted.plain, "CFG": 2.0}
    if counted.nasa_reused < counted.nasa:
        fns["NASA, steps 2+"] = steered_later
        flops["NASA, steps 2+"] = counted.nasa_reused / counted.plain
    fns["CFG"] = cfg
    if nag is not None:
        fns["NAG"] = _nag_forward(nag[case.nag], model, x, t, pos, neg, extra1, device, dtype)
    if core_nag:
        fns["NAGuidance (core)"] = _core_nag_forward(mp, x, t, pos, uncond, extra2)
        flops["NAGuidance (core)"] = 2.0     # CFG's batch of two; its normalisation is elementwise (no matmul)
    if methods:
        for method in (Nag(), Vsf()):
            label = f"{method.name.upper()} (pack)"
            m = apply_nasa(mp, negative=None, alpha=method.strength, use_sampler_negative=True, node="nasa_bench",
                           method=method)
            fns[label] = _method_forward(m.model, x, t, pos, direct_options(m, neg, method.strength, method=method),
                                         extra1)
            flops[label] = flop_math.counted_flops(fns[label]) / flop_math.counted_flops(plain)
    check_steers(plain, steered, case.name)
    if "NASA, steps 2+" in fns:
        check_steers(steered, steered_later, case.name, same=True)
    if nag is not None:
        check_steers(plain, fns["NAG"], case.name + " (ComfyUI-NAG)")
    if core_nag:
        check_steers(plain, lambda: fns["NAGuidance (core)"]()[:1], case.name + " (core NAGuidance)")
    for label in [k for k in fns if k.endswith("(pack)")]:
        check_steers(plain, fns[label], f"{case.name} ({label})")
    times = interleaved(fns, rounds, warmup, device)
    peaks = {}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    for name, fn in fns.items():      # untimed: peak memory of one forward, weights included
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            framed = _framed(fn)
            framed.setup()
            try:
                peaks[name] = (weights + TensorPeak().measure(framed.fn)) / 2 ** 20
            finally:
                framed.teardown()
    return summarize(case.name, times, flops, peaks)


def _method_forward(model, x, t, pos, options, extra):
    @torch.no_grad()
    def forward():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options=dict(options), **extra)
    return forward


SPEED_CACHES = {"easycache": "EasyCache", "lazycache": "LazyCache"}     # ComfyUI's core step-cache nodes


def with_speed_tools(model, compile_backend: Optional[str] = None, cache: Optional[str] = None):
    """``model`` as users stack it: NASA (or not), then ComfyUI's step cache node, then TorchCompileModel - the
    nodes themselves, as a workflow runs them."""
    import nodes
    if cache is not None:
        model = nodes.NODE_CLASS_MAPPINGS[SPEED_CACHES[cache]].execute(
            model=model, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False).result[0]
    if compile_backend is not None:
        model = nodes.NODE_CLASS_MAPPINGS["TorchCompileModel"].execute(model=model, backend=compile_backend).result[0]
    return model


def run_stack(case: ForwardCase, steps=8, compile_backend: Optional[str] = None, cache: Optional[str] = None,
              rounds=3, warmup=1, dtype=torch.float32, alpha=0.5, device=None, flops: bool = True) -> List[Row]:
    """Whole sampling runs (ComfyUI's sampler, euler, ``steps`` steps, cfg 1) of the plain model and of NASA, both
    with the same speed tools on (:func:`with_speed_tools`): a step cache acts across steps and torch.compile
    compiles at the first (untimed, ``warmup``) run, so a run is what they speed up. The FLOPs column is one
    forward's (``flops``: count it)."""
    import comfy.sample
    counted = count(case.cost, dtype=dtype) if flops else None
    shapes = case.cost
    mp = case.build(dtype)
    g = torch.Generator().manual_seed(0)
    opts = {} if case.pooled is None else {"pooled_output": torch.randn(1, case.pooled, generator=g)}
    pos = [[torch.randn(1, *shapes.context, generator=g).to(dtype), dict(opts)]]
    neg = [[torch.randn(1, shapes.neg_tokens, shapes.context[1], generator=g).to(dtype), dict(opts)]]
    latent = torch.zeros(1, *shapes.latent)
    noise = torch.randn(latent.shape, generator=g)
    plain_model = with_speed_tools(mp, compile_backend, cache)
    nasa_model = with_speed_tools(apply_nasa(mp, negative=None, alpha=alpha, use_sampler_negative=True,
                                             node="nasa_bench"), compile_backend, cache)

    def run_of(model):
        @torch.inference_mode()          # as ComfyUI's executor runs every node
        def run():
            return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", pos, neg, latent,
                                       disable_pbar=True, seed=0)
        return run
    fns = {"plain": run_of(plain_model), "NASA": run_of(nasa_model)}
    check_steers(fns["plain"], fns["NASA"], case.name)
    times = interleaved(fns, rounds, warmup, device or torch.device("cpu"))
    tools = ", ".join(t for t in (compile_backend and f"torch.compile {compile_backend}",
                                  cache and SPEED_CACHES[cache]) if t) or "no speed tools"
    return summarize(f"{case.name}, {steps}-step run, {tools}", times,
                     {"plain": 1.0, "NASA": counted.nasa / counted.plain} if counted is not None else {})


def _nag_forward(switch_class, model, x, t, pos, neg, extra, device, dtype) -> Framed:
    """One forward with ComfyUI-NAG's switch on (set up and torn down untimed, as NAG's guider does once per
    run), the negative as NAG's CONDITIONING (FLUX: with a pooled vector)."""
    dm = model.diffusion_model
    opts = {}
    if "y" in extra:
        opts["pooled_output"] = torch.randn(extra["y"].shape, generator=torch.Generator().manual_seed(1)).to(
            device=device, dtype=dtype)
    switch = switch_class(dm, [[neg, opts]], NAG_DEFAULTS["scale"], NAG_DEFAULTS["tau"], NAG_DEFAULTS["alpha"], 0.0)

    def restore():
        switch.set_origin()
        dm.__dict__.pop("forward", None)     # NAG leaves the class's forward as an instance attribute

    @torch.no_grad()
    def forward():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options={"cond_or_uncond": [0], "sigmas": t},
                                 **extra)
    return Framed(switch.set_nag, forward, restore)


NAGUIDANCE_DEFAULTS = dict(nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5)     # core NAGuidance's node defaults


def core_nag_available() -> bool:
    """Whether this ComfyUI has its own NAGuidance node (comfy_extras/nodes_nag.py, ComfyUI 0.33+)."""
    import importlib.util
    return importlib.util.find_spec("comfy_extras.nodes_nag") is not None


def _core_nag_forward(model_patcher, x, t, pos, uncond, extra2):
    """One forward of ComfyUI's own NAGuidance (comfy_extras/nodes_nag.py), through the node itself with its
    defaults: it patches every self-attention output and needs the negative's rows in the batch (it switches off
    the cfg-1 optimisation), so the forward is CFG's batch of two with its patch in the options."""
    from comfy_extras.nodes_nag import NAGuidance
    patched = NAGuidance.execute(model_patcher, **NAGUIDANCE_DEFAULTS)[0]
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0, 1])
    model = patched.model

    @torch.no_grad()
    def forward():
        return model.apply_model(torch.cat((x, x)), t.repeat(2), c_crossattn=torch.cat((pos, uncond)),
                                 transformer_options=dict(options), **extra2)
    return forward


# ----------------------------------------------------------------------------- layer mode

@dataclass
class LayerCase:
    name: str
    query_tokens: int
    query_dim: int
    heads: int
    head_dim: int
    context_dim: int
    pos_tokens: int = 77
    neg_tokens: int = 77


LAYER_CASES = {
    "tiny": LayerCase("tiny (for tests)", 64, 32, 2, 16, 24, 7, 5),
    "sd15-64": LayerCase("SD1.5 512², input 1 (64×64 tokens)", 4096, 320, 8, 40, 768),
    "sd15-16": LayerCase("SD1.5 512², input 7 (16×16 tokens)", 256, 1280, 8, 160, 768),
    "sdxl-64": LayerCase("SDXL 1024², input 4 (64×64 tokens)", 4096, 640, 10, 64, 2048),
    "sdxl-32": LayerCase("SDXL 1024², input 7 (32×32 tokens)", 1024, 1280, 20, 64, 2048),
}


def run_layer(case: LayerCase, rounds=200, warmup=10, dtype=torch.float32, alpha=0.5,
              device=None) -> List[Row]:
    """One cross-attention layer (ComfyUI's CrossAttention at the case's shapes) as BasicTransformerBlock calls it:
    to_q/to_k/to_v, attention (ComfyUI's optimized_attention, or NASA's attn2 replace), to_out."""
    import comfy.model_management as mm
    import comfy.ops
    from comfy.ldm.modules.attention import CrossAttention, optimized_attention
    device = device or mm.get_torch_device()
    inner = case.heads * case.head_dim
    attn = CrossAttention(case.query_dim, case.context_dim, case.heads, case.head_dim, dtype=dtype, device=device,
                          operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.02)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    x, pos, neg = rand(1, case.query_tokens, case.query_dim), rand(1, case.pos_tokens, case.context_dim), \
        rand(1, case.neg_tokens, case.context_dim)
    key = ("input", 1, 0)
    extras = []
    for reuse in (False, True):          # a run's first step; steps 2+ of a multi-step run (K-/V- reused)
        run = NasaRun(negative_prompt([(neg, {})], alpha), {}, "nasa_bench", layers={key: attn},
                      reuse_projections=reuse)
        extras.append({"n_heads": case.heads, "cond_or_uncond": [0], "attn_precision": None, RUN_KEY: run})
    replace = attn2.make_replace(key, None)

    @torch.no_grad()
    def plain():
        q, k, v = attn.to_q(x), attn.to_k(pos), attn.to_v(pos)
        return attn.to_out(optimized_attention(q, k, v, case.heads))

    def steered_with(extra):
        @torch.no_grad()
        def steered():
            q, k, v = attn.to_q(x), attn.to_k(pos), attn.to_v(pos)
            return attn.to_out(replace(q, k, v, extra))
        return steered
    steered, later = steered_with(extras[0]), steered_with(extras[1])
    check_steers(plain, steered, case.name)
    check_steers(steered, later, case.name, same=True)
    times = interleaved({"plain": plain, "NASA": steered, "NASA, steps 2+": later}, rounds, warmup, device)
    lw = flop_math.linear_weights
    plain_flops = 2 * case.query_tokens * lw(attn.to_q.weight.shape) \
        + 2 * case.pos_tokens * lw(attn.to_k.weight.shape, attn.to_v.weight.shape) \
        + flop_math.attention_flops(1, case.query_tokens, case.pos_tokens, inner) \
        + 2 * case.query_tokens * lw(attn.to_out[0].weight.shape)
    layer = flop_math.NasaLayer(inner, case.query_tokens, shared_weights=lw(attn.to_k.weight.shape, attn.to_v.weight.shape))
    ratio = 1.0 + flop_math.nasa_extra_flops([layer], case.neg_tokens) / plain_flops
    ratio_later = 1.0 + flop_math.nasa_extra_flops([layer], case.neg_tokens, reused=True) / plain_flops
    return summarize(case.name, times, {"plain": 1.0, "NASA": ratio, "NASA, steps 2+": ratio_later},
                     targets={"NASA": 1.25 * ratio, "NASA, steps 2+": 1.25 * ratio_later})
