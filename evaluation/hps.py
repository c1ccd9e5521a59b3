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

from .clip import ClipLoadError, ClipScorer, load_tokenizer

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


def _layers(state: Dict[str, torch.Tensor], vision: bool) -> int:
    found = {int(m.group(2)) for m in map(_BLOCK.match, state) if m and bool(m.group(1)) == vision}
    return max(found) + 1 if found else 0


def to_transformers(state: Dict[str, torch.Tensor], heads: Tuple[int, int] = HPS_HEADS, act: str = HPS_ACT):
    """(CLIPConfig, state dict of transformers' CLIPModel) for an OpenCLIP ViT state dict; ``heads``: (vision,
    text) attention heads, ``act``: the MLP activation ("gelu" for ViT-H-14, "quick_gelu" for OpenAI's models)."""
    from transformers import CLIPConfig
    conv, pos = state["visual.conv1.weight"], state["visual.positional_embedding"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    text_width = state["token_embedding.weight"].shape[1]
    block = "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"
    config = CLIPConfig(
        vision_config=dict(hidden_size=width, intermediate_size=state[block[0]].shape[0], patch_size=patch,
                           image_size=grid * patch, num_hidden_layers=_layers(state, True),
                           num_attention_heads=heads[0], hidden_act=act),
        text_config=dict(hidden_size=text_width, intermediate_size=state[block[1]].shape[0],
                         vocab_size=state["token_embedding.weight"].shape[0],
                         max_position_embeddings=state["positional_embedding"].shape[0],
                         num_hidden_layers=_layers(state, False), num_attention_heads=heads[1], hidden_act=act,
                         bos_token_id=49406, eos_token_id=49407),
        projection_dim=state["text_projection"].shape[1])
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
    return config, out


def load_hps(path, tokenizer_folder, device="cpu", heads: Tuple[int, int] = HPS_HEADS,
             act: str = HPS_ACT) -> ClipScorer:
    """The HPSv2 checkpoint at ``path`` as a :class:`ClipScorer` (its ``source`` names the file); CLIP's tokenizer
    from ``tokenizer_folder`` (the ``--clip`` folder, or ComfyUI's ``comfy/sd1_tokenizer``)."""
    from transformers import CLIPModel
    config, weights = to_transformers(open_clip_state(path), heads, act)
    model = CLIPModel(config)
    result = model.load_state_dict(weights, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClipLoadError(f"--hps {path}: its weights do not fill a CLIP of their own shape (missing "
                            f"{missing[:4]}, unexpected {unexpected[:4]})")
    tokenizer = load_tokenizer(tokenizer_folder, f"--hps {path}")
    return ClipScorer(model, tokenizer, device, source=f"HPSv2 {Path(path).name}")
