"""NASA together with ComfyUI's Normalized Attention Guidance (NAGuidance, comfy_extras/nodes_nag.py), tiny
random-weight FLUX and SD1.5 UNet.

NAG patches the output of every self-attention (``attn1_output_patch``: FLUX double and single blocks on the image
tokens, the UNet's attn1) with a normalised extrapolation of the positive rows away from the negative rows of the
same batch, and disables ComfyUI's cfg-1 optimisation so that the negative rows are computed. NASA replaces blocks
("dit") / attn2 and overrides the attention function; it touches none of NAG's patches and NAG none of its.

Held here, both node orders (NAG then NASA, NASA then NAG), both nodes run from ComfyUI's node registry:

* both act: the result differs from NASA alone and from NAG alone;
* the two orders give the same result, bit for bit: in every FLUX block NASA subtracts inside the attention call
  and NAG then patches the attention output (whichever node came first), and on the UNet they act on different
  layers (attn2 / attn1); the model options the two orders build differ only in insertion order;
* NASA's canary: every layer steered, with NAG's negative rows in the batch (never steered by NASA);
* alpha 0 with NAG is NAG alone, bit for bit.

ComfyUI 0.3.64 has no NAGuidance: there the tests assert that (no node, no comfy_extras/nodes_nag.py) and return.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

NAG = dict(nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5)      # the node's defaults
STEPS = 2
TOKENS = 77     # positive and negative alike (as CLIP gives them): ComfyUI batches cond and uncond rows only when
                # their lengths pad to each other (comfy.conds.CONDCrossAttn.can_concat), and NAG acts on such a batch only
CASES = [("flux", 1.0), ("flux", 3.0), ("sd15", 1.0), ("sd15", 4.0)]


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    cache = {}

    def family(name):
        if name not in cache:
            pos, neg = cases.conds(rm, name, TOKENS, TOKENS)
            cache[name] = SimpleNamespace(name=name, base=cases.model(rm, name), pos=pos, neg=neg,
                                          latent=cases.latent(name))
        return cache[name]

    return SimpleNamespace(family=family, nodes=comfyui.nodes, dir=comfyui.dir, version=comfyui.version,
                           adapters=comfyui.mod("adapters"))


def _nag_node(env):
    """ComfyUI's NAGuidance node class, or None after asserting that this ComfyUI has none (0.3.64)."""
    node = env.nodes.NODE_CLASS_MAPPINGS.get("NAGuidance")
    if node is None:
        assert not (env.dir / "comfy_extras" / "nodes_nag.py").exists(), \
            f"ComfyUI {env.version} ships nodes_nag.py but NAGuidance is not registered: its import failed"
    return node


def _nag(node, model):
    return node.execute(model=model, **NAG).result[0]


def _with_nag(env, family, cfg):
    """(NAGuidance, the family's models, NAG alone's output at ``cfg``), or None where this ComfyUI has no NAGuidance
    (asserted by :func:`_nag_node`)."""
    node = _nag_node(env)
    if node is None:
        return None
    fam = env.family(family)
    return node, fam, _sample(fam, _nag(node, fam.base), cfg)


def _sample(fam, model, cfg):
    with torch.inference_mode():      # as ComfyUI's executor runs KSampler
        return support.sample(model, fam.latent, fam.pos, fam.neg, cfg=cfg, steps=STEPS)


def _moved(a, b) -> float:
    """How far ``a`` is from ``b``, relative to ``b``: an effect, not the rounding of ComfyUI's cfg formula (at cfg 1
    NAG makes ComfyUI compute the negative rows and mix them in with weight 0, which moves the last bits)."""
    return ((a - b).norm() / b.norm()).item()


def _canary(env, model, what):
    expected = support.all_layers(env.adapters.find_adapter(model), model)
    assert support.steered_layers(model) == expected, f"{what}: NASA did not steer every layer"


@pytest.mark.parametrize("family,cfg", CASES)
def test_nasa_and_nag_both_act_in_either_order(env, family, cfg):
    ready = _with_nag(env, family, cfg)
    if ready is None:
        return
    node, fam, nag = ready
    plain = _sample(fam, fam.base, cfg)
    nasa = _sample(fam, support.apply_nasa(fam.base, alpha=1.0), cfg)

    nag_then_nasa = support.apply_nasa(_nag(node, fam.base), alpha=1.0)
    nasa_then_nag = _nag(node, support.apply_nasa(fam.base, alpha=1.0))
    first = _sample(fam, nag_then_nasa, cfg)
    _canary(env, nag_then_nasa, "NAG, then NASA")
    second = _sample(fam, nasa_then_nag, cfg)
    _canary(env, nasa_then_nag, "NASA, then NAG")

    print(f"{family} cfg {cfg}: moved from plain by NAG {_moved(nag, plain):.3f}, NASA {_moved(nasa, plain):.3f}, both "
          f"{_moved(first, plain):.3f}; both from NAG {_moved(first, nag):.3f}, from NASA {_moved(first, nasa):.3f}")
    for name, out in (("NAG", nag), ("NASA", nasa), ("NAG + NASA", first)):
        assert torch.isfinite(out).all(), name
        assert _moved(out, plain) > 1e-2, f"{name} did nothing"
    assert _moved(first, nag) > 1e-2, "with NAG, NASA did nothing"
    assert _moved(first, nasa) > 1e-2, "with NASA, NAG did nothing"
    assert torch.equal(first, second), "NAG and NASA give different results in the two node orders"


@pytest.mark.parametrize("family,cfg", CASES)
def test_alpha_zero_with_nag_is_nag(env, family, cfg):
    ready = _with_nag(env, family, cfg)
    if ready is None:
        return
    node, fam, nag = ready
    for what, model in (("NAG, then NASA", support.apply_nasa(_nag(node, fam.base), alpha=0.0)),
                        ("NASA, then NAG", _nag(node, support.apply_nasa(fam.base, alpha=0.0)))):
        assert torch.equal(_sample(fam, model, cfg), nag), f"{what} at alpha 0 differs from NAG alone"
        assert support.steered_layers(model) == frozenset(), what
