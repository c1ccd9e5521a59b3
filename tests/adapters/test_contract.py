"""The contract every model family's adapter keeps, checked on every case of family_cases.py (each family and each
model line its test file covers), through ComfyUI's own sampler and Apply NASA Attention as ComfyUI runs it.

Held against the unpatched model and against the properties themselves (no reference of the formula here: each
family's independent reference lives in its own test file):

* alpha 0 is bit-identical to the unpatched model, with the sampler's negative and with a wired one, at cfg 1 and
  at the family's cfg > 1 (cond and uncond in one batch, and in separate passes); alpha 1 moves the output;
* the output is finite, and steered, in float32 and (where the family's tests sample it) bfloat16 computation;
* at cfg > 1 the uncond rows are bit-identical with and without NASA, the cond rows are steered, and NASA runs the
  model as often and with the same batches as ComfyUI runs it without NASA;
* a batch of 2 latents at different timesteps steers each row as a batch of 1 does;
* a negative of the wrong width is refused at node time and as the sampler's negative at sample time, with an
  error naming the node, the model and the fix;
* a second Apply NASA Attention replaces the first;
* the canary: a one-step run steers every layer - the adapter's block groups are every layer there is (walked in
  family_cases.py), and each of them is steered (the record of NASA's sampler wrapper). A ComfyUI release that
  moves a hook NASA binds to makes this fail by name, per family.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

NAMES = list(cases.CASES)
BAD_WIDTH = 768          # a CLIP-L output: what a negative wired from the wrong text encoder is


def _cfgs_above_one():
    """(case, cfg, batching): each cfg > 1 of the family's tests, cond and uncond in one batch or separate passes."""
    return [pytest.param(name, cfg, batching, id=f"{name}-cfg{cfg:g}-{batching}") for name, case in cases.CASES.items()
            for cfg in case.cfgs for batching in ("one_batch", "separate_passes")]


def _cfgs():
    """(case, cfg, batching): cfg 1 (ComfyUI runs no uncond pass), and :func:`_cfgs_above_one`."""
    return [pytest.param(name, 1.0, "separate_passes", id=f"{name}-cfg1") for name in cases.CASES] + _cfgs_above_one()


@pytest.fixture(scope="module")
def env(comfyui):
    return SimpleNamespace(rm=comfyui.mod("runner.random_weights.models"), adapters=comfyui.mod("adapters"),
                           mod=comfyui.mod)


def _model(env, name, dtype=torch.float32):
    cases.skip_if_missing(name)
    return cases.model(env.rm, name, dtype)


def _conds(env, name, batching="separate_passes", **kw):
    case = cases.CASES[name]
    return cases.conds(env.rm, name, neg_len=case.pos_len if batching == "one_batch" else case.neg_len, **kw)


@pytest.mark.parametrize("name,cfg,batching", _cfgs())
def test_alpha_zero_is_bit_identical(env, name, cfg, batching):
    mp = _model(env, name)
    pos, neg = _conds(env, name, batching)
    base = cases.sample(mp, name, pos, neg, cfg=cfg, steps=2)
    assert torch.equal(cases.sample(support.apply_nasa(mp, alpha=0.0), name, pos, neg, cfg=cfg, steps=2), base)
    wired = support.apply_nasa(mp, alpha=0.0, negative=neg)
    assert torch.equal(cases.sample(wired, name, pos, neg, cfg=cfg, steps=2), base)
    steered = cases.sample(support.apply_nasa(mp, alpha=1.0), name, pos, neg, cfg=cfg, steps=2)
    assert torch.isfinite(steered).all()
    assert (steered - base).abs().max() > 1e-2 * base.abs().max(), "alpha 1 hardly moved the output"


@pytest.mark.parametrize("name,dtype", [pytest.param(name, dtype, id=f"{name}-{str(dtype).split('.')[-1]}")
                                        for name, case in cases.CASES.items() for dtype in case.dtypes])
def test_finite_output(env, name, dtype):
    mp = _model(env, name, dtype).clone()
    if dtype != torch.float32:
        mp.set_model_compute_dtype(dtype)          # on CPU ComfyUI would otherwise compute in fp32
    pos, neg = _conds(env, name)
    with support.Inputs(x=mp.model.diffusion_model) as seen:
        base = cases.sample(mp, name, pos, neg, steps=2)
        out = cases.sample(support.apply_nasa(mp, alpha=0.5), name, pos, neg, steps=2)
    assert seen["x"] and {x.dtype for x in seen["x"]} == {dtype}     # the model really computed in that dtype
    assert torch.isfinite(out).all() and not torch.equal(base, out)


@pytest.mark.parametrize("name,cfg,batching", _cfgs_above_one())
def test_cfg_above_one_leaves_uncond_rows_untouched(env, name, cfg, batching):
    """Two steps at the family's cfg > 1: the first step's uncond prediction is bit-identical with and without NASA,
    its cond prediction is steered; every forward has the batch ComfyUI gives it without NASA (no extra pass)."""
    mp = _model(env, name)
    pos, neg = _conds(env, name, batching)
    plain, steered = [], []
    with support.Forwards(mp) as plain_runs:
        cases.sample(mp, name, pos, neg, cfg=cfg, steps=2, capture=plain)
    with support.Forwards(mp) as nasa_runs:
        cases.sample(support.apply_nasa(mp, alpha=1.0), name, pos, neg, cfg=cfg, steps=2, capture=steered)
    assert plain_runs.batches == ([2, 2] if batching == "one_batch" else [1, 1, 1, 1]), plain_runs.batches
    assert nasa_runs.batches == plain_runs.batches
    assert torch.equal(plain[0][1], steered[0][1])            # uncond prediction
    assert not torch.equal(plain[0][0], steered[0][0])        # cond prediction steered


def _outputs(mp, name, x, sigmas, pos, neg):
    """What the diffusion model returns for ``x`` at ``sigmas`` (one per row), called once through ComfyUI's
    sample_custom (so NASA's sampler wrapper and the conds run as in any sampler) at cfg 1."""
    import comfy.sample
    import comfy.samplers
    outs = []

    def sampler_fn(model_k, noise, sigmas_, extra_args=None, callback=None, disable=None):
        model_k(x.to(noise), sigmas.to(noise), **(extra_args or {}))
        return noise

    h = mp.model.diffusion_model.register_forward_hook(lambda m, args, out: outs.append(support.flat(out).clone()))
    try:
        comfy.sample.sample_custom(mp, cases.latent(name, len(x)), 1.0, comfy.samplers.KSAMPLER(sampler_fn),
                                   torch.stack((sigmas.max(), torch.tensor(0.0))), pos, neg, cases.latent(name, len(x)),
                                   disable_pbar=True, seed=1)
    finally:
        h.remove()
    assert len(outs) == 1, len(outs)
    return outs[0]


@pytest.mark.parametrize("name", NAMES)
def test_batch_two_steers_each_row_like_batch_one(env, name):
    """Rows at different timesteps (so different modulation per row, where the family modulates) each equal
    their batch-1 forward; NASA acts on both."""
    mp = _model(env, name)
    pos, neg = _conds(env, name)
    ms = mp.get_model_object("model_sampling")
    sigmas = torch.tensor([float(ms.percent_to_sigma(p)) for p in cases.CASES[name].row_percents])
    x = torch.randn(cases.model_input_shape(name, 2), generator=torch.Generator().manual_seed(3))   # as sampled
    m = support.apply_nasa(mp, alpha=1.0)
    both = _outputs(m, name, x, sigmas, pos, neg)
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(both, _outputs(mp, name, x, sigmas, pos, neg)), "NASA did not act"
    for i in range(2):
        one = _outputs(m, name, x[i:i + 1], sigmas[i:i + 1], pos, neg)
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-4, atol=cases.CASES[name].batch_atol)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_width_negative_names_node_family_and_fix(env, name):
    """A CLIP-L-wide negative, wired to the node (refused there) and as the sampler's negative (refused when
    sampled)."""
    mp, case = _model(env, name), cases.CASES[name]
    width = cases.width(env.rm, name)
    assert width != BAD_WIDTH
    pos, bad = _conds(env, name)[0], _conds(env, name, width=BAD_WIDTH)[1]
    expects = f"is {BAD_WIDTH} wide but this {case.shown} model's text input expects {width}"   # (LTX-2: "or" its processed width)
    with pytest.raises(ValueError) as e:
        support.apply_nasa(mp, negative=bad)
    msg = str(e.value)
    assert msg.startswith("Apply NASA Attention: 'negative' ") and expects in msg, msg
    assert "encode it with the same text encoder as the positive prompt" in msg, msg
    if case.embeds_text_in_conds:       # ComfyUI's own extra_conds fails first, with or without NASA
        for m in (mp, support.apply_nasa(mp)):
            with pytest.raises(RuntimeError):
                cases.sample(m, name, pos, bad)
        return
    with pytest.raises(ValueError, match=re.escape(f"Apply NASA Attention: the sampler's negative {expects}")):
        cases.sample(support.apply_nasa(mp), name, pos, bad)


@pytest.mark.parametrize("name", NAMES)
def test_second_nasa_node_replaces_the_first(env, name):
    """A first node with another negative and alpha leaves nothing behind under a second node."""
    mp = _model(env, name)
    pos, neg = _conds(env, name)
    other = _conds(env, name, seed=7)[1]
    first = support.apply_nasa(mp, alpha=1.0, negative=other)
    once = cases.sample(support.apply_nasa(mp, alpha=0.5), name, pos, neg, steps=2)
    twice = cases.sample(support.apply_nasa(first, alpha=0.5), name, pos, neg, steps=2)
    assert torch.equal(once, twice)
    assert not torch.equal(cases.sample(first, name, pos, neg, steps=2), once)


@pytest.mark.parametrize("name", NAMES)
def test_canary_every_layer_is_steered(env, name):
    mp, case = _model(env, name), cases.CASES[name]
    family = env.adapters.find_adapter(mp)
    assert family is env.mod(case.adapter).FAMILY
    expected = support.all_layers(family, mp)
    assert expected == case.layers(mp.model.diffusion_model), f"{name}: the adapter names other layers than there are"
    m = support.apply_nasa(mp, alpha=0.5)
    out = cases.sample(m, name, *_conds(env, name))
    assert torch.isfinite(out).all()
    assert support.steered_layers(m) == expected, \
        f"{name}: layers never steered: {sorted(expected - support.steered_layers(m))}"


@pytest.mark.parametrize("name", NAMES)
def test_every_method_steers_every_layer(env, name):
    """NAG and VSF steer every layer NASA steers, on every family (no quiet no-op); off (NAG scale 1, VSF scale 0) is
    the unpatched model, bit for bit. (VSF is refused only on a joint attention call with a padding mask, which no
    case here makes: test_hunyuan_video_adapter.py's test_vsf_refuses_a_padded_prompt_clearly.)"""
    core = env.mod("nasa_core")
    mp, conds = _model(env, name), _conds(env, name)
    base = cases.sample(mp, name, *conds)
    expected = support.all_layers(env.adapters.find_adapter(mp), mp)
    for method in (core.Nag(scale=3.0, tau=2.5, alpha=0.5), core.Vsf(scale=2.0, bias=0.1)):
        m = env.adapters.apply_nasa(mp, alpha=method.strength, method=method)
        out = cases.sample(m, name, *conds)
        assert torch.isfinite(out).all() and not torch.equal(out, base), f"{name}: {method.name} changed nothing"
        assert support.steered_layers(m) == expected, f"{name}: {method.name} left layers unsteered"
        off = type(method)(**{"scale": 1.0 if method.name == "nag" else 0.0})
        assert torch.equal(cases.sample(env.adapters.apply_nasa(mp, alpha=off.strength, method=off), name, *conds),
                           base), f"{name}: {method.name} off is not the unpatched model"
