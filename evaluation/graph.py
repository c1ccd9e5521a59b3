"""Where a workflow's prompt, negative, seed, guidance and NASA node are, and one evaluation image's copy of it.

The harness runs the user's own workflow (API format, as the runner converts it) once per prompt pair x seed x
setting. :func:`find_roles` finds, by structure (links and input names, never node ids or positions):

* the **sampler**: the node that takes both ``positive`` and ``negative`` conditioning (KSampler, SamplerCustom,
  CFGGuider, ...); where there are several, the one whose model comes through the Apply NASA Attention node;
* its **seed** (``seed`` or ``noise_seed``, on the sampler or on the noise node that feeds it) and its ``cfg``;
* the **text nodes** of its positive and negative: followed upstream through conditioning nodes (FluxGuidance,
  LTXVConditioning, WanVaceToVideo, ...) to the node that holds the prompt text (a multiline text input beside a
  ``clip`` input: CLIPTextEncode, CLIPTextEncodeLumina2, ...);
* the **NASA node** (Apply NASA Attention, basic or Advanced) on the sampler's model path, if any;
* the **image**: the VAE decode of the sampler's latent, which the harness saves in place of the workflow's outputs.

:func:`evaluation_prompt` then writes one (pair, seed, setting) into a copy: the positive and negative texts, the
seed, the cfg, and NASA's alpha or method (an Apply NASA Attention node is swapped for the Advanced one, with the
same model, alpha and the sampler's negative, where the setting is NAG or VSF).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .settings import Setting

NASA_BASIC, NASA_ADVANCED = "NASAApplyAttention", "NASAApplyAttentionAdvanced"
OUTPUT_CLASS = "SaveImage"
OUTPUT_PREFIX = "nasa_eval"
VIDEO_OUTPUTS = ("SaveVideo", "SaveWEBM", "SaveAnimatedWEBP", "SaveAnimatedPNG", "CreateVideo")


class GraphError(ValueError):
    pass


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _label(prompt: dict, nid: str) -> str:
    n = prompt[nid]
    title = (n.get("_meta") or {}).get("title")
    return f"{nid} ({n['class_type']}{', ' + repr(title) if title and title != n['class_type'] else ''})"


@dataclass(frozen=True)
class Roles:
    sampler: str
    seed: Tuple[str, str]                 # (node id, input name)
    cfg: Tuple[str, str]
    positive_text: Tuple[str, str]
    negative_text: Tuple[str, str]        # the sampler's negative, which NASA reads too (use_sampler_negative)
    nasa: Optional[str]
    image: str                            # the node whose IMAGE output 0 is the sampler's decoded image


def _consumers(prompt: dict, nid: str) -> List[Tuple[str, str, int]]:
    return [(cid, name, v[1]) for cid, n in prompt.items() for name, v in n["inputs"].items()
            if _is_link(v) and v[0] == nid]


def _upstream(prompt: dict, start: str, follow: Callable[[str, dict], List[str]]) -> List[str]:
    """Node ids reached from ``start`` (itself included) through the inputs ``follow`` names at each node."""
    seen, todo = [], [start]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.append(nid)
        node = prompt[nid]
        todo += [node["inputs"][name][0] for name in follow(nid, node) if _is_link(node["inputs"].get(name))]
    return seen


def _text_input(class_def) -> Optional[str]:
    """The prompt-text input of a text-encode node class: a multiline STRING input, beside a CLIP input."""
    if class_def is None:
        return None
    from ..runner.workflow import input_definitions
    defs = input_definitions(class_def)          # (name, required/optional, type, options)
    if not any(t == "CLIP" for _, _, t, _ in defs):
        return None
    texts = [name for name, _, t, opts in defs if t == "STRING" and (opts or {}).get("multiline")]
    return texts[0] if len(texts) == 1 else None


def _text_of(prompt: dict, link, classes: Mapping[str, Any], role: str, sampler: str) -> Tuple[str, str]:
    """The (node, input) holding the text of the conditioning ``link`` carries, followed upstream."""
    for _ in range(16):
        if not _is_link(link):
            raise GraphError(f"evaluation: the sampler {_label(prompt, sampler)}'s {role} is not a link to a "
                             "text encoder")
        nid, slot = link
        node = prompt[nid]
        name = _text_input(classes.get(node["class_type"]))
        if name is not None:
            if _is_link(node["inputs"].get(name)):
                raise GraphError(f"evaluation: the {role} text of {_label(prompt, nid)} comes from another node; "
                                 "the harness writes each pair's text there, so type it in the node instead")
            return nid, name
        inputs = node["inputs"]
        if _is_link(inputs.get("positive")) and _is_link(inputs.get("negative")):
            link = inputs["positive" if slot == 0 else "negative"]     # (positive, negative, ...) pass-throughs
        elif _is_link(inputs.get("conditioning")):
            link = inputs["conditioning"]
        else:
            raise GraphError(f"evaluation: cannot follow the sampler's {role} through {_label(prompt, nid)} to its "
                             "text (no conditioning input); give the evaluation a workflow whose prompts are "
                             "text-encode nodes")
    raise GraphError(f"evaluation: the sampler's {role} passes through more than 16 nodes")


def find_roles(prompt: dict, classes: Mapping[str, Any]) -> Roles:
    """The evaluation's roles in an API-format ``prompt`` (``classes``: ComfyUI's NODE_CLASS_MAPPINGS)."""
    video = sorted(nid for nid, n in prompt.items() if n["class_type"] in VIDEO_OUTPUTS)
    if video:
        raise GraphError("evaluation: this workflow makes video (" + ", ".join(_label(prompt, v) for v in video)
                         + "); the evaluation scores images: use an image workflow of the same model")
    samplers = sorted(nid for nid, n in prompt.items() if "cfg" in n["inputs"]
                      and _is_link(n["inputs"].get("positive")) and _is_link(n["inputs"].get("negative")))
    if not samplers:
        raise GraphError("evaluation: no sampler with positive and negative prompts and a cfg (KSampler, "
                         "SamplerCustom, CFGGuider) in this workflow")

    def nasa_on_path(s: str) -> List[str]:
        path = _upstream(prompt, s, lambda nid, n: ["model"])
        return [nid for nid in path if prompt[nid]["class_type"] in (NASA_BASIC, NASA_ADVANCED)]
    with_nasa = [s for s in samplers if nasa_on_path(s)]
    chosen = with_nasa or samplers
    if len(chosen) != 1:
        raise GraphError("evaluation: this workflow has several samplers" + (" through Apply NASA Attention"
                         if with_nasa else "") + ": " + ", ".join(_label(prompt, s) for s in chosen)
                         + "; give it a workflow with one (the evaluation runs every setting on it)")
    sampler = chosen[0]
    nasa = (nasa_on_path(sampler) or [None])[0]
    node = prompt[sampler]["inputs"]
    if not isinstance(node.get("cfg"), (int, float)):
        raise GraphError(f"evaluation: the cfg of {_label(prompt, sampler)} is not a number in the node")
    seeds = [(nid, name) for nid in _upstream(prompt, sampler, lambda nid, n: ["noise", "guider"])
             for name in ("seed", "noise_seed") if isinstance(prompt[nid]["inputs"].get(name), int)]
    if not seeds:          # SamplerCustomAdvanced: the sampler node (a guider) is fed to it, with its noise node
        for cid, _, _ in _consumers(prompt, sampler):
            seeds += [(nid, name) for nid in _upstream(prompt, cid, lambda nid, n: ["noise"])
                      for name in ("seed", "noise_seed") if isinstance(prompt[nid]["inputs"].get(name), int)]
    if len(seeds) != 1:
        raise GraphError(f"evaluation: expected one seed input for {_label(prompt, sampler)}, found "
                         f"{len(seeds)} ({seeds})")
    if nasa is not None:
        n = prompt[nasa]["inputs"]
        if _is_link(n.get("negative")) or _is_link(n.get("negatives")) or n.get("use_sampler_negative") is False:
            raise GraphError(f"evaluation: {_label(prompt, nasa)} has a negative of its own; the evaluation "
                             "writes each pair's negative into the sampler's negative, which NASA must read "
                             "(use_sampler_negative on, nothing wired to negative/negatives)")
    pos = _text_of(prompt, node["positive"], classes, "positive", sampler)
    neg = _text_of(prompt, node["negative"], classes, "negative", sampler)
    if pos[0] == neg[0]:
        raise GraphError(f"evaluation: the positive and negative prompts come from the same node "
                         f"{_label(prompt, pos[0])}; give the negative a text node of its own")
    return Roles(sampler, seeds[0], (sampler, "cfg"), pos, neg, nasa, _image_node(prompt, sampler))


def _image_node(prompt: dict, sampler: str) -> str:
    """The VAE decode downstream of the sampler's latent (through latent-only nodes, at most 8 deep)."""
    frontier, seen = [sampler], set()
    for _ in range(8):
        nxt = []
        for nid in frontier:
            for cid, name, _slot in _consumers(prompt, nid):
                if cid in seen:
                    continue
                seen.add(cid)
                inputs = prompt[cid]["inputs"]
                if name == "samples" and _is_link(inputs.get("vae")):
                    return cid
                if name in ("samples", "latent", "latent_image", "guider", "av_latent"):
                    nxt.append(cid)
        frontier = nxt
    raise GraphError(f"evaluation: found no VAE decode of {_label(prompt, sampler)}'s latent")


def evaluation_prompt(prompt: dict, roles: Roles, positive: str, negative: str, seed: int,
                      setting: Setting, classes: Mapping[str, Any], save_id: str = OUTPUT_PREFIX) -> dict:
    """A copy of ``prompt`` that makes one evaluation image: the texts, seed and setting written in, the
    workflow's own output nodes removed and one SaveImage of the sampler's decoded image added as node
    ``save_id`` (its file names start with it too)."""
    p = copy.deepcopy(prompt)
    for nid in [nid for nid, n in p.items() if getattr(classes.get(n["class_type"]), "OUTPUT_NODE", False)]:
        del p[nid]
    p[roles.positive_text[0]]["inputs"][roles.positive_text[1]] = positive
    p[roles.seed[0]]["inputs"][roles.seed[1]] = int(seed)
    base_cfg = p[roles.cfg[0]]["inputs"][roles.cfg[1]]
    neg_text, cfg, alpha, method = "", base_cfg, 0.0, None
    if setting.kind == "cfg":
        neg_text, cfg = negative, setting.value
    elif setting.kind in ("nasa", "nag", "vsf"):
        if roles.nasa is None:
            raise GraphError(f"evaluation: setting {setting.label!r} needs Apply NASA Attention on the sampler's "
                             "model path; this workflow has none (add one, or evaluate 'none' and 'cfg' only)")
        neg_text, alpha = negative, setting.value
        method = setting.kind
    p[roles.negative_text[0]]["inputs"][roles.negative_text[1]] = neg_text
    p[roles.cfg[0]]["inputs"][roles.cfg[1]] = float(cfg)
    if roles.nasa is not None:
        node = p[roles.nasa]
        if method in ("nag", "vsf") and node["class_type"] == NASA_BASIC:
            node["class_type"] = NASA_ADVANCED
            node["inputs"] = {"model": node["inputs"]["model"], "alpha": 0.0, "use_sampler_negative": True,
                              "start_percent": 0.0, "end_percent": 1.0, "alpha_end_scale": 1.0, "blocks": ""}
        if method == "nag":
            node["inputs"].update(method="nag", nag_scale=float(setting.value))
        elif method == "vsf":
            node["inputs"].update(method="vsf", vsf_scale=float(setting.value))
        else:
            node["inputs"]["alpha"] = float(alpha)
            if node["class_type"] == NASA_ADVANCED:
                node["inputs"]["method"] = "nasa"
    p[save_id] = {"class_type": OUTPUT_CLASS, "_meta": {"title": "NASA evaluation image"},
                  "inputs": {"images": [roles.image, 0], "filename_prefix": save_id}}
    return p


MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def model_file(prompt: dict, sampler: str) -> Tuple[str, str]:
    """(node id, input name) of the model file the sampler's model comes from: the loader at the top of its
    ``model`` path (the node with no model input of its own: CheckpointLoaderSimple, UNETLoader, a GGUF loader),
    and its one input holding a file name."""
    top = [nid for nid in _upstream(prompt, sampler, lambda nid, n: ["model"])
           if not _is_link(prompt[nid]["inputs"].get("model"))]
    if len(top) != 1:
        raise GraphError(f"evaluation: cannot tell which node loads the model of {_label(prompt, sampler)} "
                         f"({len(top)} candidates)")
    files = [name for name, v in prompt[top[0]]["inputs"].items()
             if isinstance(v, str) and v.lower().endswith(MODEL_FILE_SUFFIXES)]
    if len(files) != 1:
        raise GraphError(f"evaluation: {_label(prompt, top[0])} loads the model, but has {len(files)} model-file "
                         f"inputs ({', '.join(files) or 'none'}); set its file with --set NODE.INPUT=FILE instead")
    return top[0], files[0]


def describe(prompt: dict, roles: Roles) -> Dict[str, str]:
    """What the harness found, for its log."""
    return {"sampler": _label(prompt, roles.sampler), "seed": f"{_label(prompt, roles.seed[0])}.{roles.seed[1]}",
            "positive": f"{_label(prompt, roles.positive_text[0])}.{roles.positive_text[1]}",
            "negative": f"{_label(prompt, roles.negative_text[0])}.{roles.negative_text[1]}",
            "nasa": _label(prompt, roles.nasa) if roles.nasa else "none", "image": _label(prompt, roles.image)}
