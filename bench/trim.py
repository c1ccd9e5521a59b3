"""Would trimming the negative's T5 padding keep FLUX's NASA result? A study (``nasa_bench.py trim``), not a test.

FLUX pads T5 to 256 tokens and attends to every one (no mask); a negative's real tokens are a handful. Attending
over those only would cut FLUX's NASA cost to a fraction - if it gave the same result. ``run_trim`` measures how
far the trimmed result lies from the padded one, relative to NASA's whole effect, on ComfyUI's FLUX class at test
width with ComfyUI's T5 (real tokenizer, random weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from ..adapters import apply_nasa
from .costs import direct_options

TRIM_PROMPTS = ("glasses", "blurry, low quality", "a red hat and a scarf", "text, watermark, signature, jpeg artifacts")


@dataclass
class TrimRow:
    name: str
    prompt: str
    tokens: int            # the negative's real tokens (through T5's end token), of the padded length
    padded: int
    deviation: float       # |NASA trimmed - NASA padded| / |NASA padded - plain| (max abs, over the output)


def _real_tokens(clip, text: str, key: str = "t5xxl", pad: int = 0) -> int:
    tokens = clip.tokenize(text)[key][0]
    return next((i for i, (tok, *_) in enumerate(tokens) if tok == pad), len(tokens))


def run_trim(seeds=(0, 1, 2), alpha=0.5, sigma=0.7, dtype=torch.float32) -> List[TrimRow]:
    """Would trimming the negative's T5 padding (FLUX pads T5 to 256 tokens and attends to every one) keep
    NASA's result? On ComfyUI's FLUX class at test width with ComfyUI's T5 (real tokenizer, random weights):
    NASA with the padded negative against NASA with its real tokens only, relative to NASA's effect."""
    import nodes as comfy_nodes    # ComfyUI's module
    from ..runner.random_weights.dit import build_text_encoder
    from ..runner.random_weights.models import DIT_FAMILIES, build_dit_model
    rows = []
    for seed in seeds:
        mp = build_dit_model("flux", dtype=dtype, seed=seed)
        clip = build_text_encoder("flux", dtype=dtype, seed=seed)
        nasa = apply_nasa(mp, negative=None, alpha=alpha, use_sampler_negative=True, node="nasa_bench")
        model = mp.model
        (pos, pos_opts), = comfy_nodes.CLIPTextEncode().encode(clip, "a portrait photo of a person")[0]
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, DIT_FAMILIES["flux"][1]["in_channels"], 16, 16, generator=g).to(dtype)
        t = torch.full((1,), sigma)
        y = pos_opts["pooled_output"]
        for prompt in TRIM_PROMPTS:
            (neg, _), = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
            n = _real_tokens(clip, prompt)

            @torch.no_grad()
            def forward(negative=None):
                opts = {"cond_or_uncond": [0]} if negative is None else \
                    direct_options(nasa, negative, alpha)
                return model.apply_model(x, t, c_crossattn=pos, transformer_options=opts, y=y)
            plain, padded, trimmed = forward(), forward(neg), forward(neg[:, :n])
            effect = (padded - plain).abs().max().item()
            rows.append(TrimRow(f"FLUX class (test width), ComfyUI T5, seed {seed}", prompt, n, neg.shape[1],
                                (trimmed - padded).abs().max().item() / effect))
    return rows


def trim_markdown(rows: List[TrimRow]) -> str:
    lines = ["| model | negative | real / padded tokens | trimmed vs padded, of NASA's effect |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.prompt} | {r.tokens} / {r.padded} | {100 * r.deviation:.1f}% |" for r in rows]
    return "\n".join(lines)
