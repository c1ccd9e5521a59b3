"""nasa_core.flops against torch's FlopCounterMode on pure-torch layers (the per-family descriptions are held
against whole ComfyUI forwards in tests/bench/test_costs.py)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from nasa_core import NegativeTerm, attention, steer
from nasa_core.flops import (Embedding, NasaLayer, attention_flops, cfg_extra_flops, linear_weights, nasa_extra_flops,
                             patch_tokens)


def _count(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_cross_attention_layer_matches_flop_counter():
    """A cross-attention layer steered by NASA: the negative's K/V projections once, one attention per row."""
    rows, lq, heads, d, ctx, n = 2, 64, 4, 16, 48, 23
    meta = torch.device("meta")      # as runner/costs.py counts (CPU's fused SDPA kernel is not registered with the counter)
    to_k = torch.nn.Linear(ctx, heads * d, bias=False, device=meta)
    to_v = torch.nn.Linear(ctx, heads * d, bias=False, device=meta)
    q, z = torch.empty(rows, lq, heads * d, device=meta), torch.empty(rows, lq, heads * d, device=meta)
    neg = torch.empty(1, n, ctx, device=meta)
    measured = _count(lambda: steer(z, q, [NegativeTerm(to_k(neg), to_v(neg), 0.5)], heads, attention_fn=attention))
    layer = NasaLayer(width=heads * d, query_tokens=lq, shared_weights=linear_weights(to_k.weight.shape, to_v.weight.shape))
    assert nasa_extra_flops([layer], n, rows=rows) == measured
    k, v = to_k(neg), to_v(neg)                       # steps 2+ of a multi-step run: K-/V- kept from step 1
    measured = _count(lambda: steer(z, q, [NegativeTerm(k, v, 0.5)], heads, attention_fn=attention))
    assert nasa_extra_flops([layer], n, rows=rows, reused=True) == measured


def test_stream_terms_and_embedding():
    """A joint block's negative stream: per-row text weights, the per-row modulation vector, the stream's own
    attention over [its keys; the image keys]; the embedding once per forward."""
    rows, n, width, img = 3, 10, 32, 50
    layer = NasaLayer(width=width, query_tokens=img, row_weights=7 * width * width, row_vector_weights=width * 6 * width,
                      stream_keys=img)
    want = rows * (2 * n * 7 * width * width + 2 * 6 * width * width) + attention_flops(rows, img, n, width) \
        + attention_flops(rows, n, n + img, width)
    assert nasa_extra_flops([layer], n, rows=rows) == want
    emb = Embedding(weights=100, vector_weights=40, attention=(width,))
    assert nasa_extra_flops([], n, embedding=emb) == 2 * n * 100 + 2 * 40 + attention_flops(1, n, n, width)
    assert nasa_extra_flops([layer], n, embedding=emb, reused=True) == nasa_extra_flops([layer], n, embedding=emb)
    kept = Embedding(weights=100, reusable=True)      # a cross-attention family's embedding: kept from step 1
    assert nasa_extra_flops([], n, embedding=kept, reused=True) == 0
    x = torch.randn(1, n, width)
    lin = torch.nn.Linear(width, 3 * width)
    assert _count(lambda: lin(x)) == 2 * n * linear_weights(lin.weight.shape)
    assert cfg_extra_flops(123) == 123


def test_patch_tokens_round_up_like_padded_patch_embedders():
    assert patch_tokens((15, 9), 2) == 8 * 5
    assert patch_tokens((21, 60, 105), (1, 2, 2)) == 21 * 30 * 53
    assert patch_tokens((64, 64), 1) == 4096
