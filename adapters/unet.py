"""UNet family: SD1.x, SD2.x (eps and v-prediction), SDXL and their derivatives.

Every cross-attention layer (``attn2`` of each BasicTransformerBlock in the input, middle and output blocks) gets
NASA's attn2 replace (:mod:`.attn2`) through ``ModelPatcher.set_model_attn2_replace``: Z+ as ComfyUI computes it
(or through an attn2 replace installed before NASA), minus alpha * Z- with the negative projected by the layer's
own ``to_k``/``to_v``, on the positive prompt's rows only; ComfyUI then applies the layer's ``to_out``.
"""
from __future__ import annotations

from typing import Optional

from . import attn2
from .family import Family


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


def model_name(model_patcher) -> str:
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


def install(model_patcher) -> int:
    """NASA's attn2 replace on every cross-attention layer of a (cloned) model patcher; returns the layer count."""
    return attn2.install(model_patcher, cross_attention_layers(model_patcher.model.diffusion_model))


def layers(base_model) -> dict:
    """The run's layer map: this model's cross-attention layers (resolved at sample time, on the model sampled)."""
    return cross_attention_layers(base_model.diffusion_model)


FAMILY = Family(
    name="SD1.x / SD2.x / SDXL (UNet)",
    supported=("SD1.5", "SD2.0/2.1 (incl. v-prediction)", "SDXL (incl. Turbo, DMD2, Lightning, Refiner, SSD-1B, Vega)"),
    model_classes=("SD15", "SD20", "SDXL", "SDXLRefiner"),
    matches=matches, model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    layers=layers, flop_layers=flop_layers)
