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
import torch

import nasa_test_support as support

POS_LEN, NEG_LEN = 12, 9

# family -> (latent shape, text width key, pooled width key or None, token mask in the conditioning)
# The options are those the family's text encoder gives CLIP Text Encode: a pooled output (CLIP-L / CLIP-G),
# none (Chroma's T5), or a token mask (Gemma for Lumina 2, T5 for LTX-Video).
FAMILIES = {
    "flux": ((1, 16, 8, 8), "context_in_dim", "vec_in_dim", False),
    "chroma": ((1, 16, 8, 8), "context_in_dim", None, False),
    "hunyuan_video": ((1, 16, 2, 8, 8), "context_in_dim", "vec_in_dim", False),
    "sd3": ((1, 16, 8, 8), None, "adm_in_channels", False),
    "qwen_image": ((1, 16, 1, 8, 12), "joint_attention_dim", None, False),
    "lumina2": ((1, 16, 8, 12), "cap_feat_dim", None, True),
    "pixart": ((1, 4, 34, 34), "caption_channels", None, False),
    "wan21_t2v": ((1, 16, 2, 8, 8), "text_dim", None, False),
    "ltxv": ((1, 128, 2, 4, 4), "caption_channels", None, True),
}


@pytest.fixture(scope="module")
def env(comfyui):
    import nodes
    rm = comfyui.mod("runner.random_weights.models")
    cache = {}

    def model(family):
        if family not in cache:
            cache[family] = rm.build_dit_model(family, dtype=torch.float32, seed=0)
        return cache[family]

    carry_node = nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"]

    def carry(cond, neg):
        return carry_node.execute(conditioning=cond, negative=neg, alpha=-1.0).result[0]

    return dict(rm=rm, model=model, carry=carry)


def _prompts(env, family, n, length, seed):
    config = env["rm"].DIT_FAMILIES[family][1]
    _, width_key, pooled_key, masked = FAMILIES[family]
    width = config[width_key] if width_key else config["context_embedder_config"]["params"]["in_features"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        opts = {"pooled_output": torch.randn(1, config[pooled_key], generator=g) if pooled_key else None}
        if masked:
            opts["attention_mask"] = torch.ones(1, length, dtype=torch.long)
        out.append([[torch.randn(1, length, width, generator=g), opts]])
    return out


def _sample(family, model, positive, negative):
    return support.sample(model, torch.zeros(FAMILIES[family][0]), positive, negative, cfg=1.0, steps=1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
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
