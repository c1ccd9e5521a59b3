"""PixArt-α / PixArt-Σ family adapter (``comfy.ldm.pixart``).

Every PixArt block has a plain cross-attention, ``MultiHeadCrossAttention(x, cond, mask)``: image
queries, caption keys/values from one ``kv_linear``, then ``proj``. ComfyUI hands it no
``transformer_options`` (``PixArtMS.forward`` drops them and the layer calls ``optimized_attention``
without them), so neither attn2 replaces nor an attention override reach it. Two ModelPatcher
patch points do instead:

* an ``APPLY_MODEL`` wrapper publishes the current forward's ``transformer_options`` (the NasaRun,
  ``cond_or_uncond``, ``uuids``, ``sigmas``) in a thread-local slot for the duration of that call
  only, restoring the previous value afterwards (nested or concurrent forwards never see each
  other's);
* an object patch on ``diffusion_model.blocks.{i}.cross_attn.forward`` of every block (ComfyUI sets
  it when it loads the model and restores the original forward on unpatch). When the current
  forward steers nothing (no NASA run, alpha 0, no positive rows) it calls the original forward
  unchanged. Otherwise it runs the layer as the original does (``q_linear``, ``kv_linear``, the same
  ``optimized_attention`` call), subtracts alpha * Z- on the positive rows, then applies ``proj``.

The negative is embedded once per forward exactly as ``PixArtMS.forward_orig`` embeds the caption
(the model's own ``y_embedder``, the caption projection; ComfyUI passes PixArt no caption mask and
no null-caption padding at inference), then projected by each block's own ``kv_linear``.
PixArt-α and PixArt-Σ share this cross-attention; they differ in micro-conditioning and latent
format only.
"""
from __future__ import annotations

import threading
from typing import Optional

from .binding import patch_forwards, set_wrapper, wrapped_call
from .run import RUN_KEY, with_plan
from .family import Family


def _pixart_class():
    from comfy.ldm.pixart.pixartms import PixArtMS
    return PixArtMS


def matches(model_patcher) -> bool:
    """A PixArt-α/Σ config on ComfyUI's PixArtMS class whose blocks hold the plain cross-attention NASA
    re-runs (q_linear, kv_linear, proj)."""
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    return (type(dm) is _pixart_class() and isinstance(getattr(base, "model_config", None), sm.PixArtAlpha)
            and all(all(hasattr(b.cross_attn, n) for n in ("q_linear", "kv_linear", "proj")) for b in dm.blocks))


def context_dim(model_patcher) -> Optional[int]:
    """The caption (T5) width the caption projection takes: 4096 for the published models."""
    return model_patcher.model.diffusion_model.y_embedder.y_proj.fc1.in_features


def model_name(model_patcher) -> str:
    return f"PixArt ({type(model_patcher.model.model_config).__name__})"


def _layer_key(index: int) -> str:
    return f"diffusion_model.blocks.{index}.cross_attn.forward"


class _Forward:
    """One model forward that steers: its options and the negatives embedded for it."""

    def __init__(self, run, options: dict):
        self.run = run
        self.options = options
        self._embedded: list = []     # (negative, its embedding), found by identity (torch.compile traces no id())

    def embed(self, neg):
        """(1, L, caption width) -> (1, L, hidden), as forward_orig embeds its (B, 1, L, width) caption."""
        for seen, embedded in self._embedded:
            if seen is neg:
                return embedded
        dm = self.run.layers["model"]
        embedded = self.run.reuse("embed", (dm.y_embedder,), neg,
                                  lambda t: dm.y_embedder(t.unsqueeze(1), dm.training).squeeze(1))
        self._embedded.append((neg, embedded))
        return embedded


def _steered_cross_attention(index, layer, x, cond, forward: _Forward):
    from comfy.ldm.pixart import blocks
    attention = blocks.optimized_attention          # the function the layer itself calls
    b, _, c = x.shape
    heads = layer.num_heads
    q = layer.q_linear(x)
    k, v = layer.kv_linear(cond).view(1, -1, 2, c).unbind(2)     # cond: every row's caption, (1, B*L, C)
    z = attention(q, k.view(b, -1, c), v.view(b, -1, c), heads, mask=None)

    def project(neg):
        emb = forward.embed(neg)            # batch 1 at sample time; one negative per row in NASA-T training
        return forward.run.reuse(("kv", index), (layer.kv_linear,), emb,
                                 lambda e: layer.kv_linear(e).view(e.shape[0], -1, 2, c).unbind(2))

    def attention_fn(q_rows, k_neg, v_neg, heads_, mask=None):
        n = q_rows.shape[0]
        return attention(q_rows, k_neg.expand(n, -1, -1), v_neg.expand(n, -1, -1), heads_, mask=mask,
                         skip_output_reshape=True)

    z = forward.run.steer(z, q, forward.options, heads, project, attention_fn, layer=("blocks", index), inplace=True,
                          positive=(k.view(b, -1, c), v.view(b, -1, c), None))
    return layer.proj_drop(layer.proj(z))


def _make_forward(index, layer, original, local):
    def nasa_cross_attention(x, cond, mask=None):
        forward = getattr(local, "forward", None)
        if forward is None or mask is not None:
            return original(x, cond, mask)
        return _steered_cross_attention(index, layer, x, cond, forward)

    return nasa_cross_attention


def _make_wrapper(local):
    def nasa_apply_model(executor, *args, **kwargs):
        """BaseModel._apply_model's call, bound by name: its x and transformer_options."""
        call = wrapped_call(executor, args, kwargs, "BaseModel._apply_model", needs=("x", "transformer_options"))
        x, options = call["x"], call["transformer_options"]
        options = options if isinstance(options, dict) else {}
        run = options.get(RUN_KEY)
        if run is not None:
            options = call["transformer_options"] = with_plan(options)   # decided here, outside a compiled model
        previous = getattr(local, "forward", None)
        local.forward = _Forward(run, options) if run is not None and run.groups(options, x.shape[0]) else None
        try:
            return call.invoke(executor)
        finally:
            local.forward = previous
    return nasa_apply_model


def block_groups(model_patcher) -> dict:
    return {"blocks": list(range(len(model_patcher.model.diffusion_model.blocks)))}


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) for nasa_core.flops: y_embedder, then each block's kv_linear and attention."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    p = dm.patch_size
    n_img = patch_tokens(latent[-2:], p)
    return Embedding(module_linear_weights(dm.y_embedder), reusable=True), [
        NasaLayer(width=b.cross_attn.q_linear.weight.shape[0], query_tokens=n_img,
                  shared_weights=module_linear_weights(b.cross_attn.kv_linear)) for b in dm.blocks]


def install(model_patcher) -> int:
    """Object-patch every block's cross-attention forward of a (cloned) model patcher; returns how many."""
    local = threading.local()
    layers = [block.cross_attn for block in model_patcher.model.diffusion_model.blocks]
    count = patch_forwards(model_patcher, layers, _layer_key,
                           lambda i, layer, original: _make_forward(i, layer, original, local),
                           lambda i: f"the cross-attention of PixArt block {i}")
    set_wrapper(model_patcher, "APPLY_MODEL", _make_wrapper(local))
    return count


FAMILY = Family(
    name="PixArt", supported=("PixArt-α", "PixArt-Σ"), model_classes=("PixArtAlpha", "PixArtSigma"),
    matches=matches, model_name=model_name,
    context_dim=context_dim, block_groups=block_groups, install=install, flop_layers=flop_layers)
