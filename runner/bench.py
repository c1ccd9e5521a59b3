"""Wall-clock benchmark of NASA against the plain forward and CFG, on ComfyUI's own classes with random weights.

Two modes (``scripts/nasa_bench.py``):

* ``forward``: one model, three forwards - plain, NASA (the pack's patches, one negative), CFG (the plain model
  on a batch of two: prompt and negative) - run interleaved in one process, the order rotating every round,
  after warm-up rounds. Per mode the median time; per round the ratio to that round's plain forward, reported as
  the median with its min-max; the FLOPs ratio counted by nasa_core.flops; peak memory where the device tracks
  it (CUDA).
* ``layer``: one cross-attention layer at a model's real shapes, plain against steered through the pack's own
  attn2 replace, many repetitions interleaved: the only way to resolve sub-percent differences on a noisy CPU.
  Reported with the layer's FLOPs ratio and the target: steered time <= 1.25 x plain time x FLOPs ratio
  (``flops`` is the pack's nasa_core.flops module).

Nothing here is a test: speed targets live in this table, never in unit tests.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from .costs import CostCase, _t, count, direct_options, find_case
from .random_models import FLUX_FULL_WIDTH


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int, device) -> Dict[str, List[float]]:
    """Times of each function over ``rounds`` rounds; the order rotates each round; ``warmup`` untimed rounds."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
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
    for r in rows:
        flops = "—" if r.flops_ratio is None else f"×{r.flops_ratio:.4f}"
        target = "—" if r.target is None else f"≤ ×{r.target:.4f}" + (" ✓" if r.ratio <= r.target else " ✗")
        peak = "—" if r.peak_mib is None else f"{r.peak_mib:.0f} MiB"
        lines.append(f"| {r.name} | {r.mode} | {1000 * r.median_s:.2f} ms | ×{r.ratio:.4f} ({r.ratio_min:.3f}–"
                     f"{r.ratio_max:.3f}) | {flops} | {target} | {peak} |")
    return "\n".join(lines)


def _check_steers(plain, steered, name):
    """The benchmark times what it claims: NASA changes the output, and nothing else differs at alpha 0 (the
    plain path is the model's own)."""
    a, b = plain(), steered()
    if torch.equal(a, b) or not torch.isfinite(b).all():
        raise RuntimeError(f"nasa_bench: {name}: the NASA path does not steer (or is not finite); nothing to time")


# ----------------------------------------------------------------------------- forward mode

@dataclass
class ForwardCase:
    name: str
    build: Callable[[torch.dtype], object]        # -> ModelPatcher with random weights
    cost: CostCase                                # the same architecture and shapes, for the FLOPs count
    extra: Callable[[int, torch.dtype, object], dict] = lambda batch, dtype, device: {}


def _unet(family):
    def build(dtype):
        from .random_models import build_unet_model
        return build_unet_model(family, "full", dtype=dtype, seed=0)
    return build


def _flux(depth, single):
    def build(dtype):
        from .random_models import build_dit_model
        return build_dit_model("flux", dtype=dtype, seed=0, **dict(FLUX_FULL_WIDTH, depth=depth,
                                                                      depth_single_blocks=single))
    return build


def _pooled(width):
    return lambda batch, dtype, device: {"y": torch.randn(batch, width, dtype=dtype, device=device)}


_FLUX_SMALL = CostCase("FLUX real width, 2 double + 4 single blocks", "FluxSchnell",
                       dict(FLUX_FULL_WIDTH, depth=2, depth_single_blocks=4), "512², T5 256 + 256 tokens",
                       (16, 64, 64), (256, 4096), 256, lambda dtype: {"y": _t(1, 768, dtype=dtype)})

FORWARD_CASES = {
    "sd15": ForwardCase("SD1.5 512²", _unet("sd15"), find_case("SD15")),
    "sdxl": ForwardCase("SDXL 1024²", _unet("sdxl"), find_case("SDXL"), _pooled(2816)),
    "flux-small": ForwardCase("FLUX real width, 2+4 blocks, 512²", _flux(2, 4), _FLUX_SMALL, _pooled(768)),
    "flux": ForwardCase("FLUX.1 1024²", _flux(19, 38), find_case("FluxSchnell"), _pooled(768)),
}


def run_forward(case: ForwardCase, adapters, negatives, rounds=8, warmup=2, dtype=torch.float32, alpha=0.5,
                device=None) -> List[Row]:
    import comfy.model_management as mm
    device = device or mm.get_torch_device()
    shapes = case.cost
    counted = count(shapes, adapters, negatives, dtype=dtype)         # FlopCounterMode on a meta copy
    mp = case.build(dtype)
    mm.load_models_gpu([mp])
    model = mp.model
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    x, t = rand(1, *shapes.latent), torch.full((1,), 0.5, device=device)
    pos, neg = rand(1, *shapes.context), rand(1, shapes.neg_tokens, shapes.context[1])
    nasa = adapters.apply_nasa(mp, negative=None, alpha=alpha, use_sampler_negative=True, node="nasa_bench")
    options = direct_options(adapters, negatives, nasa, neg, alpha)
    extra1, extra2 = case.extra(1, dtype, device), case.extra(2, dtype, device)
    uncond = neg if neg.shape[1] == pos.shape[1] else rand(1, *shapes.context)   # CFG batches equal lengths

    @torch.no_grad()
    def plain():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options={"cond_or_uncond": [0]}, **extra1)

    @torch.no_grad()
    def steered():
        return model.apply_model(x, t, c_crossattn=pos, transformer_options=dict(options), **extra1)

    @torch.no_grad()
    def cfg():
        return model.apply_model(torch.cat((x, x)), t.repeat(2), c_crossattn=torch.cat((pos, uncond)),
                                 transformer_options={"cond_or_uncond": [0, 1]}, **extra2)
    fns = {"plain": plain, "NASA": steered, "CFG": cfg}
    _check_steers(plain, steered, case.name)
    times = interleaved(fns, rounds, warmup, device)
    peaks = None
    if device.type == "cuda":
        peaks = {}
        for name, fn in fns.items():
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return summarize(case.name, times, {"plain": 1.0, "NASA": counted.nasa / counted.plain, "CFG": 2.0}, peaks)


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


def run_layer(case: LayerCase, negatives, unet, flops, rounds=200, warmup=10, dtype=torch.float32, alpha=0.5,
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
    run = negatives.NasaRun(negatives.negative_prompt([(neg, {})], alpha), {}, "nasa_bench")
    run.layers = {key: attn}
    replace = unet._make_replace(key, None)
    extra = {"n_heads": case.heads, "cond_or_uncond": [0], "attn_precision": None, negatives.RUN_KEY: run}

    @torch.no_grad()
    def plain():
        q, k, v = attn.to_q(x), attn.to_k(pos), attn.to_v(pos)
        return attn.to_out(optimized_attention(q, k, v, case.heads))

    @torch.no_grad()
    def steered():
        q, k, v = attn.to_q(x), attn.to_k(pos), attn.to_v(pos)
        return attn.to_out(replace(q, k, v, extra))
    _check_steers(plain, steered, case.name)
    times = interleaved({"plain": plain, "NASA": steered}, rounds, warmup, device)
    lw = flops.linear_weights
    plain_flops = 2 * case.query_tokens * lw(attn.to_q.weight.shape) \
        + 2 * case.pos_tokens * lw(attn.to_k.weight.shape, attn.to_v.weight.shape) \
        + flops.attention_flops(1, case.query_tokens, case.pos_tokens, inner) \
        + 2 * case.query_tokens * lw(attn.to_out[0].weight.shape)
    extra_flops = flops.nasa_extra_flops([flops.NasaLayer(inner, case.query_tokens, shared_weights=lw(
        attn.to_k.weight.shape, attn.to_v.weight.shape))], case.neg_tokens)
    ratio = 1.0 + extra_flops / plain_flops
    return summarize(case.name, times, {"plain": 1.0, "NASA": ratio}, targets={"NASA": 1.25 * ratio})
