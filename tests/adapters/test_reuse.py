"""The negative's projections computed once per sampling run and reused at later steps (issue 7, "negative K/V
computed once and reused across steps while weights and negative are unchanged"), on ComfyUI's own models
with random weights.

Held here, independently of the pack's bookkeeping:
* exact: a run over several sigmas gives, at every sigma, the bit-identical output of a run at that sigma
  alone (where nothing is reused) - for every cross-attention family (SD1.5 UNet, PixArt, Wan, LTX-Video);
* it happens: torch forward hooks on each layer's K projection and on the text embedding count the
  negative's passes - once per run with reuse, once per step without;
* it does not happen where it must not: one-step runs keep nothing; ComfyUI weight hooks (a scheduled
  hook LoRA whose strength changes between steps) switch it off and the result still equals per-step runs;
  a weight changed in place or replaced, another input, autograd and lowvram weight functions all recompute.
"""
from __future__ import annotations

import pytest
import torch

import nasa_test_support as support

NEG_LEN = 21        # differs from every positive length here, so hooks can tell the negative apart
PERCENTS = (0.1, 0.5, 0.9)


def _random_rms(mp, seed=100):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in mp.model.diffusion_model.modules():
            if isinstance(m, torch.nn.RMSNorm) and m.weight is not None:
                m.weight.copy_((0.5 + 1.5 * torch.rand(m.weight.shape, generator=g)).to(m.weight.dtype))
    return mp


def _prompt(width, length, seed, mask=False):
    g = torch.Generator().manual_seed(seed)
    opts = {}
    if mask:
        opts["attention_mask"] = torch.ones(1, length, dtype=torch.long)
        opts["attention_mask"][:, length - 3:] = 0
    return [[torch.randn(1, length, width, generator=g), opts]]


def _family(rm, name):
    """(model, latent, pos, neg, {role: [modules whose input is the negative's text]})."""
    if name == "sd15":
        mp = rm.build_unet_model("sd15", "tiny", seed=0)
        dm = mp.model.diffusion_model
        width = mp.model.model_config.unet_config["context_dim"]
        kv = [m for name, m in dm.named_modules() if name.endswith("attn2.to_k")]
        return mp, torch.zeros(1, 4, 8, 8), _prompt(width, 77, 0), _prompt(width, NEG_LEN, 1), {"kv": kv}
    mp = _random_rms(rm.build_dit_model(name, seed=0))
    dm = mp.model.diffusion_model
    cfg = rm.DIT_FAMILIES[name][1]
    if name == "pixart":
        width = cfg["caption_channels"]
        return mp, torch.zeros(1, 4, 34, 34), _prompt(width, 12, 0), _prompt(width, NEG_LEN, 1), \
            {"embed": [dm.y_embedder], "kv": [b.cross_attn.kv_linear for b in dm.blocks]}
    if name == "wan21_t2v":
        width = cfg["text_dim"]
        return mp, torch.zeros(1, 16, 2, 8, 8), _prompt(width, 16, 0), _prompt(width, NEG_LEN, 1), \
            {"embed": [dm.text_embedding], "kv": [b.cross_attn.k for b in dm.blocks]}
    width = cfg["caption_channels"]            # ltxv
    return mp, torch.zeros(1, 128, 2, 4, 4), _prompt(width, 16, 0, mask=True), _prompt(width, NEG_LEN, 1, mask=True), \
        {"embed": [dm.caption_projection], "kv": [b.attn2.to_k for b in dm.transformer_blocks]}


class _Count:
    """Calls of each module whose first input has the negative's NEG_LEN tokens (the negative, projected)."""

    def __init__(self, modules):
        self.n = [0] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, inputs, output):
            x = inputs[0]
            if x.shape[-2 if x.ndim >= 3 else 0] == NEG_LEN:
                self.n[i] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class _Runs:
    """The NasaRun of every forward (read from the diffusion model's transformer_options)."""

    def __init__(self, mp, run_key):
        self.runs = []
        self.key = run_key
        self.h = mp.model.diffusion_model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        run = (kwargs.get("transformer_options") or {}).get(self.key)
        if run is not None and (not self.runs or self.runs[-1] is not run):
            self.runs.append(run)

    def close(self):
        self.h.remove()


@pytest.fixture(scope="module")
def env(comfyui):
    return dict(rm=comfyui.mod("runner.random_weights.models"), nasa_run=comfyui.mod("adapters.run"))


def _probe_counted(mp, latent, pos, neg, sigmas, modules, run_key):
    counts = {role: _Count(ms) for role, ms in modules.items()}
    runs = _Runs(mp, run_key)
    try:
        with torch.inference_mode():      # as ComfyUI's executor runs every node
            out = support.probe(mp, latent, pos, neg, sigmas)
    finally:
        runs.close()
        for c in counts.values():
            c.close()
    return out, {role: c.n for role, c in counts.items()}, runs.runs


@pytest.mark.parametrize("family", ["sd15", "pixart", "wan21_t2v", "ltxv"])
def test_reused_projections_are_exact_and_computed_once(env, family):
    base, latent, pos, neg, modules = _family(env["rm"], family)
    mp = support.apply_nasa(base, alpha=0.8)
    ms = base.model.model_sampling
    sigmas = [float(ms.percent_to_sigma(p)) for p in PERCENTS]
    key = env["nasa_run"].RUN_KEY

    multi, counts, runs = _probe_counted(mp, latent, pos, neg, sigmas, modules, key)
    assert len(runs) == 1 and runs[0].projections.enabled
    for role, n in counts.items():
        assert n == [1] * len(n), (role, n)      # every layer (and the embedding) saw the negative once in 3 steps
    plain = support.probe(base, latent, pos, neg, sigmas)
    for i, s in enumerate(sigmas):
        single, single_counts, single_runs = _probe_counted(mp, latent, pos, neg, [s], modules, key)
        assert not single_runs[0].projections.enabled and not len(single_runs[0].projections)
        assert all(n == [1] * len(n) for n in single_counts.values())
        assert torch.equal(multi[i], single[0]), f"{family}: step {i} differs from the same step run alone"
        assert not torch.equal(multi[i], plain[i]), f"{family}: NASA did not act at step {i}; the test shows nothing"


def test_one_step_run_keeps_nothing(env):
    base, latent, pos, neg, modules = _family(env["rm"], "sd15")
    mp = support.apply_nasa(base, alpha=0.8)
    runs = _Runs(mp, env["nasa_run"].RUN_KEY)
    try:
        with torch.inference_mode():
            support.sample(mp, latent, pos, neg, steps=1)
            support.sample(mp, latent, pos, neg, steps=3)
    finally:
        runs.close()
    one, three = runs.runs
    assert not one.projections.enabled and not len(one.projections)
    assert three.projections.enabled and len(three.projections) == len(modules["kv"])


def test_weight_hooks_switch_reuse_off(env):
    """A hook LoRA on every to_k whose strength keyframes change between steps: ComfyUI repatches the
    weights per step, NASA must project the negative with the weights of each step."""
    import comfy.hooks
    base, latent, pos, neg, modules = _family(env["rm"], "sd15")
    dm = base.model.diffusion_model
    weights = {}
    g = torch.Generator().manual_seed(7)
    for name, m in dm.named_modules():
        if name.endswith("attn2.to_k"):
            weights[f"diffusion_model.{name}.weight"] = torch.randn(m.weight.shape, generator=g) * m.weight.std()
    hooks = comfy.hooks.create_hook_model_as_lora(weights, None, 1.0, 1.0)
    frames = comfy.hooks.HookKeyframeGroup()
    frames.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=0.0))
    frames.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.4))
    hooks.set_keyframes_on_hooks(frames)
    hooked_pos = comfy.hooks.set_hooks_for_conditioning(pos, hooks)
    mp = support.apply_nasa(base, alpha=0.8)
    sigmas = [float(base.model.model_sampling.percent_to_sigma(p)) for p in PERCENTS]
    multi, counts, runs = _probe_counted(mp, latent, hooked_pos, neg, sigmas, modules, env["nasa_run"].RUN_KEY)
    assert not runs[0].projections.enabled and counts["kv"] == [3] * len(modules["kv"])
    singles = [support.probe(mp, latent, hooked_pos, neg, [s])[0] for s in sigmas]
    unhooked = [support.probe(mp, latent, pos, neg, [s])[0] for s in sigmas]
    for i in range(3):
        assert torch.equal(multi[i], singles[i])
    assert torch.equal(singles[0], unhooked[0]) and not torch.equal(singles[2], unhooked[2])   # the hook acts late


def test_reuse_rules(env):
    """NasaRun.reuse itself: what is kept and what recomputes."""
    nasa_run = env["nasa_run"]
    run = nasa_run.NasaRun(None, {}, "test")
    lin = torch.nn.Linear(4, 3)
    x, y = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    calls = []

    def project(t):
        calls.append(t)
        return lin(t)

    with torch.no_grad():
        run.reuse("kv", (lin,), x, project)
        run.reuse("kv", (lin,), x, project)
        assert len(calls) == 2                       # reuse_projections off: every call computes
        run.projections.enabled = True
        first = run.reuse("kv", (lin,), x, project)
        assert run.reuse("kv", (lin,), x, project) is first and len(calls) == 3
        assert torch.equal(run.reuse("kv", (lin,), y, project), lin(y)) and len(calls) == 4      # another input
        assert torch.equal(run.reuse("other", (lin,), x, project), first) and len(calls) == 5  # another name
        lin.weight.mul_(2.0)                          # in place: the version counter moves
        assert torch.equal(run.reuse("kv", (lin,), x, project), lin(x)) and len(calls) == 6
        lin.weight = torch.nn.Parameter(lin.weight * 0.5)      # replaced, as ComfyUI's set_attr_param does
        assert torch.equal(run.reuse("kv", (lin,), x, project), lin(x)) and len(calls) == 7
        lin.weight_function = [lambda w: w]           # comfy.ops lowvram patch applied at cast time
        run.reuse("kv", (lin,), x, project)
        run.reuse("kv", (lin,), x, project)
        assert len(calls) == 9
        del lin.weight_function
    run.reuse("kv", (lin,), x, project)               # autograd on: never kept (gradients must reach every step)
    run.reuse("kv", (lin,), x, project)
    assert len(calls) == 11
