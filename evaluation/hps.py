"""HPSv2 (Human Preference Score v2, the paper's preference metric) from the user's own checkpoint file, without
the ``hpsv2`` or ``open_clip`` packages.

HPSv2 and v2.1 are OpenCLIP ViT-H/14 models fine-tuned on human preferences; their score for an image and a prompt
is the cosine of the two embeddings (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``: a torch file holding
OpenCLIP's state dict, under ``"state_dict"`` or bare). The weights are renamed here into a ``transformers``
CLIPModel of the same shape (OpenCLIP's ``in_proj`` split into q, k, v; its projections transposed), so the scorer
is the evaluation's own :class:`~.clip.ClipScorer`. HPS ships no tokenizer: CLIP's (the ``--clip`` folder's, or
ComfyUI's ``comfy/sd1_tokenizer``: the BPE vocabulary OpenCLIP uses) tokenizes the prompts. Images are prepared
as OpenCLIP's validation transform does: the shorter side to 224 (bicubic), a centre crop, CLIP's mean and std.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Tuple

import torch

from .clip import ClipLoadError, ClipScorer, load_tokenizer, model_from_state

# OpenCLIP's ViT-H-14 (HPSv2's backbone): heads per tower and activation; not readable from the weights
HPS_HEADS = (16, 16)                    # (vision, text)
HPS_ACT = "gelu"

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_PLAIN = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
          "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
          "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
          "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
          "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
          "visual.ln_post.weight": "vision_model.post_layernorm.weight",
          "visual.ln_post.bias": "vision_model.post_layernorm.bias",
          "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
          "positional_embedding": "text_model.embeddings.position_embedding.weight",
          "ln_final.weight": "text_model.final_layer_norm.weight",
          "ln_final.bias": "text_model.final_layer_norm.bias",
          "logit_scale": "logit_scale"}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def open_clip_state(path) -> Dict[str, torch.Tensor]:
    """The OpenCLIP state dict in a checkpoint file (``"state_dict"`` or bare; DataParallel's ``module.`` dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ClipLoadError(f"--hps {path}: no such file (give a local HPS_v2_compressed.pt or "
                            "HPS_v2.1_compressed.pt)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:          # a torn download, a pickle that is not plain tensors, another format
        raise ClipLoadError(f"--hps {path}: cannot read it as a torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ClipLoadError(f"--hps {path}: holds a {type(state).__name__}, not a state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    missing = [k for k in ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection")
               if k not in state]
    if missing:
        raise ClipLoadError(f"--hps {path}: not an OpenCLIP (HPSv2) checkpoint: no {', '.join(missing)}")
    return state


def to_transformers(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An OpenCLIP ViT state dict renamed into transformers' CLIPModel layout."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _PLAIN:
            out[_PLAIN[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key == "attn_mask":
            continue                        # OpenCLIP's causal mask buffer: transformers builds its own
        elif (m := _BLOCK.match(key)) is not None:
            prefix = f"{'vision' if m.group(1) else 'text'}_model.encoder.layers.{m.group(2)}."
            part, _, kind = m.group(3).rpartition(".")
            if part == "attn" and kind in ("in_proj_weight", "in_proj_bias"):
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind[len('in_proj_'):]}"] = chunk.contiguous()
            elif part in _LAYER_PARTS:
                out[f"{prefix}{_LAYER_PARTS[part]}.{kind}"] = value
            else:
                raise ClipLoadError(f"--hps: an OpenCLIP layer this reader does not know: {key}")
        else:
            raise ClipLoadError(f"--hps: an OpenCLIP weight this reader does not know: {key} (an HPSv2 file is "
                                "a plain ViT-H-14 CLIP)")
    return out


def load_hps(path, tokenizer_folder, device="cpu", heads: Tuple[int, int] = HPS_HEADS,
             act: str = HPS_ACT) -> ClipScorer:
    """The HPSv2 checkpoint at ``path`` as a :class:`ClipScorer` (its ``source`` names the file); CLIP's tokenizer
    from ``tokenizer_folder`` (the ``--clip`` folder, or ComfyUI's ``comfy/sd1_tokenizer``)."""
    model = model_from_state(to_transformers(open_clip_state(path)), heads, (act, act), f"--hps {path}")
    tokenizer = load_tokenizer(tokenizer_folder, f"--hps {path}")
    return ClipScorer(model, tokenizer, device, source=f"HPSv2 {Path(path).name}")
