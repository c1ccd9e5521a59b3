"""NASA inside the speed stack users run (issue 25), on ComfyUI's own nodes and random-weight models:

* torch.compile through ComfyUI's TorchCompileModel: on every case of family_cases.py, two 4-step runs of the
  compiled NASA model equal eager NASA, and torch.compile compiles them into as many graphs, with as many graph
  breaks, as it compiles the model without NASA (NASA adds no graph break and no recompilation, per step or per
  run). The backend is dynamo's "eager" (graph capture is what breaks and recompiles; it skips inductor's code
  generation, minutes per model on CPU); one UNet case runs inductor itself at 2 steps, the case that failed
  before (the reuse cache read version counters of inference tensors). Schedules, block selections and cfg > 1
  under compile: bounded compiles, whatever the step count;
* the reuse cache keys on what inference tensors and compiled code allow: inference-mode parameters reuse,
  traced code computes in the graph, a quantized parameter's swapped patch list recomputes;
* ComfyUI's step caches (EasyCache, LazyCache): the cache still skips steps, and every model call it computes
  steers every layer; the first step equals NASA without a cache;
* attention backends: NASA's negative attention goes through ComfyUI's override hook (``optimized_attention_
  override``, where e.g. Sage-attention nodes plug in) wherever the model's own attention does, and through the
  attention function ComfyUI selected at startup (pytorch, split, sub-quadratic; sage and flash are not installed
  here and not run);
* packs NASA cannot work inside are named in the error: Nunchaku's fused FLUX (refused at node time), TeaCache /
  MagCache's forward copies (named when NASA steered nothing).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

STEPS = 4


@pytest.fixture(scope="module")
def env(comfyui):
    return SimpleNamespace(rm=comfyui.mod("runner.random_weights.models"), adapters=comfyui.mod("adapters"),
                           run=comfyui.mod("adapters.run"), reuse=comfyui.mod("adapters.reuse"), mod=comfyui.mod)


def _model(env, name):
    cases.skip_if_missing(name)
    return cases.model(env.rm, name)


def _node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]


def _compiled(mp, backend="eager"):
    """ComfyUI's TorchCompileModel node on ``mp`` (its helper compiles the diffusion model at sample time)."""
    return _node("TorchCompileModel").execute(model=mp, backend=backend).result[0]


class Dynamo:
    """What torch.compile did inside the block: graph breaks, graphs compiled and frames compiled (dynamo's own
    counters, reset on entry together with its compile cache)."""

    def __enter__(self):
        import torch._dynamo
        from torch._dynamo.utils import counters
        torch._dynamo.reset()
        counters.clear()
        return self

    def __exit__(self, *exc):
        from torch._dynamo.utils import counters
        self.breaks = sum(counters["graph_break"].values())
        self.reasons = sorted(counters["graph_break"])
        self.graphs = counters["stats"]["unique_graphs"]
        self.frames = counters["frames"]["total"]

    def same_as(self, other) -> bool:
        return (self.breaks, self.graphs, self.frames) == (other.breaks, other.graphs, other.frames)

    def __repr__(self):
        return f"Dynamo(breaks={self.breaks}, graphs={self.graphs}, frames={self.frames}, reasons={self.reasons})"


def _close(got, want, rel):
    err = (got - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"max error {err:.3g} against a scale of {want.abs().max().item():.3g}"


# ----------------------------------------------------------------------------- torch.compile

_COMPILE_BREAKS = {   # known: NASA adds graph breaks there (outputs still equal eager); strict, so a fix shows
    "wan21_causal": "the causal Wan's per-block object patches (for the AR video sampler) break graphs under "
                    "TorchCompileModel on the regular sampler path (issue 26 follow-up)",
}


# Every model line of the families before ComfyUI 0.33's new ones, one line (the first) of each newer family, and the
# known exceptions: compiling every model line (47 cases) costs CI many minutes without reaching another hook - the
# Wan variants, Z-Image pixel space, Klein, the HunyuanVideo 1.5 SR / HunyuanImage refiner, Kandinsky 5 image and
# Cosmos I2V / Anima share their family's code path with the line tested here.
_EVERY_LINE = {"adapters.unet", "adapters.flux", "adapters.chroma", "adapters.sd3", "adapters.pixart",
               "adapters.qwen_image", "adapters.lumina2", "adapters.ltxv", "adapters.hunyuan_video"}
_COMPILED = list(dict.fromkeys(
    [n for n, c in cases.CASES.items() if c.adapter in _EVERY_LINE or n in ("wan21_t2v", "wan21_i2v", "wan22_t2v")]
    + [next(n for n, c in cases.CASES.items() if c.adapter == adapter)
       for adapter in dict.fromkeys(c.adapter for c in cases.CASES.values())]
    + [n for n in _COMPILE_BREAKS if n in cases.CASES]))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=_COMPILE_BREAKS[n], strict=True))
                                  if n in _COMPILE_BREAKS else n for n in _COMPILED])
def test_compiled_nasa_is_eager_nasa_without_breaks_or_recompiles(env, name):
    mp = _model(env, name)
    pos, neg = cases.conds(env.rm, name)
    nasa = support.apply_nasa(mp, alpha=0.8)
    with torch.inference_mode():         # as ComfyUI's executor runs every node
        eager = cases.sample(nasa, name, pos, neg, steps=STEPS)
        with Dynamo() as plain_dynamo:
            plain = cases.sample(_compiled(mp), name, pos, neg, steps=STEPS)
            cases.sample(_compiled(mp), name, pos, neg, steps=STEPS)
        compiled = _compiled(nasa)
        with Dynamo() as dynamo:
            first = cases.sample(compiled, name, pos, neg, steps=STEPS)
            second = cases.sample(compiled, name, pos, neg, steps=STEPS)
    if plain_dynamo.breaks:     # ComfyUI's own forward breaks the graph (data-dependent ops: 0.3.64's HunyuanImage
        # 2.1 text path): NASA, running the model's own text path on the negative, meets the same ops - and no other
        assert set(dynamo.reasons) <= set(plain_dynamo.reasons), f"{name}: NASA {dynamo} against {plain_dynamo}"
    else:
        assert dynamo.same_as(plain_dynamo), f"{name}: NASA {dynamo} against the plain model's {plain_dynamo}"
    assert dynamo.graphs >= 1, f"{name}: nothing was compiled; the test shows nothing"
    _close(first, eager, 1e-5)
    _close(second, eager, 1e-5)
    assert not torch.allclose(first, plain), f"{name}: the compiled model did not steer"


def test_inductor_two_steps(env):
    """The case that failed (inductor, 2 steps: projections reused from step 2, keyed on version counters)."""
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    nasa = support.apply_nasa(mp, alpha=0.8)
    with torch.inference_mode():
        eager = cases.sample(nasa, "sd15", pos, neg, steps=2)
        plain = cases.sample(mp, "sd15", pos, neg, steps=2)
        with Dynamo() as dynamo:
            got = cases.sample(_compiled(nasa, "inductor"), "sd15", pos, neg, steps=2)
    assert dynamo.breaks == 0 and dynamo.graphs == 1, dynamo
    _close(got, eager, 1e-4)
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variant,most_graphs", [("cfg3", 2), ("window", 2), ("blocks", 1)])
def test_compiled_controls(env, variant, most_graphs):
    """Over 8 steps, compiled equals eager and compiles at most ``most_graphs`` graphs, with no graph break: cfg > 1
    (the cond and the uncond call: a graph each), a start/end window (steering on, then off), a block selection
    (one graph)."""
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    controls = {"cfg3": {}, "window": dict(end_percent=0.5), "blocks": dict(blocks="middle, output*0.5")}[variant]
    cfg = 3.0 if variant == "cfg3" else 1.0
    nasa = support.apply_nasa_advanced(mp, alpha=0.8, **controls)
    with torch.inference_mode():
        eager = cases.sample(nasa, "sd15", pos, neg, cfg=cfg, steps=8)
        with Dynamo() as dynamo:
            got = cases.sample(_compiled(nasa), "sd15", pos, neg, cfg=cfg, steps=8)
    _close(got, eager, 1e-5)
    assert dynamo.breaks == 0 and 1 <= dynamo.graphs <= most_graphs, dynamo


def test_compiled_alpha_ramp_is_refused_by_name(env):
    """An alpha ramp gives every step its own coefficient, which a compiled graph bakes in: a recompilation per
    step, up to torch.compile's limit, after which functions compiled without NASA would run. Refused at sample
    time, naming the node, the input and the fix."""
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    nasa = support.apply_nasa_advanced(mp, alpha=0.8, alpha_end_scale=0.25)
    with torch.inference_mode(), pytest.raises(ValueError) as err:
        cases.sample(_compiled(nasa), "sd15", pos, neg, steps=2)
    message = str(err.value)
    assert "Apply NASA Attention" in message and "alpha_end_scale" in message and "TorchCompileModel" in message


def test_changed_settings_and_plain_runs_between_recompile(env):
    """A graph bakes NASA's settings in, and ComfyUI's compiled model does not re-check patches before it reuses
    one. The same diffusion model compiled plain, with NASA at alpha 0.8, plain again (an A/B workflow), at alpha
    0.3 and with a block selection: each run gives its model's eager result."""
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    models = [mp, support.apply_nasa(mp, alpha=0.8), mp, support.apply_nasa(mp, alpha=0.3),
              support.apply_nasa_advanced(mp, alpha=0.3, blocks="middle")]
    with torch.inference_mode():
        for m in models:
            eager = cases.sample(m, "sd15", pos, neg, steps=2)
            _close(cases.sample(_compiled(m), "sd15", pos, neg, steps=2), eager, 1e-5)


def test_reuse_cache_under_inference_mode_and_compile(env):
    """ComfyUI loads and samples under inference mode: parameters without version counters still reuse; traced by
    torch.compile the cache computes in the graph (no graph break) and keeps nothing."""
    cache = env.reuse.ProjectionCache(enabled=True)
    calls = []

    def project(t):
        calls.append(t)
        return lin(t)

    with torch.inference_mode():
        lin = torch.nn.Linear(4, 3)
        x = torch.randn(1, 5, 4)
        assert lin.weight.is_inference()
        kept = cache.get("kv", (lin,), x, project)
        assert cache.get("kv", (lin,), x, project) is kept and len(calls) == 1
        traced = torch.compile(lambda t: cache.get("traced", (lin,), t, lin), backend="eager", fullgraph=True)
        assert torch.equal(traced(x), lin(x))
    assert len(cache) == 1


def test_reuse_cache_sees_a_quantized_parameters_patches(env):
    """ComfyUI-GGUF applies LoRA when it dequantizes: it keeps the patches on the tensor, in a list it copies freely
    and replaces when it patches or unpatches. Other patches recompute; a copy of the same patches reuses."""
    cache = env.reuse.ProjectionCache(enabled=True)
    lora = (["a LoRA's tensors"], "diffusion_model.to_k.weight")
    with torch.inference_mode():
        lin = torch.nn.Linear(4, 3)
        x = torch.randn(1, 5, 4)
        lin.weight.patches = []
        first = cache.get("kv", (lin,), x, lin)
        assert cache.get("kv", (lin,), x, lin) is first
        lin.weight.patches = [lora]
        patched = cache.get("kv", (lin,), x, lin)
        assert patched is not first
        lin.weight.patches = list(lin.weight.patches)
        assert cache.get("kv", (lin,), x, lin) is patched
        lin.weight.patches = []
        assert cache.get("kv", (lin,), x, lin) is not patched


# ----------------------------------------------------------------------------- step caches

CACHE_CASES = ["sd15", "flux", "wan21_t2v"]


def _recording(mp, run_key):
    """A clone of ``mp`` whose innermost DIFFUSION_MODEL wrapper records, for each model call that computes (a step
    cache's skipped calls never reach it), the layers NASA steered in it (``NasaRun.call_steered``)."""
    import comfy.patcher_extension as pe
    m = mp.clone()
    calls = []

    def record(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        options = kwargs.get("transformer_options")
        if options is None:
            options = next(a for a in args if isinstance(a, dict) and "cond_or_uncond" in a)
        calls.append(options[run_key].call_steered)
        return out
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_record", record)
    return m, calls


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
@pytest.mark.parametrize("name", CACHE_CASES)
def test_step_cache_skips_and_computed_steps_steer(env, cache, name):
    mp = _model(env, name)
    pos, neg = cases.conds(env.rm, name)
    family = env.adapters.find_adapter(mp)
    steps = 10

    def cached(m):
        return _node(cache).execute(model=m, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0,
                                    verbose=False).result[0]

    nasa = support.apply_nasa(mp, alpha=0.8)
    recorded, calls = _recording(cached(nasa), env.run.RUN_KEY)
    with torch.inference_mode():
        capture_cached, capture_alone = [], []
        out = cases.sample(recorded, name, pos, neg, steps=steps, capture=capture_cached)
        cases.sample(nasa, name, pos, neg, steps=steps, capture=capture_alone)
        plain_cached = cases.sample(cached(mp), name, pos, neg, steps=steps)
    assert 1 <= len(calls) < steps, f"{name}: {cache} computed {len(calls)} of {steps} steps; it skipped none"
    every = support.all_layers(family, mp)
    assert all(c == every for c in calls), f"{name}: a computed step did not steer every layer: {calls}"
    assert torch.equal(capture_cached[0][0], capture_alone[0][0])   # the first step: no cache, NASA alone
    assert not torch.allclose(out, plain_cached), f"{name}: NASA under {cache} did not change the result"


# ----------------------------------------------------------------------------- attention backends

def _counting_override(calls, prior=None):
    def override(func, *args, **kwargs):
        calls.append(tuple(args[1].shape))
        return prior(func, *args, **kwargs) if prior is not None else func(*args, **kwargs)
    return override


@pytest.mark.parametrize("name", list(cases.CASES))
def test_negative_attention_goes_through_comfyuis_override(env, name):
    """A model-level attention override (ComfyUI's ``optimized_attention_override``: attention backends such as
    Sage attention nodes set it) sees NASA's negative attention wherever it sees the model's own: NASA adds calls
    through it; where the model calls attention without it (PixArt), NASA does too."""
    mp = _model(env, name)
    pos, neg = cases.conds(env.rm, name)
    counted = {}
    for label in ("plain", "nasa"):
        calls = counted[label] = []
        m = mp.clone()
        m.model_options["transformer_options"]["optimized_attention_override"] = _counting_override(calls)
        if label == "nasa":
            m = support.apply_nasa(m, alpha=0.8)
        with torch.inference_mode():
            cases.sample(m, name, pos, neg, steps=1)
    plain, nasa = len(counted["plain"]), len(counted["nasa"])
    if plain == 0:
        assert nasa == 0, f"{name}: NASA called the override where the model does not"
    else:
        assert nasa > plain, f"{name}: NASA's attention bypassed ComfyUI's override ({nasa} calls, plain {plain})"


@pytest.mark.parametrize("backend", ["attention_pytorch", "attention_split", "attention_sub_quad", "attention_basic"])
def test_negative_attention_uses_the_selected_backend(env, backend, monkeypatch):
    """ComfyUI picks its attention function once at startup (--use-split-cross-attention,
    --use-quad-cross-attention, ...) into ``comfy.ldm.modules.attention.optimized_attention``: with each, NASA's
    negative attention (SD1.5's attn2) runs through it, and NASA's result matches the pytorch backend's."""
    import comfy.ldm.modules.attention as attention
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    neg_len = cases.CASES["sd15"].neg_len
    nasa = support.apply_nasa(mp, alpha=0.8)
    with torch.inference_mode():
        want = cases.sample(nasa, "sd15", pos, neg, steps=1)
    keys = []
    chosen = getattr(attention, backend)

    def selected(q, k, v, *args, **kwargs):
        keys.append(k.shape[-2] if kwargs.get("skip_reshape") else k.shape[1])
        return chosen(q, k, v, *args, **kwargs)
    monkeypatch.setattr(attention, "optimized_attention", selected)     # as ComfyUI's startup selection sets it
    monkeypatch.setattr(attention, "optimized_attention_masked", selected)
    with torch.inference_mode():
        got = cases.sample(nasa, "sd15", pos, neg, steps=1)
    assert neg_len in keys, f"NASA's negative attention did not run through {backend}"
    _close(got, want, 1e-4)


# ----------------------------------------------------------------------------- packs NASA cannot work inside

class ComfyFluxWrapper(torch.nn.Module):
    """Nunchaku's structure as ComfyUI sees it: the FLUX model with its diffusion model swapped for a wrapper around
    a transformer from the ``nunchaku`` package, whose blocks run in one fused kernel (no double_blocks)."""

    def __init__(self):
        super().__init__()
        fused = type("NunchakuFluxTransformer2dModel", (torch.nn.Module,), {"__module__": "nunchaku.models"})
        self.model = fused()


def test_nunchaku_flux_is_refused_by_name(env):
    cases.skip_if_missing("flux")
    mp = cases.CASES["flux"].build(env.rm, "flux", torch.float32, 0, {})     # a model of its own: changed here
    mp.model.diffusion_model = ComfyFluxWrapper()           # what Nunchaku's loader puts into ComfyUI's FLUX model
    with pytest.raises(env.adapters.UnsupportedModelError) as err:
        support.apply_nasa(mp, alpha=0.8)
    message = str(err.value)
    assert "Apply NASA Attention" in message and "Nunchaku" in message and "regular checkpoint" in message


def test_forward_copying_cache_is_named_when_nasa_steers_nothing(env):
    """TeaCache and MagCache run their own copy of the model's forward, which calls the blocks without ComfyUI's
    transformer_options: NASA steers nothing. Its error names the pack and the core caches that work. Stood in
    for by a model function wrapper that runs the model as they do (NASA's run not passed on), with TeaCache's
    options."""
    mp = _model(env, "sd15")
    pos, neg = cases.conds(env.rm, "sd15")
    m = support.apply_nasa(mp, alpha=0.8)
    m.model_options["transformer_options"].update(rel_l1_thresh=0.4, coefficients=[1.0])
    run_key = env.run.RUN_KEY

    def forward_copy(apply_model, args):
        c = dict(args["c"])
        c["transformer_options"] = {k: v for k, v in c["transformer_options"].items() if k != run_key}
        return apply_model(args["input"], args["timestep"], **c)
    m.set_model_unet_function_wrapper(forward_copy)
    with torch.inference_mode(), pytest.raises(RuntimeError) as err:
        cases.sample(m, "sd15", pos, neg, steps=2)
    message = str(err.value)
    assert "NASA steered no layer" in message and "TeaCache" in message and "EasyCache" in message
