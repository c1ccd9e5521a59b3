"""HunyuanVideo 1.5: T2V, I2V, step-distilled (MeanFlow) and super-resolution models (``comfy.ldm.hunyuan_video``).

HunyuanVideo 1.5 runs ComfyUI's HunyuanVideo diffusion-model class (54 FLUX-style double blocks, no single
block, 3D patches of 1x1x1), so NASA steers it with :mod:`.hunyuan_video`'s hooks: the negative as a stream of
its own through every block's text-stream weights, only the generated video's query rows steered, reference
latent and guiding frame tokens attended to but never steered. What differs from HunyuanVideo 1.0 is the text
side of the joint sequence, which the model builds from three kinds of tokens, all at RoPE position zero, each
with its ``cond_type_embedding`` vector added: [vision; glyph; text]

* the main text (Qwen2.5-VL hidden states) through the token refiner ``txt_in``, type 0;
* ByT5 glyph tokens (``txt_byt5``: the prompt's quoted text, ``byt5_in``), type 1;
* SigLIP vision tokens of the I2V start image (``clip_fea``, ``vision_in``), type 2.

**What the negative is.** NASA's negative stream is the negative prompt's main text embedded exactly as the
model embeds the positive's main text: the token refiner at the row's timestep without a mask, then the same
type-0 vector (:func:`.hunyuan_video.embed_text`). The negative's glyph and vision tokens are not used: glyph
tokens spell out the quoted words of a prompt (a negative rarely has any; without them ComfyUI passes no
``txt_byt5`` at all), and the vision tokens describe the start image, which ComfyUI's I2V nodes give the
positive and the negative alike: nothing to steer away from. The positive's glyph and vision tokens stay where
the model puts them, text-side keys and values of the joint attention, never steered; the negative stream
attends to its own tokens and the video, as a forward on the negative's text alone would (the tests hold the
stream to such a forward).

MeanFlow checkpoints (the step-distilled ones: ``time_r_in``) add the next sigma's embedding to the blocks'
modulation vector ``vec``; the negative stream takes the blocks' own ``vec``, so it is modulated exactly as the
positive's text. There is no pooled CLIP vector. The super-resolution model (``HunyuanVideo15_SR_Distilled``)
only concatenates more latent channels: the same model to NASA.
"""
from __future__ import annotations

import torch

from . import double_single, hunyuan_video
from .family import Family

MODEL_CLASSES = ("HunyuanVideo15", "HunyuanVideo15_SR_Distilled")     # comfy.model_base / comfy.supported_models


def matches(model_patcher) -> bool:
    """Exactly ComfyUI's HunyuanVideo 1.5 model classes around the HunyuanVideo diffusion model with 3D
    patches, no pooled vector, vision tokens and a condition-type embedding of the three types the model indexes
    (:func:`.hunyuan_video.embed_text` adds type 0 to the negative)."""
    dm = hunyuan_video.diffusion_model_of(model_patcher, MODEL_CLASSES)
    if dm is None:
        return False
    p, cond_type = dm.params, dm.cond_type_embedding
    return (len(p.patch_size) == 3 and p.vec_in_dim is None and dm.vector_in is None and dm.vision_in is not None
            and bool(p.use_cond_type_embedding) and isinstance(cond_type, torch.nn.Embedding)
            and cond_type.num_embeddings == 3)


def model_name(model_patcher) -> str:
    return f"HunyuanVideo 1.5 ({type(model_patcher.model.model_config).__name__})"


FAMILY = Family(
    name="HunyuanVideo 1.5", supported=("HunyuanVideo 1.5 T2V/I2V (incl. step-distilled, super-resolution)",),
    model_classes=MODEL_CLASSES, matches=matches, model_name=model_name, context_dim=hunyuan_video.context_dim,
    block_groups=double_single.double_single_groups, install=hunyuan_video.install,
    flop_layers=hunyuan_video.flop_layers, video=True, joint_stream=True)
