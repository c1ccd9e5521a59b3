"""NASA as an ``attn2`` replace (``ModelPatcher.set_model_attn2_replace``): the UNet families' hook.

ComfyUI hands the replace the projected q, k, v; the replace:

* computes Z+ exactly as the unpatched layer would (ComfyUI's own attention function), or by calling an attn2
  replace that was installed before NASA (IPAdapter-style), so that one keeps working;
* projects the negative with this layer's ``to_k``/``to_v`` modules at sample time (LoRA and other weight patches,
  and lowvram casting, apply), and subtracts alpha * Z- on the positive prompt's rows only. ComfyUI then applies
  the layer's ``to_out``.

The run's ``layers`` map the replace's key to the attn2 module of the model being sampled.
"""
from __future__ import annotations

from .run import RUN_KEY


def comfy_attention(q, k, v, heads, extra_options, mask=None, **kwargs):
    """ComfyUI's selected attention, called exactly as CrossAttention.forward calls it (``kwargs``: e.g.
    skip_output_reshape for the negative, which NASA subtracts head-major without reshaping it)."""
    import comfy.ldm.modules.attention as attention
    if mask is None:
        return attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                             transformer_options=extra_options, **kwargs)
    return attention.optimized_attention_masked(q, k, v, heads, mask, attn_precision=extra_options.get("attn_precision"),
                                                transformer_options=extra_options, **kwargs)


def make_replace(key, prior):
    def nasa_attn2(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        z_pos = prior(q, k, v, extra_options) if prior is not None else comfy_attention(q, k, v, heads, extra_options)
        run = extra_options.get(RUN_KEY)
        if run is None:
            return z_pos
        attn2 = run.layers[key]

        def project(neg):     # once per sampling run where run.reuse() may keep it
            return run.reuse(("kv",) + key, (attn2.to_k, attn2.to_v), neg, lambda t: (attn2.to_k(t), attn2.to_v(t)))

        def attention_fn(q_rows, k_neg, v_neg, heads_, mask=None):
            b = q_rows.shape[0]
            return comfy_attention(q_rows, k_neg.expand(b, -1, -1), v_neg.expand(b, -1, -1), heads_,
                                    extra_options, mask, skip_output_reshape=True)

        # Z+ from ComfyUI's attention here is ours to overwrite; a prior replace's output is not
        # VSF attends with the positive keys: a prior replace's own Z+ (IPAdapter-style) would be lost, so it gets none
        return run.steer(z_pos, q, extra_options, heads, project, attention_fn, layer=key[:2], inplace=prior is None,
                         positive=(k, v, None) if prior is None else None)

    nasa_attn2.nasa_prior = prior
    nasa_attn2.nasa_key = key
    return nasa_attn2


def install(model_patcher, layers: dict) -> int:
    """Install NASA on every cross-attention layer of a (cloned) model patcher; ``layers``: {(block_name, block_id,
    index): attn2 module}, keyed as ComfyUI keys attn2 replaces. Returns the layer count."""
    existing = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key in layers:
        prior = existing.get(key, existing.get(key[:2]))
        # A second Apply NASA Attention replaces the first instead of steering twice.
        while prior is not None and hasattr(prior, "nasa_prior"):
            prior = prior.nasa_prior
        model_patcher.set_model_attn2_replace(make_replace(key, prior), key[0], key[1], key[2])
    return len(layers)
