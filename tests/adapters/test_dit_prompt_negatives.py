"""Per-prompt negatives (NASA Negative Conditioning) on every DiT family, through ComfyUI's sampler.

Two positive prompts of the same length share one sampler (as Conditioning Combine makes them): ComfyUI
batches them into one model pass and averages their predictions. With one euler step at cfg 1 the
sampler returns that average of the denoised predictions, so the combined run must equal the mean of two
runs that each steer one prompt alone with its own negative (held here, independent of the pack's
grouping code). Swapping the negatives must change the image, and a prompt without a carried negative
falls back to the node's negative.
"""
from __future__ import annotations

import pytest

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN, NEG_LEN = 12, 9

# The DiT families (family_cases.py: their models, prompt widths and options, latents).
FAMILIES = ["chroma", "flux", "hunyuan_video", "ltxv", "lumina2", "pixart", "qwen_image", "sd3", "wan21_t2v"]


@pytest.fixture(scope="module")
def env(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    carry_node = nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"]

    def carry(cond, neg):
        return carry_node.execute(conditioning=cond, negative=neg, alpha=-1.0).result[0]

    return dict(rm=rm, model=lambda family: cases.model(rm, family), carry=carry)


def _prompts(env, family, n, length, seed):
    return cases.prompts(env["rm"], family, [length] * n, seed=seed)


def _sample(family, model, positive, negative):
    return cases.sample(model, family, positive, negative, cfg=1.0, steps=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_prompt_steers_away_from_its_own_negative_in_one_batched_pass(env, family):
    mp = env["model"](family)
    a, b = _prompts(env, family, 2, POS_LEN, seed=1)
    neg_a, neg_b, sampler_neg = _prompts(env, family, 3, NEG_LEN, seed=2)
    forwards = support.Forwards(mp)
    try:
        combined = _sample(family, support.apply_nasa(mp),
                           env["carry"](a, neg_a) + env["carry"](b, neg_b), sampler_neg)
        assert forwards.n == 1                              # both prompts in one model pass
    finally:
        forwards.close()
    alone_a = _sample(family, support.apply_nasa(mp, negative=neg_a), a, sampler_neg)
    alone_b = _sample(family, support.apply_nasa(mp, negative=neg_b), b, sampler_neg)
    plain = _sample(family, mp, a + b, sampler_neg)
    want = (alone_a + alone_b) / 2
    support.check_close(combined, want, plain, tol=1e-3)

    swapped = _sample(family, support.apply_nasa(mp), env["carry"](a, neg_b) + env["carry"](b, neg_a), sampler_neg)
    assert (swapped - combined).abs().max() > 1e-2 * (combined - plain).abs().max()


@pytest.mark.parametrize("family", ["flux", "pixart", "wan21_t2v"])
def test_a_prompt_without_its_own_negative_uses_the_nodes(env, family):
    mp = env["model"](family)
    a, b = _prompts(env, family, 2, POS_LEN, seed=3)
    neg_a, node_neg = _prompts(env, family, 2, NEG_LEN, seed=4)
    mixed = _sample(family, support.apply_nasa(mp, negative=node_neg), env["carry"](a, neg_a) + b, node_neg)
    alone_a = _sample(family, support.apply_nasa(mp, negative=neg_a), a, node_neg)
    alone_b = _sample(family, support.apply_nasa(mp, negative=node_neg), b, node_neg)
    plain = _sample(family, mp, a + b, node_neg)
    support.check_close(mixed, (alone_a + alone_b) / 2, plain, tol=1e-3)
