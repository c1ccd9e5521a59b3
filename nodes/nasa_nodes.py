"""The NASA nodes: schemas and input checks only; the work happens in ..adapters."""
from __future__ import annotations

from comfy_api.latest import io

from ..adapters import apply_nasa, make_carried_negative
from ..nasa_core import DEFAULT_ALPHA

ALPHA_TOOLTIP = ("How strongly the negative is subtracted inside every text-attention layer "
                 "(Z = Z+ - alpha*Z-). 0 = off, bit-identical to the unpatched model. Paper settings: "
                 "SD1.5 0.1, SD2.1 0.2, PixArt 0.5; SDXL-DMD2 examples use 0-1; the DiT example workflows "
                 "(FLUX, SD3.5, Wan, ...) start at 0.5. Too high and the negative dominates the image: raise "
                 "it step by step.")


class NASAApplyAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASAApplyAttention",
            display_name="Apply NASA Attention",
            category="model_patches/nasa",
            description=("Negative-Away Steer Attention: honours a negative prompt on one-step and few-step "
                         "models (SD-Turbo, SDXL-DMD2, SwiftBrush, FLUX.1-schnell, SD3.5-Turbo, PixArt, "
                         "Wan CausVid...) inside each layer where the image attends to the text, in the same "
                         "model pass - no CFG, no sampler swap. Use with the stock KSampler at cfg 1. The model "
                         "family is recognised automatically."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to steer: SD1.x, SD2.x, SDXL, FLUX.1, "
                                                "Chroma, SD3/SD3.5, PixArt-α/Σ, Wan 2.1/2.2, Qwen-Image, "
                                                "Lumina 2, HunyuanVideo or LTX-Video (recognised automatically). "
                                                "The input model is left untouched; a patched copy is returned."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="What to steer away from. Leave unconnected to use the negative "
                                              "prompt wired into the sampler (see use_sampler_negative)."),
                io.Float.Input("alpha", default=DEFAULT_ALPHA, min=0.0, max=2.0, step=0.01, round=0.001,
                               tooltip=ALPHA_TOOLTIP),
                io.Boolean.Input("use_sampler_negative", default=True,
                                 tooltip="When no negative is connected here, steer away from the negative the "
                                         "sampler receives (the usual KSampler wiring) - even at cfg 1, where "
                                         "ComfyUI otherwise ignores it."),
            ],
            outputs=[io.Model.Output(tooltip="The model with NASA installed on every layer where image tokens "
                                             "attend to the text (cross-attention, or joint attention).")],
        )

    @classmethod
    def execute(cls, model, alpha, use_sampler_negative, negative=None) -> io.NodeOutput:
        return io.NodeOutput(apply_nasa(model, negative=negative, alpha=alpha,
                                        use_sampler_negative=use_sampler_negative,
                                        node="Apply NASA Attention"))


class NASANegativeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASANegativeConditioning",
            display_name="NASA Negative Conditioning",
            category="conditioning/nasa",
            description=("Attaches a negative prompt to one positive conditioning, so prompts that are combined, "
                         "set to areas or batched each steer away from their own negative. Needs a model patched "
                         "by Apply NASA Attention; for its prompt this negative wins over the model-level one."),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The positive conditioning that gets its own negative."),
                io.Conditioning.Input("negative", tooltip="The negative prompt for this conditioning only."),
                io.Float.Input("alpha", default=-1.0, min=-1.0, max=2.0, step=0.01, round=0.001, optional=True,
                               tooltip="Strength for this prompt. Negative (default -1) = use the alpha of "
                                       "Apply NASA Attention. " + ALPHA_TOOLTIP),
            ],
            outputs=[io.Conditioning.Output(tooltip="The positive conditioning carrying its NASA negative.")],
        )

    @classmethod
    def execute(cls, conditioning, negative, alpha=-1.0) -> io.NodeOutput:
        return io.NodeOutput(make_carried_negative(conditioning, negative, alpha, node="NASA Negative Conditioning"))


NODES = [NASAApplyAttention, NASANegativeConditioning]
