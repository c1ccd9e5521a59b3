"""The NASA nodes: schemas and input checks only; the work happens in ..adapters."""
from __future__ import annotations

from comfy_api.latest import io

from ..adapters import apply_nasa, make_carried_negative, make_negatives
from ..sampling.alpha_grid import alpha_grid, sampler_options
from ..nasa_core import DEFAULT_ALPHA, GUARD_MODES, METHODS, Guard, Nag, Vsf

ALPHA_TOOLTIP = ("How strongly the negative is subtracted inside every text-attention layer "
                 "(Z = Z+ - alpha*Z-); 0 = off, bit-identical to the unpatched model. Raise it step by step "
                 "(starting values per model family are on the help page): too high and the negative dominates.")


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
                               tooltip="Strength of this prompt's negative (Z = Z+ - alpha*Z-); any negative "
                                       "value (default -1) uses the alpha of Apply NASA Attention."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The positive conditioning carrying its NASA negative.")],
        )

    @classmethod
    def execute(cls, conditioning, negative, alpha=-1.0) -> io.NodeOutput:
        return io.NodeOutput(make_carried_negative(conditioning, negative, alpha, node="NASA Negative Conditioning"))


NasaNegatives = io.Custom("NASA_NEGATIVES")

BLOCKS_TOOLTIP = ("Where NASA acts: empty = every text-attention layer, otherwise comma-separated items group, "
                  "group:i or group:i-j, each optionally *multiplier of alpha (like 'input:4-8, middle, "
                  "output:0-2*0.5'). Each family's groups are on the help page; a wrong name or index is "
                  "reported with the blocks this model has.")


class NASANegative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASANegative",
            display_name="NASA Negative",
            category="conditioning/nasa",
            description=("One negative prompt for Apply NASA Attention (Advanced), with its own strength and an "
                         "optional region. Chain several (e.g. 'glasses' 0.8, 'blurry' 0.3): NASA subtracts "
                         "sum_i alpha_i * Z-_i in every steered layer."),
            inputs=[
                io.Conditioning.Input("negative", tooltip="The negative prompt (CLIP Text Encode with the model's "
                                                          "text encoder)."),
                io.Float.Input("alpha", default=-1.0, min=-1.0, max=2.0, step=0.01, round=0.001,
                               tooltip="Strength of this negative (Z = Z+ - alpha*Z-); any negative value "
                                       "(default -1) uses the alpha of Apply NASA Attention (Advanced)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Steer only this region (1 = steer, 0 = leave alone; soft values scale "
                                      "alpha). Scaled to each layer's token grid; for video models the mask's "
                                      "batch is frames (one mask = every frame)."),
                NasaNegatives.Input("negatives", optional=True,
                                    tooltip="Negatives from another NASA Negative node: this one is added to them."),
            ],
            outputs=[NasaNegatives.Output(display_name="negatives",
                                          tooltip="The list of negatives, for Apply NASA Attention (Advanced).")],
        )

    @classmethod
    def execute(cls, negative, alpha=-1.0, mask=None, negatives=None) -> io.NodeOutput:
        return io.NodeOutput(make_negatives(negative, alpha, mask, negatives, node="NASA Negative"))


GUARD_TAU_DEFAULT = 1.5
NAG_DEFAULTS, VSF_DEFAULTS = Nag(), Vsf()


class NASAApplyAttentionAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASAApplyAttentionAdvanced",
            display_name="Apply NASA Attention (Advanced)",
            category="model_patches/nasa",
            description=("Apply NASA Attention with control over when (a window of the sampling schedule and an "
                         "alpha ramp), where (a block selection with per-block multipliers) and what (several "
                         "negatives, each with its own alpha and optional mask, from NASA Negative nodes). Outside "
                         "the window and on blocks left out the model is exactly the unpatched one. A later NASA "
                         "node replaces an earlier one on the same model."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to steer (any family Apply NASA Attention "
                                                "supports). The input model is left untouched."),
                NasaNegatives.Input("negatives", optional=True,
                                    tooltip="Negatives from NASA Negative nodes. Unconnected: the sampler's negative "
                                            "(see use_sampler_negative), at this node's alpha."),
                io.Float.Input("alpha", default=DEFAULT_ALPHA, min=0.0, max=2.0, step=0.01, round=0.001,
                               tooltip="Strength of the sampler's negative and of every NASA Negative whose own "
                                       "alpha is -1 (Z = Z+ - alpha*Z-; 0 = off). Raise it step by step: too "
                                       "high and the negative dominates the image."),
                io.Boolean.Input("use_sampler_negative", default=True,
                                 tooltip="When 'negatives' is not connected, steer away from the negative the "
                                         "sampler receives, also at cfg 1."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="NASA starts acting here (ComfyUI's percent of the sampling schedule, as in "
                                       "ConditioningSetTimestepRange: 0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="NASA stops acting after this point: a window of 0-0.3 steers only the "
                                       "first steps, where layout and content are decided."),
                io.Float.Input("alpha_end_scale", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Alpha schedule: alpha goes linearly from alpha at start_percent to "
                                       "alpha x this at end_percent. 1 = constant; 0 = fade out. Keep 1 with "
                                       "TorchCompileModel (a ramp would recompile every step)."),
                io.String.Input("blocks", default="", tooltip=BLOCKS_TOOLTIP),
                io.Combo.Input("guard", options=list(GUARD_MODES), default="off", optional=True,
                               tooltip="Stability guard on each steered image token of Z+ - alpha Z-: off = plain "
                                       "NASA (exactly), rescale = keep the token's norm equal to Z+'s (only its "
                                       "direction moves), clip = scale it down where its norm exceeds guard_tau x "
                                       "Z+'s. Keep off unless a few-step UNet model picks up defects (the help "
                                       "page has the measurements)."),
                io.Float.Input("guard_tau", default=GUARD_TAU_DEFAULT, min=0.1, max=10.0, step=0.05, round=0.001,
                               optional=True,
                               tooltip="For guard 'clip' only: the largest allowed ratio of a steered token's norm to "
                                       "its norm without NASA (1 = never larger than Z+)."),
                io.Combo.Input("method", options=list(METHODS), default="nasa", optional=True,
                               tooltip="How the negative attention is used, in the same single pass: nasa = Z+ - "
                                       "alpha Z- (this pack's method, the default); nag = Normalized Attention "
                                       "Guidance (nag_scale, nag_tau, nag_alpha; as ComfyUI's NAGuidance node, at "
                                       "NASA's cost); vsf = Value Sign Flip (vsf_scale, vsf_bias). With nag or vsf, 'alpha' is not used: the method's own inputs set "
                                       "the strength. The help page says which to pick."),
                io.Float.Input("nag_scale", default=NAG_DEFAULTS.scale, min=1.0, max=50.0, step=0.1, round=0.001,
                               optional=True,
                               tooltip="For method 'nag' only: the guidance scale, as in ComfyUI's NAGuidance node "
                                       "(Z~ = scale Z+ - (scale - 1) Z-); 1 = off. The NAG authors use 5."),
                io.Float.Input("nag_tau", default=NAG_DEFAULTS.tau, min=1.0, max=10.0, step=0.01, round=0.001,
                               optional=True,
                               tooltip="For method 'nag' only: the largest allowed L1 norm ratio of Z~ to Z+ per "
                                       "token; larger ones are scaled down to it. The NAG authors use 2.5."),
                io.Float.Input("nag_alpha", default=NAG_DEFAULTS.alpha, min=0.0, max=1.0, step=0.01, round=0.001,
                               optional=True,
                               tooltip="For method 'nag' only: the blend of the normalized Z~ into Z+ (0 = off, 1 = "
                                       "Z~ alone). The NAG authors use 0.25 on FLUX, 0.5 elsewhere."),
                io.Float.Input("vsf_scale", default=VSF_DEFAULTS.scale, min=0.0, max=20.0, step=0.01, round=0.001,
                               optional=True,
                               tooltip="For method 'vsf' only: the negative's values enter the one softmax flipped "
                                       "and scaled (-scale V-); 0 = off. The VSF authors use 3.5 on SD3.5 Turbo, 1.8 "
                                       "on Wan."),
                io.Float.Input("vsf_bias", default=VSF_DEFAULTS.bias, min=-10.0, max=10.0, step=0.01, round=0.001,
                               optional=True,
                               tooltip="For method 'vsf' only: added to the negative's attention logits (more "
                                       "attention to the flipped negative when higher). The VSF authors use 0.1."),
            ],
            outputs=[io.Model.Output(tooltip="The model with NASA installed on the selected layers.")],
        )

    @classmethod
    def execute(cls, model, alpha, use_sampler_negative, start_percent, end_percent, alpha_end_scale, blocks,
                negatives=None, guard="off", guard_tau=GUARD_TAU_DEFAULT, method="nasa",
                nag_scale=NAG_DEFAULTS.scale, nag_tau=NAG_DEFAULTS.tau, nag_alpha=NAG_DEFAULTS.alpha,
                vsf_scale=VSF_DEFAULTS.scale, vsf_bias=VSF_DEFAULTS.bias) -> io.NodeOutput:
        node = "Apply NASA Attention (Advanced)"
        method_setting = _method(node, method, nag_scale, nag_tau, nag_alpha, vsf_scale, vsf_bias)
        if method_setting is not None:
            alpha = method_setting.strength
        if guard not in GUARD_MODES:
            raise ValueError(f"{node}: input 'guard' is {guard!r}; pick one of {', '.join(GUARD_MODES)}.")
        try:
            guard_setting = Guard(guard, float(guard_tau))
        except ValueError as e:
            raise ValueError(f"{node}: input 'guard_tau': {e}. Set a value between 0.1 and 10.") from e
        return io.NodeOutput(apply_nasa(model, negatives=negatives, alpha=alpha,
                                        use_sampler_negative=use_sampler_negative, node=node,
                                        start_percent=start_percent, end_percent=end_percent,
                                        alpha_end_scale=alpha_end_scale, blocks=blocks, guard=guard_setting,
                                        method=method_setting))


def _method(node: str, method: str, nag_scale, nag_tau, nag_alpha, vsf_scale, vsf_bias):
    """The Advanced node's method choice as nasa_core's setting (None for NASA), its inputs checked by name."""
    if method not in METHODS:
        raise ValueError(f"{node}: input 'method' is {method!r}; pick one of {', '.join(METHODS)}.")
    if method == "nasa":
        return None
    names = {"nag": ("nag_scale", "nag_tau", "nag_alpha"), "vsf": ("vsf_scale", "vsf_bias")}[method]
    try:
        return Nag(float(nag_scale), float(nag_tau), float(nag_alpha)) if method == "nag" else \
            Vsf(float(vsf_scale), float(vsf_bias))
    except ValueError as e:
        raise ValueError(f"{node}: inputs {', '.join(names)}: {e}") from e


class NASAAlphaGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        samplers, schedulers = sampler_options()
        return io.Schema(
            node_id="NASAAlphaGrid",
            display_name="NASA Alpha Grid",
            category="model_patches/nasa",
            description=("Renders the same seed at several NASA alphas (columns) and, optionally, block selections "
                         "(rows) as one labeled image grid, to choose alpha at a glance: too low and the negative "
                         "concept stays, too high and the negative takes over the image. Each cell equals Apply "
                         "NASA Attention (Advanced) -> KSampler -> VAE Decode with that alpha."),
            inputs=[
                io.Model.Input("model", tooltip="The model, without NASA (the grid applies it per cell)."),
                io.Conditioning.Input("positive", tooltip="The positive prompt, as for KSampler."),
                io.Conditioning.Input("negative", tooltip="The negative prompt: steered away from with NASA (and "
                                                          "used by CFG if cfg > 1), unless 'negatives' is connected."),
                io.Latent.Input("latent_image", tooltip="One latent (batch 1)."),
                io.Vae.Input("vae", tooltip="Decodes each cell (the checkpoint's VAE)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="One seed for every cell, so only alpha (and the blocks) differ."),
                io.Int.Input("steps", default=1, min=1, max=10000, tooltip="Sampling steps per cell, as for KSampler."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="1 for one-step/few-step models: NASA needs no CFG."),
                io.Combo.Input("sampler_name", options=samplers, tooltip="The sampler, as for KSampler."),
                io.Combo.Input("scheduler", options=schedulers, default="sgm_uniform",
                               tooltip="The scheduler, as for KSampler (sgm_uniform for one-step models)."),
                io.String.Input("alphas", default="0, 0.1, 0.2, 0.4, 0.8",
                                tooltip="The alphas to compare, comma-separated (each 0-2); 0 = no NASA."),
                io.String.Input("block_sets", default="", multiline=True, optional=True,
                                tooltip="Optional: one block selection per line, one grid row each, written as the "
                                        "Advanced node's blocks input ('all' or empty = every block)."),
                NasaNegatives.Input("negatives", optional=True,
                                    tooltip="Negatives from NASA Negative nodes instead of 'negative'; those with "
                                            "alpha -1 take each column's alpha, the others keep their own."),
                io.Boolean.Input("labels", default=True, optional=True, tooltip="Write the alpha above each image."),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="All cells in one labeled image."),
                     io.Image.Output(display_name="images", tooltip="The cells as a batch, row by row.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler, alphas,
                block_sets="", negatives=None, labels=True) -> io.NodeOutput:
        grid, cells = alpha_grid(model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name,
                                 scheduler, alphas, block_sets, negatives, labels)
        return io.NodeOutput(grid, cells)


NODES = [NASAApplyAttention, NASANegativeConditioning, NASAApplyAttentionAdvanced, NASANegative, NASAAlphaGrid]
