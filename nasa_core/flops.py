"""NASA's and CFG's extra FLOPs over the plain forward, from a model's attention shapes. Plain arithmetic
(torch only to walk a module's linears).

A family adapter describes what NASA adds to one forward as a list of :class:`NasaLayer` (one per steered
layer or block) plus the weights that embed the negative once per forward; :func:`nasa_extra_flops` counts
them. Conventions follow ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs; elementwise work, norms and
softmax are not counted), so the figure can be held against FlopCounterMode on the same forward.

* Cross-attention families (UNet, PixArt, Wan, LTX-Video): per layer, the negative's K and V projections
  (once per forward, shared by every row) and one attention of the image queries over the negative's keys.
* Joint-attention families (FLUX, Chroma, SD3, ...): per block, the negative *stream* runs through the block's
  text-stream weights for every steered row, the image queries attend over its keys, and (except in the last
  block) the stream attends over [its keys; the image keys] as a real forward on the negative would.

CFG's extra is one more full forward: exactly the plain forward's FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class NasaLayer:
    """What NASA adds at one steered layer, for one negative."""
    width: int                    # attention width: heads * head_dim of the queries and the negative's keys
    query_tokens: int             # image query tokens steered per row
    shared_weights: int = 0       # in*out of the linears run once per forward on each negative token (K/V)
    row_weights: int = 0          # in*out of the linears run per steered row on each negative token (text stream)
    row_vector_weights: int = 0   # in*out of the linears run once per steered row (modulation of the stream)
    stream_keys: int = -1         # the stream's own attention: keys besides its tokens (image keys); -1 = none


def patch_tokens(sizes: Sequence[int], patch) -> int:
    """Tokens of a latent of spatial ``sizes`` cut into patches (one size per dimension, or one for all),
    ceil-rounded as the patch embedders pad: prod(ceil(size / patch))."""
    patches = [patch] * len(sizes) if isinstance(patch, int) else list(patch)
    total = 1
    for size, p in zip(sizes, patches):
        total *= -(-int(size) // int(p))
    return total


def attention_flops(rows: int, queries: int, keys: int, width: int) -> int:
    """softmax(Q K^T) V: Q K^T and P V, each 2 * rows * queries * keys * width."""
    return 4 * rows * queries * keys * width


@dataclass(frozen=True)
class Embedding:
    """How a family embeds the negative once per forward (FLUX's txt_in, Lumina 2's caption refiner, ...)."""
    weights: int = 0                  # in*out of the linears run on each negative token
    vector_weights: int = 0           # in*out of the linears run once (timestep/pooled vectors, modulation)
    attention: Sequence[int] = ()     # widths of the self-attention layers run over the negative's tokens
    reusable: bool = False            # computed once per multi-step run (cross-attention families), see ``reused``


def nasa_extra_flops(layers: Sequence[NasaLayer], negative_tokens: int, rows: int = 1,
                     embedding: Embedding = Embedding(), reused: bool = False) -> int:
    """FLOPs NASA adds to one forward steering ``rows`` batch rows with a negative of ``negative_tokens``
    (the embedding counted once: it runs on the batch-1 negative). ``reused``: a later step of a multi-step
    run, where the layers' shared K/V projections and a reusable embedding come from the first step."""
    n = negative_tokens
    total = 0
    if not (reused and embedding.reusable):
        total += 2 * n * embedding.weights + 2 * embedding.vector_weights
        total += sum(attention_flops(1, n, n, width) for width in embedding.attention)
    for layer in layers:
        if not reused:
            total += 2 * n * layer.shared_weights
        total += rows * (2 * n * layer.row_weights + 2 * layer.row_vector_weights)
        total += attention_flops(rows, layer.query_tokens, n, layer.width)
        if layer.stream_keys >= 0:
            total += attention_flops(rows, n, n + layer.stream_keys, layer.width)
    return total


def cfg_extra_flops(plain_forward_flops: int) -> int:
    """CFG runs the model once more on the negative prompt: +100% of the plain forward."""
    return plain_forward_flops


def linear_weights(*shapes) -> int:
    """Sum of in*out over linear weight shapes ((out, in) as torch stores them)."""
    total = 0
    for shape in shapes:
        out_features, in_features = shape[0], shape[-1]
        total += int(out_features) * int(in_features)
    return total


def module_linear_weights(*modules) -> int:
    """Sum of in*out of every linear layer in ``modules`` (recursively; None entries skipped): a torch.nn.Linear, or
    any module that declares integer ``in_features``/``out_features`` and holds a ``weight`` (mixed-precision
    layers whose weight is a quantized tensor subclass are no torch.nn.Linear; their logical shape counts)."""
    import torch
    return linear_weights(*[(m.out_features, m.in_features) for mod in modules if mod is not None
                            for m in mod.modules() if _is_linear(m, torch)])


def _is_linear(m, torch) -> bool:
    return isinstance(m, torch.nn.Linear) or (
        isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)
        and isinstance(getattr(m, "weight", None), torch.Tensor))


def counted_flops(fn) -> int:
    """FLOPs of one call of ``fn`` by torch's FlopCounterMode. CPU's fused attention kernel has no formula in the
    counter; without one, attention (what NASA adds) would not be counted at all, so it gets the formula torch uses
    for the other SDPA kernels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return counter.get_total_flops()
