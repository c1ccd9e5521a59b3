"""HunyuanImage 2.1 and its refiner (``comfy.ldm.hunyuan_video``).

HunyuanImage 2.1 runs ComfyUI's HunyuanVideo diffusion-model class with 2D patches (20 FLUX-style double and 40
single blocks); its refiner the same class with 3D patches of one frame and the base image concatenated to the
latent. NASA steers both with :mod:`.hunyuan_video`'s hooks: the negative as a stream of its own through every
block's text-stream weights, only the generated image's query rows steered. The text side of the joint sequence
is [text; glyph], both at RoPE position zero and without a condition-type embedding:

* the main text (Qwen2.5-VL hidden states) through the token refiner ``txt_in``;
* ByT5 glyph tokens (``txt_byt5``: the prompt's quoted text, ``byt5_in``), after it.

**What the negative is.** NASA's negative stream is the negative prompt's main text embedded exactly as the
model embeds the positive's main text: the token refiner at the row's timestep without a mask
(:func:`.hunyuan_video.embed_text`). The negative's glyph tokens are not used: they spell out the quoted words of
a prompt (a negative rarely has any; without them ComfyUI passes no ``txt_byt5`` at all), which is no concept to
steer away from. The positive's glyph tokens stay text-side keys and values of the joint attention, never
steered; the negative stream attends to its own tokens and the image, as a forward on the negative's text alone
would (the tests hold the stream to such a forward).

The distilled checkpoint's MeanFlow embedding (``time_r_in``) and the guidance embedding go into the blocks'
modulation vector ``vec``, which the negative stream takes as the positive's text does. No pooled vector.
"""
from __future__ import annotations

from . import double_single, hunyuan_video
from .family import Family

MODEL_CLASSES = ("HunyuanImage21", "HunyuanImage21Refiner")     # comfy.model_base / comfy.supported_models


def matches(model_patcher) -> bool:
    """Exactly ComfyUI's HunyuanImage 2.1 model classes around the HunyuanVideo diffusion model with 2D patches
    (or the refiner's 3D ones), no pooled vector, no vision tokens and no condition-type embedding: the main text
    is the token refiner's output alone, as :func:`.hunyuan_video.embed_text` embeds the negative."""
    dm = hunyuan_video.diffusion_model_of(model_patcher, MODEL_CLASSES)
    if dm is None:
        return False
    p = dm.params
    return (len(p.patch_size) in (2, 3) and p.vec_in_dim is None and dm.vector_in is None
            and getattr(dm, "vision_in", None) is None and not getattr(p, "use_cond_type_embedding", False)
            and getattr(dm, "cond_type_embedding", None) is None)      # (ComfyUI 0.3.6x: neither part exists)


def model_name(model_patcher) -> str:
    return f"HunyuanImage 2.1 ({type(model_patcher.model.model_config).__name__})"


FAMILY = Family(
    name="HunyuanImage 2.1", supported=("HunyuanImage 2.1 (base, distilled, refiner)",),
    model_classes=MODEL_CLASSES, matches=matches, model_name=model_name, context_dim=hunyuan_video.context_dim,
    block_groups=double_single.double_single_groups, install=hunyuan_video.install,
    flop_layers=hunyuan_video.flop_layers, joint_stream=True)
