"""Workflow files for the headless runner: read them, convert the UI format to the API format,
apply ``--set`` overrides and swap checkpoint loaders.

ComfyUI's frontend saves the *UI format* (``{"nodes": [...], "links": [...]}``, widget values stored
positionally in ``widgets_values``); ComfyUI's executor runs the *API format*
(``{"<id>": {"class_type": ..., "inputs": {...}}}``). The conversion is done by the frontend in
JavaScript and ComfyUI ships no Python version of it, so this module re-implements the part of it
the runner needs, reading each node's input definitions from ComfyUI's own registry
(``nodes.NODE_CLASS_MAPPINGS[cls].INPUT_TYPES()``).

Nothing here imports ComfyUI: the functions take the class mapping as an argument.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union


class WorkflowError(Exception):
    """A problem with the workflow file or with the command line (reported without a traceback, exit 2)."""


# --- reading ------------------------------------------------------------------------------------

def load_workflow(source: Union[dict, str, Path]) -> dict:
    """The workflow as a dict, from a dict, a path, or a JSON string."""
    if isinstance(source, dict):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source).expanduser()
        if not path.is_file():
            raise WorkflowError(f"workflow file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise WorkflowError(f"cannot read workflow file {path}: {e}") from None
        where = str(path)
    else:
        text, where = source, "workflow string"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{where}: expected a JSON object (a ComfyUI workflow), got {type(data).__name__}")
    return data


def workflow_format(data: dict) -> str:
    """'ui' (saved by the frontend), 'api' (``Export (API)``) or 'api-request' (a /prompt request body)."""
    if isinstance(data.get("nodes"), list):
        return "ui"
    if isinstance(data.get("prompt"), dict) and all(isinstance(v, dict) for v in data["prompt"].values()):
        return "api-request"
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    raise WorkflowError("this is not a ComfyUI workflow: expected either the UI format (a 'nodes' list and "
                        "'links'), or the API format ({\"<id>\": {\"class_type\": ..., \"inputs\": {...}}})")


# --- node definitions ----------------------------------------------------------------------------

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "DYNAMIC_COMBO")
DYNAMIC_COMBO_TYPES = ("COMFY_DYNAMICCOMBO_V3",)   # V3 DynamicCombo: a combo whose choice brings its own inputs
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "model_upload", "file_upload")
UPLOAD_VALUES = ("image", "video", "audio", "upload", "file", "model", "", None)
SEED_NAMES = ("seed", "noise_seed")


@dataclass
class WidgetSpec:
    name: str
    type: str            # INT, FLOAT, STRING, BOOLEAN, COMBO or DYNAMIC_COMBO
    optional: bool
    control: bool        # the frontend stores a control_after_generate value after it
    filter_list: bool    # ... and, for a COMBO with control, a control_filter_list value
    upload: bool         # an upload button whose value ("image") is stored too
    options: Optional[dict] = None   # DYNAMIC_COMBO: choice -> its inputs ({"required": ..., "optional": ...})

    def chosen(self, value, node_id, class_type) -> list:
        """The widgets a DYNAMIC_COMBO's choice ``value`` adds right after it, named ``<name>.<input>`` as
        ComfyUI's V3 schema names them (their values follow the combo's in ``widgets_values``)."""
        if value not in self.options:
            raise WorkflowError(f"node {node_id} ({class_type}): '{self.name}' is {value!r}; this ComfyUI offers "
                                f"{', '.join(map(repr, self.options))}. Open the workflow in ComfyUI and save it again.")
        return _specs(_input_entries(self.options[value]), f"{self.name}.")

    def extras(self) -> int:
        return int(self.control) + int(self.filter_list) + int(self.upload)

    def describe(self) -> str:
        extra = []
        if self.control:
            extra.append("control_after_generate")
        if self.filter_list:
            extra.append("control_filter_list")
        if self.upload:
            extra.append("upload")
        return self.name + "".join(f", [{e}]" for e in extra)


def _type_name(t) -> Optional[str]:
    if isinstance(t, (list, tuple)):
        return "COMBO"
    if isinstance(t, str):
        t = str.__str__(t) if type(t) is not str else t
        return "DYNAMIC_COMBO" if t in DYNAMIC_COMBO_TYPES else t
    return None


def _input_entries(spec: dict) -> list[tuple[str, str, Any, dict]]:
    out = []
    for category in ("required", "optional"):
        for name, info in ((spec or {}).get(category) or {}).items():
            if not isinstance(info, (list, tuple)) or not info:
                continue
            opts = info[1] if len(info) > 1 and isinstance(info[1], dict) else {}
            out.append((name, category, info[0], opts))
    return out


def input_definitions(class_def) -> list[tuple[str, str, Any, dict]]:
    """(name, 'required'/'optional', raw type, options) for every input, in definition order."""
    try:
        spec = class_def.INPUT_TYPES()
    except Exception as e:  # a broken custom node: report, do not crash
        raise WorkflowError(f"{getattr(class_def, '__name__', class_def)}.INPUT_TYPES() failed: {e}") from None
    return _input_entries(spec)


def _specs(entries, prefix: str = "") -> list[WidgetSpec]:
    specs = []
    for name, category, raw_type, opts in entries:
        t = _type_name(raw_type)
        if t not in WIDGET_TYPES and opts.get("widgetType") in WIDGET_TYPES:   # a V3 MultiType input ("FLOAT,INT")
            t = opts["widgetType"]                                             # gets its first type's widget
        if t not in WIDGET_TYPES or opts.get("forceInput") or opts.get("hidden"):
            continue
        control = opts.get("control_after_generate")
        if control is None:
            control = t == "INT" and name in SEED_NAMES
        control = bool(control) and t in ("INT", "FLOAT", "COMBO")
        upload = any(opts.get(flag) for flag in UPLOAD_FLAGS)
        options = {o["key"]: o.get("inputs") or {} for o in opts.get("options") or []} if t == "DYNAMIC_COMBO" else None
        specs.append(WidgetSpec(name=prefix + name, type=t, optional=category == "optional", control=control,
                                filter_list=control and t == "COMBO", upload=upload, options=options))
    return specs


def widget_specs(class_def) -> list[WidgetSpec]:
    """The widgets the frontend creates for a node class, in the order of ``widgets_values`` (a V3
    DynamicCombo's chosen inputs follow it: :meth:`WidgetSpec.chosen`)."""
    return _specs(input_definitions(class_def))


def input_names(class_def) -> list[str]:
    return [name for name, *_ in input_definitions(class_def)]


def _widget_error(node_id, class_type, specs: list[WidgetSpec], values, why: str) -> WorkflowError:
    expected = "; ".join(s.describe() for s in specs) or "(none)"
    return WorkflowError(
        f"node {node_id} ({class_type}): {why}. widgets_values = {json.dumps(values)[:300]}; this ComfyUI's "
        f"{class_type} expects the widgets: {expected} (values in [] are frontend-only extras). The workflow "
        f"was probably saved with a different version of this node: open it in ComfyUI and save it again.")


def map_widget_values(node_id, class_type, specs: list[WidgetSpec], values) -> dict:
    """{widget name: value} from a node's ``widgets_values`` (list, or dict keyed by widget name)."""
    if values is None:
        values = []
    if isinstance(values, dict):
        out, queue = {}, list(specs)
        while queue:
            spec = queue.pop(0)
            if spec.name in values:
                out[spec.name] = values[spec.name]
                if spec.options is not None:
                    queue[:0] = spec.chosen(values[spec.name], node_id, class_type)
        return out
    if not isinstance(values, list):
        raise _widget_error(node_id, class_type, specs, values, "widgets_values is neither a list nor an object")
    n_full = len(specs) + sum(s.extras() for s in specs)
    exact = len(values) == n_full  # every frontend extra is stored: consume them by position
    out, i, queue = {}, 0, list(specs)
    while queue:
        spec = queue.pop(0)
        if i >= len(values):
            if spec.optional and all(s.optional for s in queue):
                break  # trailing optional widgets missing: the node's defaults apply
            raise _widget_error(node_id, class_type, specs, values,
                                f"widgets_values has {len(values)} values, too few (no value for '{spec.name}')")
        out[spec.name] = values[i]
        i += 1
        if spec.options is not None:        # a DynamicCombo: its choice's widgets come next
            queue[:0] = spec.chosen(values[i - 1], node_id, class_type)
        remaining_plain = len(queue)

        def can_skip():
            return i < len(values) and len(values) - i > remaining_plain

        if spec.control and (exact or (can_skip() and values[i] in CONTROL_VALUES)):
            i += 1
            if spec.filter_list and (exact or (can_skip() and isinstance(values[i], str))):
                i += 1
        if spec.upload and (exact or (can_skip() and values[i] in UPLOAD_VALUES)):
            i += 1
    # Older frontends put an image-upload button's value after all the widgets.
    while i < len(values) and any(s.upload for s in specs) and values[i] in UPLOAD_VALUES:
        i += 1
    if i != len(values):
        raise _widget_error(node_id, class_type, specs, values,
                            f"widgets_values has {len(values)} values, {len(values) - i} more than the widgets")
    return out


# --- UI -> API -------------------------------------------------------------------------------------

NOTE_TYPES = ("Note", "MarkdownNote")
REROUTE_TYPES = ("Reroute",)
PRIMITIVE_TYPES = ("PrimitiveNode",)
MODE_MUTED = 2
MODE_BYPASSED = 4


@dataclass
class _Link:
    id: Any
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any


def _parse_links(raw) -> dict:
    links = {}
    for entry in raw or []:
        if isinstance(entry, (list, tuple)) and len(entry) >= 5:
            lid, o, os_, t, ts = entry[:5]
            typ = entry[5] if len(entry) > 5 else None
        elif isinstance(entry, dict):
            lid, o, os_ = entry.get("id"), entry.get("origin_id"), entry.get("origin_slot")
            t, ts, typ = entry.get("target_id"), entry.get("target_slot"), entry.get("type")
        else:
            continue
        links[lid] = _Link(lid, str(o), int(os_ or 0), str(t), int(ts or 0), typ)
    return links


def _check_no_subgraphs(wf: dict) -> None:
    subgraphs = ((wf.get("definitions") or {}).get("subgraphs") or [])
    sub_ids = {str(s.get("id")): s.get("name") or s.get("id") for s in subgraphs if isinstance(s, dict)}
    group_nodes = ((wf.get("extra") or {}).get("groupNodes") or {})
    for node in wf.get("nodes") or []:
        t = str(node.get("type"))
        if t in sub_ids:
            raise WorkflowError(
                f"node {node.get('id')} is a subgraph ('{sub_ids[t]}'): subgraphs are not supported by the headless "
                f"runner. In ComfyUI, right-click the node and choose 'Unpack Subgraph', then save the workflow again.")
        if t.startswith("workflow>") or t.startswith("workflow/") or t in group_nodes:
            raise WorkflowError(
                f"node {node.get('id')} is a group node ('{t}'): group nodes are not supported by the headless "
                f"runner. In ComfyUI, right-click it and choose 'Convert to nodes', then save the workflow again.")
    if sub_ids:
        raise WorkflowError("the workflow defines subgraphs (definitions.subgraphs): subgraphs are not supported "
                            "by the headless runner; unpack them in ComfyUI and save the workflow again.")


def ui_to_api(workflow: dict, class_mappings: Mapping[str, Any],
              display_names: Optional[Mapping[str, str]] = None) -> dict:
    """Convert a workflow in the frontend's UI format to the API format the executor runs.

    Rules (those of the frontend's graphToPrompt):
    - Note / MarkdownNote: dropped. Reroute: links through it are followed to the real source.
      PrimitiveNode: dropped; the value it feeds is already in the target's ``widgets_values``.
    - mode 2 (muted): the node is dropped and links from it vanish. mode 4 (bypassed): the node is
      dropped and each of its outputs is replaced by its input of the same type (the input at the
      same slot index when its type matches, else the first input of that type).
    - widget inputs come from ``widgets_values`` in definition order (required, then optional),
      skipping the frontend-only control_after_generate / control_filter_list / upload values;
      a widget input that is linked (``inputs[].widget`` with a link) takes the link instead.
    - subgraphs and group nodes are refused with a clear error.
    """
    display_names = display_names or {}
    _check_no_subgraphs(workflow)
    nodes_by_id = {}
    for node in workflow.get("nodes") or []:
        if not isinstance(node, dict) or "id" not in node:
            raise WorkflowError("malformed UI workflow: a node without an 'id'")
        nodes_by_id[str(node["id"])] = node
    links = _parse_links(workflow.get("links"))

    def mode(node) -> int:
        try:
            return int(node.get("mode") or 0)
        except (TypeError, ValueError):
            return 0

    def resolve(link_id, depth=0):
        """The real (origin id, slot) behind a link, or ('primitive', None) / None (no source)."""
        if link_id is None or depth > 1000:
            return None
        link = links.get(link_id)
        if link is None:
            return None
        origin = nodes_by_id.get(link.origin)
        if origin is None:
            return None
        otype = origin.get("type")
        if otype in PRIMITIVE_TYPES:
            return ("primitive", None)
        if otype in REROUTE_TYPES:
            ins = origin.get("inputs") or []
            return resolve(ins[0].get("link") if ins else None, depth + 1)
        m = mode(origin)
        if m == MODE_MUTED:
            return None
        if m == MODE_BYPASSED:
            out_type = link.type
            outs = origin.get("outputs") or []
            if out_type in (None, "*") and link.origin_slot < len(outs):
                out_type = outs[link.origin_slot].get("type")
            ins = origin.get("inputs") or []
            pick = None
            if link.origin_slot < len(ins) and ins[link.origin_slot].get("type") == out_type:
                pick = ins[link.origin_slot]
            else:
                pick = next((inp for inp in ins if inp.get("type") == out_type), None)
            return resolve(pick.get("link"), depth + 1) if pick else None
        return (link.origin, link.origin_slot)

    prompt = {}
    for node_id, node in nodes_by_id.items():
        ctype = node.get("type")
        if ctype in NOTE_TYPES or ctype in REROUTE_TYPES or ctype in PRIMITIVE_TYPES:
            continue
        if mode(node) in (MODE_MUTED, MODE_BYPASSED):
            continue
        class_def = class_mappings.get(ctype)
        if class_def is None:
            raise WorkflowError(f"node {node_id} has type '{ctype}', which this ComfyUI does not know: a custom "
                                f"node pack that is not installed (or failed to import), or a frontend-only node.")
        specs = widget_specs(class_def)
        inputs = dict(map_widget_values(node_id, ctype, specs, node.get("widgets_values")))
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            src = resolve(inp.get("link"))
            if src is None or src[0] == "primitive":
                continue  # unconnected, or a PrimitiveNode whose value is already in widgets_values
            inputs[name] = [src[0], src[1]]
        title = node.get("title") or display_names.get(ctype) or ctype
        prompt[node_id] = {"inputs": inputs, "class_type": ctype, "_meta": {"title": title}}
    return prompt


def to_api(data: dict, class_mappings: Mapping[str, Any],
           display_names: Optional[Mapping[str, str]] = None) -> tuple[dict, str]:
    """(API prompt, format) for a workflow in either format. The prompt is a fresh copy."""
    fmt = workflow_format(data)
    if fmt == "ui":
        return ui_to_api(data, class_mappings, display_names), fmt
    prompt = copy.deepcopy(data["prompt"] if fmt == "api-request" else data)
    for node_id, node in prompt.items():
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"node {node_id}: 'inputs' must be an object")
        node.setdefault("inputs", {})
    return {str(k): v for k, v in prompt.items()}, fmt


# --- --set ----------------------------------------------------------------------------------------

def parse_set(item: str) -> tuple[str, str, Any]:
    """'NODE.INPUT=VALUE' -> (node, input, value); VALUE is JSON when it parses, else a string."""
    if "=" not in item:
        raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE (e.g. --set 3.seed=7, --set KSampler.steps=4)")
    target, raw = item.split("=", 1)
    if "." not in target:
        raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE, the '.INPUT' part is missing")
    node, name = target.rsplit(".", 1)
    node, name = node.strip(), name.strip()
    if not node or not name:
        raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return node, name, value


def _node_label(node_id, node) -> str:
    title = (node.get("_meta") or {}).get("title")
    label = f"{node_id} ({node.get('class_type')}"
    if title and title != node.get("class_type"):
        label += f", '{title}'"
    return label + ")"


def find_node(prompt: dict, key: str) -> str:
    """The id of the node ``key`` names: a node id, a node title, or a class_type used by one node."""
    if key in prompt:
        return key

    def by(pred):
        return [nid for nid, n in prompt.items() if pred(n)]

    title = lambda n: (n.get("_meta") or {}).get("title") or ""  # noqa: E731
    for matches, what in ((by(lambda n: title(n) == key), "title"),
                          (by(lambda n: title(n).lower() == key.lower()), "title"),
                          (by(lambda n: n.get("class_type") == key), "class")):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise WorkflowError(f"--set: '{key}' matches several nodes by {what}: "
                                + ", ".join(_node_label(m, prompt[m]) for m in matches) + "; use a node id")
    listing = ", ".join(_node_label(nid, n) for nid, n in prompt.items())
    raise WorkflowError(f"--set: no node '{key}' (by id, title or class). Nodes: {listing}")


def apply_sets(prompt: dict, sets: Iterable[str], class_mappings: Mapping[str, Any]) -> list[str]:
    """Apply ``--set`` overrides in place; returns a description of each."""
    done = []
    for item in sets or ():
        key, name, value = parse_set(item)
        node_id = find_node(prompt, key)
        node = prompt[node_id]
        class_def = class_mappings.get(node.get("class_type"))
        known = input_names(class_def) if class_def is not None else list(node.get("inputs", {}))
        if name not in known and name not in node.get("inputs", {}):
            widgets = [s.name for s in widget_specs(class_def)] if class_def is not None else known
            raise WorkflowError(f"--set {item!r}: node {_node_label(node_id, node)} has no input '{name}'. "
                                f"Its inputs: {', '.join(known) or '(none)'}; settable values: "
                                f"{', '.join(widgets) or '(none)'}")
        old = node["inputs"].get(name, "<unset>")
        node["inputs"][name] = value
        was = " (was a link)" if isinstance(old, list) and len(old) == 2 and isinstance(old[0], str) else ""
        done.append(f"node {_node_label(node_id, node)}: {name} = {json.dumps(value)}{was}")
    return done


# --- random weights --------------------------------------------------------------------------------

CHECKPOINT_LOADERS = ("CheckpointLoaderSimple",)
MODEL_LOADERS = ("UNETLoader",)
CLIP_LOADERS = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader",   # the last: HiDream, no type
                "LTXAVTextEncoderLoader")   # LTX-2: Gemma 3 12B + the checkpoint's text projection, no type
VAE_LOADERS = ("VAELoader",)
AUDIO_VAE_LOADERS = ("LTXVAudioVAELoader",)   # LTX-2: the audio VAE inside the checkpoint
LORA_LOADERS = ("LoraLoaderModelOnly",)


def parse_random_weights(spec: str, families: Iterable[str], sizes: Iterable[str]) -> tuple[str, str]:
    families, sizes = tuple(families), tuple(sizes)
    family, _, size = spec.partition(":")
    family, size = family.strip(), (size.strip() or "tiny")
    if family not in families:
        raise WorkflowError(f"--random-weights {spec!r}: unknown family '{family}'; choose one of {', '.join(families)}")
    if size not in sizes:
        raise WorkflowError(f"--random-weights {spec!r}: unknown size '{size}'; choose one of {', '.join(sizes)}")
    return family, size


def loaded_files(node: dict) -> list:
    """The file names a loader node reads (ckpt_name, unet_name, clip_name1, vae_name, lora_name, ...)."""
    return [v for k, v in node.get("inputs", {}).items() if "_name" in k and isinstance(v, str)]


def check_clip_loader_types(prompt: dict, accepted: Iterable[tuple], spec: str, what: str) -> None:
    """Every text-encoder loader must be one a real ``what`` workflow uses: ``accepted`` holds
    (class_type, its ``type`` input or None)."""
    accepted = tuple(accepted)
    for node_id, node in prompt.items():
        ctype = node.get("class_type")
        if ctype in CLIP_LOADERS and (ctype, node["inputs"].get("type")) not in accepted:
            expected = " or ".join(c + (f" with type '{t}'" if t else "") for c, t in accepted)
            raise WorkflowError(
                f"--random-weights {spec}: node {_node_label(node_id, node)} loads a text encoder with type "
                f"{node['inputs'].get('type')!r}, but {what} workflows use {expected}. Pick the --random-weights "
                f"family of this workflow's model, or set the loader's type (--set {node_id}.type=...).")


def swap_nodes(prompt: dict, class_types: Iterable[str], new_class: str, inputs) -> list[str]:
    """Replace every node whose class is one of ``class_types`` by ``new_class`` (in place); ``inputs``
    is the new node's inputs, or a function of the old node that returns them. Returns the ids."""
    class_types = tuple(class_types)
    swapped = []
    for node_id, node in prompt.items():
        if node.get("class_type") in class_types:
            title = (node.get("_meta") or {}).get("title")
            node["inputs"] = inputs(node) if callable(inputs) else dict(inputs)
            node["class_type"] = new_class
            node["_meta"] = {"title": f"{title or new_class} (random weights)"}
            swapped.append(node_id)
    return swapped
