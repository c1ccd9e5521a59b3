"""UNet family adapter: SD1.x, SD2.x (eps and v-prediction), SDXL and their derivatives.

Every cross-attention layer (``attn2`` of each BasicTransformerBlock in the input, middle
and output blocks) gets an attn2 replace through ``ModelPatcher.set_model_attn2_replace``.
ComfyUI hands the replace the projected q, k, v; the replace:

* computes Z+ exactly as the unpatched layer would (ComfyUI's own attention function), or
  by calling an attn2 replace that was installed before NASA (IPAdapter-style), so that
  one keeps working;
* projects the negative with this layer's ``to_k``/``to_v`` modules at sample time (LoRA
  and other weight patches, and lowvram casting, apply), and subtracts alpha * Z- on the
  positive prompt's rows only. ComfyUI then applies the layer's ``to_out``.
"""
from __future__ import annotations

from typing import Optional

from .negatives import RUN_KEY

FAMILY = "SD1.x / SD2.x / SDXL (UNet)"
SUPPORTED = ("SD1.5", "SD2.0/2.1 (incl. v-prediction)", "SDXL (incl. Turbo, DMD2, Lightning, Refiner, SSD-1B, Vega)")


def _config_classes():
    import comfy.supported_models as sm
    return (sm.SD15, sm.SD20, sm.SDXL, sm.SDXLRefiner)


def matches(model_patcher) -> bool:
    """An SD1.x/SD2.x/SDXL config (or a derivative's config built on one: SSD-1B, Vega, KOALA, IP2P, unCLIP)
    whose diffusion model is exactly ComfyUI's UNetModel, without temporal layers, and whose text
    cross-attention layers sit where ComfyUI's attn2 replace keys them (checked by building that map)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    if not isinstance(getattr(base, "model_config", None), _config_classes()) or type(dm) is not UNetModel:
        return False
    config = base.model_config.unet_config
    if config.get("use_temporal_attention") or config.get("use_temporal_resblock") or not config.get("context_dim"):
        return False
    try:
        return len(cross_attention_layers(dm)) > 0
    except RuntimeError:        # two spatial transformers in one block: attn2 keys cannot tell them apart
        return False


def context_dim(model_patcher) -> Optional[int]:
    return model_patcher.model.model_config.unet_config.get("context_dim")


def family_name(model_patcher) -> str:
    return type(model_patcher.model.model_config).__name__


def block_groups(model_patcher) -> dict:
    """The blocks a block selection may name: ComfyUI's UNet block ids that hold a cross-attention layer."""
    groups: dict = {}
    for name, block_id, _ in cross_attention_layers(model_patcher.model.diffusion_model):
        if block_id not in groups.setdefault(name, []):
            groups[name].append(block_id)
    return groups


def flop_layers(model_patcher, latent) -> tuple:
    """(Embedding, [NasaLayer]) of one forward on a latent of shape (C, H, W), for nasa_core.flops: every
    cross-attention layer projects the negative with its to_k/to_v once and attends over it from its queries
    (the latent downscaled by the Downsample blocks before it, ceil-rounded like the strided convs)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample
    from ..nasa_core.flops import Embedding, NasaLayer, linear_weights
    dm = model_patcher.model.diffusion_model
    factor, ds = {}, 1
    for i, block in enumerate(dm.input_blocks):
        ds *= 2 if any(isinstance(m, Downsample) for m in block) else 1
        factor[("input", i)] = ds
    factor[("middle", 0)] = ds
    for i, block in enumerate(dm.output_blocks):
        factor[("output", i)] = ds
        ds //= 2 if any(isinstance(m, Upsample) for m in block) else 1
    h, w = latent[-2:]
    layers = [NasaLayer(width=attn.to_q.weight.shape[0],
                        query_tokens=-(-h // factor[key[:2]]) * -(-w // factor[key[:2]]),
                        shared_weights=linear_weights(attn.to_k.weight.shape, attn.to_v.weight.shape))
              for key, attn in cross_attention_layers(dm).items()]
    return Embedding(), layers


def cross_attention_layers(diffusion_model) -> dict:
    """{(block_name, block_id, block_index): attn2 module} for every cross-attention layer,
    keyed exactly as ComfyUI keys attn2 replaces."""
    from comfy.ldm.modules.attention import SpatialTransformer
    layers = {}
    blocks = [("input", i, b) for i, b in enumerate(diffusion_model.input_blocks)]
    blocks.append(("middle", 0, diffusion_model.middle_block))
    blocks += [("output", i, b) for i, b in enumerate(diffusion_model.output_blocks)]
    for name, block_id, block in blocks:
        transformers = [m for m in block if isinstance(m, SpatialTransformer)]
        if len(transformers) > 1:
            raise RuntimeError(f"NASA: {name} block {block_id} holds {len(transformers)} spatial transformers; "
                               f"ComfyUI's attn2 keys cannot tell them apart")
        for st in transformers:
            for index, tb in enumerate(st.transformer_blocks):
                if getattr(tb, "attn2", None) is not None and not getattr(tb, "switch_temporal_ca_to_sa", False):
                    layers[(name, block_id, index)] = tb.attn2
    return layers


def _comfy_attention(q, k, v, heads, extra_options, mask=None, **kwargs):
    """ComfyUI's selected attention, called exactly as CrossAttention.forward calls it (``kwargs``: e.g.
    skip_output_reshape for the negative, which NASA subtracts head-major without reshaping it)."""
    import comfy.ldm.modules.attention as attention
    if mask is None:
        return attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                             transformer_options=extra_options, **kwargs)
    return attention.optimized_attention_masked(q, k, v, heads, mask, attn_precision=extra_options.get("attn_precision"),
                                                transformer_options=extra_options, **kwargs)


def _make_replace(key, prior):
    def nasa_attn2(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        z_pos = prior(q, k, v, extra_options) if prior is not None else _comfy_attention(q, k, v, heads, extra_options)
        run = extra_options.get(RUN_KEY)
        if run is None:
            return z_pos
        attn2 = run.layers[key]

        def project(neg):     # once per sampling run where run.reuse() may keep it
            return run.reuse(("kv",) + key, (attn2.to_k, attn2.to_v), neg, lambda t: (attn2.to_k(t), attn2.to_v(t)))

        def attention_fn(q_rows, k_neg, v_neg, heads_, mask=None):
            b = q_rows.shape[0]
            return _comfy_attention(q_rows, k_neg.expand(b, -1, -1), v_neg.expand(b, -1, -1), heads_,
                                    extra_options, mask, skip_output_reshape=True)

        # Z+ from ComfyUI's attention here is ours to overwrite; a prior replace's output is not
        return run.steer(z_pos, q, extra_options, heads, project, attention_fn, layer=key[:2], inplace=prior is None)

    nasa_attn2.nasa_prior = prior
    nasa_attn2.nasa_key = key
    return nasa_attn2


def install(model_patcher) -> int:
    """Install NASA on every cross-attention layer of a (cloned) model patcher; returns the layer count."""
    layers = cross_attention_layers(model_patcher.model.diffusion_model)
    existing = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key in layers:
        prior = existing.get(key, existing.get(key[:2]))
        # A second Apply NASA Attention replaces the first instead of steering twice.
        while prior is not None and hasattr(prior, "nasa_prior"):
            prior = prior.nasa_prior
        model_patcher.set_model_attn2_replace(_make_replace(key, prior), key[0], key[1], key[2])
    return len(layers)


def attach_layers(run, base_model) -> None:
    """Give the run this model's layer map (resolved at sample time, on the model being sampled)."""
    run.layers = cross_attention_layers(base_model.diffusion_model)
