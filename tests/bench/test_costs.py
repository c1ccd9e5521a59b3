"""The cost table (docs/cost.md): NASA's extra FLOPs, counted on ComfyUI's own models at published sizes (meta device)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def env(comfyui):
    return dict(costs=comfyui.mod("bench.costs"), adapters=comfyui.mod("adapters"))


def _countable(env) -> list:
    """The cases this ComfyUI can count (a newer model class than this version has is left out, by name)."""
    return [c for c in env["costs"].CASES if env["costs"].unavailable(c) is None]


@pytest.fixture(scope="module")
def rows(env):
    return {c.name: env["costs"].count(c) for c in _countable(env)}


def test_every_supported_family_has_a_cost_case(env):
    """Every family this ComfyUI has a model class of is in the cost table; the cases left out are only those of
    model classes this version lacks (or cannot run with NASA), each named by costs.unavailable."""
    import comfy.supported_models as sm
    covered = set()
    for case in _countable(env):
        model = env["costs"].meta_model(case, __import__("torch").bfloat16)
        covered.add(env["adapters"].find_adapter(model))
        assert isinstance(model.model.model_config, getattr(sm, case.config_class))
    present = {f for f in env["adapters"].FAMILIES if any(hasattr(sm, name) for name in f.model_classes)}
    assert covered == present, sorted(f.name for f in present - covered)



def test_nasa_costs_a_fraction_of_cfg(rows):
    for name, row in rows.items():
        assert 0.0 < row.extra < 0.25, (name, row.extra)        # CFG costs +100%


def test_flux_stays_under_ten_percent(rows):
    # FLUX.1 (T5 256 tokens); FLUX.2 runs every prompt at 512 tokens (Flux2.extra_conds pads): ~12%, under the 25% above
    flux = [r for name, r in rows.items() if name.startswith("FLUX.1")]
    assert flux and all(r.extra < 0.10 for r in flux), [(r.case.name, r.extra) for r in flux]


def test_alpha_zero_adds_nothing(env):
    case = env["costs"].find_case("FluxSchnell")
    row = env["costs"].count(case, alpha=0.0)
    assert row.nasa == row.plain


def test_flops_counted_from_shapes_agree_with_torch_within_one_percent(rows):
    """nasa_core.flops on each family's layer description equals FlopCounterMode's count of the NASA forward
    minus the plain forward (the same meta models, published sizes) within 1%."""
    assert all(r.counted is not None for r in rows.values()), [n for n, r in rows.items() if r.counted is None]
    for name, r in rows.items():
        measured = r.nasa - r.plain
        assert abs(r.counted - measured) <= 0.01 * measured, (name, r.counted, measured)


def test_later_steps_reuse_the_negative_projections(rows):
    """At steps 2+ of a multi-step run the cross-attention families skip the negative's embedding and K/V
    projections (FlopCounterMode on the second forward of a run with reuse on), as nasa_core.flops counts with
    ``reused``; joint-attention families propagate a timestep-modulated stream and cannot: their count stays."""
    cross = {"SD15", "SDXL", "PixArtAlpha", "WAN21_T2V", "LTXV"}      # the cross-attention families' cases
    cross |= {"CosmosT2IPredict2", "Anima"}
    cross |= {"LTXAV"}
    cross |= {"WAN22_S2V", "WAN22_Animate", "WAN21_Vace"}
    for name, r in rows.items():
        measured = r.nasa_reused - r.plain
        assert abs(r.counted_reused - measured) <= 0.01 * measured, (name, r.counted_reused, measured)
        if r.case.config_class in cross:
            assert r.nasa_reused < r.nasa, name
        else:
            assert r.nasa_reused == r.nasa, name
