"""The headless runner: UI -> API conversion, --set, validation and execution of the example
workflows through ComfyUI's own executor (random weights, tiny models, 64x64 images)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nasa_test_support as support

PACK_ROOT = Path(__file__).resolve().parents[2]

wf_mod = importlib.import_module("nasa_runner.workflow")
WorkflowError = wf_mod.WorkflowError
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
WORKFLOW_FAMILY = {"sd15_1step_nasa.json": "sd15", "sdxl_dmd2_1step_nasa.json": "sdxl", "sdxl_4step_nasa.json": "sdxl",
                   "sd15_1step_two_negatives.json": "sd15", "sd15_1step_masked_negative.json": "sd15",
                   "sdxl_4step_schedule.json": "sdxl", "sd15_1step_alpha_grid.json": "sd15"}
NASA_APPLIERS = {"NASAApplyAttention", "NASAApplyAttentionAdvanced", "NASAAlphaGrid"}
SMALL = ["EmptyLatentImage.width=64", "EmptyLatentImage.height=64"]


@pytest.fixture(scope="module")
def cli(comfy):
    return importlib.import_module("nasa_runner.cli")


def load(name):
    return json.loads((PACK_ROOT / "workflows" / name).read_text())


def convert(comfy, wf):
    return wf_mod.ui_to_api(wf, comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)


def by_class(prompt, cls):
    return {k: v for k, v in prompt.items() if v["class_type"] == cls}


# --- a tiny UI-graph builder for synthetic cases -------------------------------------------------------

class G:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, nid, ctype, inputs=(), outputs=(), widgets=None, mode=0, title=None):
        n = {"id": nid, "type": ctype, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": 0, "mode": mode,
             "inputs": [dict(name=name, type=t, link=None, **({"widget": {"name": name}} if w else {}))
                        for name, t, *rest in inputs for w in [bool(rest and rest[0])]],
             "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
             "properties": {"Node name for S&R": ctype}}
        if widgets is not None:
            n["widgets_values"] = widgets
        if title:
            n["title"] = title
        self.nodes.append(n)
        return self

    def link(self, src, slot, dst, input_name):
        lid = max((lk[0] for lk in self.links), default=0) + 1
        s = next(n for n in self.nodes if n["id"] == src)
        d = next(n for n in self.nodes if n["id"] == dst)
        idx = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        d["inputs"][idx]["link"] = lid
        s["outputs"][slot]["links"].append(lid)
        self.links.append([lid, src, slot, dst, idx, s["outputs"][slot]["type"]])
        return self

    def wf(self):
        return {"last_node_id": max(n["id"] for n in self.nodes),
                "last_link_id": max((lk[0] for lk in self.links), default=0),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


KS_IN = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")]
KS_W = [7, "randomize", 2, 1.0, "euler", "normal", 1.0]


def base_graph(model_via=None):
    """ckpt(1) -> KSampler(3) <- EmptyLatent(5); text encoders 6/7."""
    g = G()
    g.node(1, "CheckpointLoaderSimple", outputs=["MODEL", "CLIP", "VAE"], widgets=["x.safetensors"])
    g.node(6, "CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=["CONDITIONING"], widgets=["pos"])
    g.node(7, "CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=["CONDITIONING"], widgets=["neg"])
    g.node(5, "EmptyLatentImage", outputs=["LATENT"], widgets=[64, 64, 1])
    g.node(3, "KSampler", inputs=KS_IN + [("seed", "INT", True)], outputs=["LATENT"], widgets=list(KS_W))
    g.link(1, 1, 6, "clip").link(1, 1, 7, "clip").link(6, 0, 3, "positive").link(7, 0, 3, "negative")
    g.link(5, 0, 3, "latent_image")
    return g


# --- the example workflows -------------------------------------------------------------------------------

def test_example_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= set(WORKFLOW_FAMILY)


@pytest.mark.parametrize("name", sorted(WORKFLOW_FAMILY))
def test_example_workflow_is_consistent_ui_format(name):
    wf = load(name)
    support.check_ui_workflow(wf)
    assert any(n["type"] == "Note" and "cfg" in n["widgets_values"][0] for n in wf["nodes"])


def test_convert_sd15(comfy):
    p = convert(comfy, load("sd15_1step_nasa.json"))
    assert sorted(v["class_type"] for v in p.values()) == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "NASAApplyAttention", "KSampler",
         "EmptyLatentImage", "VAEDecode", "SaveImage"])  # the Note is gone
    ks = p["3"]["inputs"]
    assert ks == {"seed": 42, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "sgm_uniform",
                  "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
                  "latent_image": ["5", 0]}  # "fixed" (control_after_generate) skipped
    assert p["4"]["inputs"] == {"ckpt_name": "swiftbrushv2_sd15.safetensors"}
    assert p["10"]["inputs"] == {"model": ["4", 0], "alpha": 0.1, "use_sampler_negative": True}
    assert p["6"]["inputs"] == {"clip": ["4", 1], "text": "a portrait photo of a man, studio lighting"}
    assert p["7"]["inputs"] == {"clip": ["4", 1], "text": "glasses"}
    assert p["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert p["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert p["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "nasa_sd15_1step"}
    assert p["10"]["_meta"]["title"] == "Apply NASA Attention" and p["6"]["_meta"]["title"] == "Positive Prompt"


def test_convert_sdxl_dmd2_1step(comfy):
    p = convert(comfy, load("sdxl_dmd2_1step_nasa.json"))
    ks = next(iter(by_class(p, "KSampler").values()))["inputs"]
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"]) == (42, 1, 1.0, "lcm", "sgm_uniform")
    assert next(iter(by_class(p, "CheckpointLoaderSimple").values()))["inputs"]["ckpt_name"] == "dmd2_sdxl_1step.safetensors"
    assert next(iter(by_class(p, "EmptyLatentImage").values()))["inputs"] == {"width": 1024, "height": 1024, "batch_size": 1}
    nasa = next(iter(by_class(p, "NASAApplyAttention").values()))["inputs"]
    assert nasa["alpha"] == 0.5 and nasa["use_sampler_negative"] is True


def test_convert_sdxl_4step_per_prompt_negative(comfy):
    p = convert(comfy, load("sdxl_4step_nasa.json"))
    (neg_id, neg), = by_class(p, "NASANegativeConditioning").items()
    texts = {k: v["inputs"]["text"] for k, v in by_class(p, "CLIPTextEncode").items()}
    pos_id = next(k for k, t in texts.items() if "living room" in t)
    negtext_id = next(k for k, t in texts.items() if t == "plants")
    assert neg["inputs"] == {"conditioning": [pos_id, 0], "negative": [negtext_id, 0], "alpha": -1.0}
    ks = next(iter(by_class(p, "KSampler").values()))["inputs"]
    assert ks["positive"] == [neg_id, 0] and ks["negative"] == [negtext_id, 0]
    assert (ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"]) == (4, 1.0, "lcm", "sgm_uniform")
    nasa_id = next(iter(by_class(p, "NASAApplyAttention")))
    assert ks["model"] == [nasa_id, 0]


@pytest.mark.parametrize("name", sorted(WORKFLOW_FAMILY))
def test_example_workflows_validate_with_random_weights(comfy, cli, name):
    import asyncio
    import execution
    p = convert(comfy, load(name))
    cli.apply_random_weights(comfy.nodes, p, WORKFLOW_FAMILY[name], cli.Report(True))
    ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt("t", p, None))
    assert ok and not node_errors, (err, node_errors)
    assert [p[o]["class_type"] for o in outputs] == ["SaveImage"]


# --- synthetic graphs: frontend-only nodes, modes, widgets ------------------------------------------------

def test_reroute_is_followed(comfy):
    g = base_graph()
    g.node(20, "Reroute", inputs=[("", "*")], outputs=["MODEL"]).node(21, "Reroute", inputs=[("", "*")], outputs=["MODEL"])
    g.link(1, 0, 20, "").link(20, 0, 21, "").link(21, 0, 3, "model")
    p = convert(comfy, g.wf())
    assert "20" not in p and "21" not in p and p["3"]["inputs"]["model"] == ["1", 0]


def test_primitive_node_value_comes_from_target_widget(comfy):
    g = base_graph()
    g.node(20, "PrimitiveNode", outputs=["INT"], widgets=[7, "fixed"])
    g.link(20, 0, 3, "seed")
    p = convert(comfy, g.wf())
    assert "20" not in p and p["3"]["inputs"]["seed"] == 7


def test_linked_widget_input_takes_the_link(comfy):
    g = base_graph()
    g.node(20, "PrimitiveInt", inputs=[("value", "INT", True)], outputs=["INT"], widgets=[99, "fixed"])
    g.link(20, 0, 3, "seed")
    p = convert(comfy, g.wf())
    assert p["3"]["inputs"]["seed"] == ["20", 0] and p["20"]["inputs"] == {"value": 99}


def test_notes_are_dropped(comfy):
    g = base_graph()
    g.node(30, "Note", widgets=["hello"]).node(31, "MarkdownNote", widgets=["# hi"])
    p = convert(comfy, g.wf())
    assert "30" not in p and "31" not in p


def test_muted_node_is_dropped_with_its_links(comfy):
    g = base_graph()
    g.node(10, "NASAApplyAttention", inputs=[("model", "MODEL"), ("negative", "CONDITIONING")],
           outputs=["MODEL"], widgets=[0.1, True], mode=2)
    g.link(1, 0, 10, "model").link(10, 0, 3, "model")
    p = convert(comfy, g.wf())
    assert "10" not in p and "model" not in p["3"]["inputs"]


def test_bypassed_node_passes_its_input_through(comfy):
    g = base_graph()
    g.node(10, "NASAApplyAttention", inputs=[("model", "MODEL"), ("negative", "CONDITIONING")],
           outputs=["MODEL"], widgets=[0.1, True], mode=4)
    g.node(11, "NASANegativeConditioning", inputs=[("conditioning", "CONDITIONING"), ("negative", "CONDITIONING")],
           outputs=["CONDITIONING"], widgets=[-1.0], mode=4)
    g.link(1, 0, 10, "model").link(7, 0, 10, "negative").link(10, 0, 3, "model")
    # positive goes through the bypassed per-prompt node: its first CONDITIONING input is used
    g.links = [lk for lk in g.links if not (lk[3] == 3 and lk[1] == 6)]
    g.link(6, 0, 11, "conditioning").link(7, 0, 11, "negative").link(11, 0, 3, "positive")
    p = convert(comfy, g.wf())
    assert "10" not in p and "11" not in p
    assert p["3"]["inputs"]["model"] == ["1", 0]  # MODEL output -> the MODEL input, not the CONDITIONING one
    assert p["3"]["inputs"]["positive"] == ["6", 0]


def test_bypassed_node_without_matching_input_drops_the_link(comfy):
    g = base_graph()
    g.node(8, "VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=["IMAGE"], mode=4)
    g.node(9, "SaveImage", inputs=[("images", "IMAGE")], widgets=["x"])
    g.link(3, 0, 8, "samples").link(1, 2, 8, "vae").link(8, 0, 9, "images")
    p = convert(comfy, g.wf())
    assert p["9"]["inputs"] == {"filename_prefix": "x"}


def test_seed_without_control_value_is_accepted(comfy):
    g = base_graph()
    g.nodes[4]["widgets_values"] = [7, 2, 1.0, "euler", "normal", 1.0]  # saved without "randomize"
    p = convert(comfy, g.wf())
    assert p["3"]["inputs"]["seed"] == 7 and p["3"]["inputs"]["steps"] == 2


def test_widget_count_mismatch_is_a_clear_error(comfy):
    g = base_graph()
    g.nodes[4]["widgets_values"] = [7, "randomize", 2, 1.0]
    with pytest.raises(WorkflowError) as e:
        convert(comfy, g.wf())
    msg = str(e.value)
    assert "node 3 (KSampler)" in msg and "too few" in msg
    for name in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"):
        assert name in msg
    g.nodes[4]["widgets_values"] = list(KS_W) + [1, 2]
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\).*more than the widgets"):
        convert(comfy, g.wf())


def test_combo_control_and_upload_extras_are_skipped(comfy):
    S = wf_mod.WidgetSpec
    specs = [S("pick", "COMBO", False, True, True, False), S("n", "INT", False, False, False, False)]
    assert wf_mod.map_widget_values(1, "X", specs, ["a", "fixed", "", 3]) == {"pick": "a", "n": 3}
    assert wf_mod.map_widget_values(1, "X", specs, ["a", 3]) == {"pick": "a", "n": 3}
    load_image = wf_mod.widget_specs(comfy.nodes.NODE_CLASS_MAPPINGS["LoadImage"])
    assert [s.name for s in load_image] == ["image"] and load_image[0].upload
    assert wf_mod.map_widget_values(1, "LoadImage", load_image, ["x.png", "image"]) == {"image": "x.png"}


def test_dynamic_combo_widgets_follow_their_choice(comfy):
    """SaveVideo's format/codec: plain combos in 0.3.64, V3 DynamicCombos in 0.33 whose choice brings nested
    widgets named '<combo>.<input>'. The same saved values convert on both, and ComfyUI validates the result."""
    import asyncio

    import execution
    save_video = comfy.nodes.NODE_CLASS_MAPPINGS["SaveVideo"]
    specs = wf_mod.widget_specs(save_video)
    got = wf_mod.map_widget_values(14, "SaveVideo", specs, ["video/x", "auto", "auto"])
    if any(s.type == "DYNAMIC_COMBO" for s in specs):
        assert got == {"filename_prefix": "video/x", "format": "auto", "format.codec": "auto"}
        deep = wf_mod.map_widget_values(14, "SaveVideo", specs, ["video/x", "mp4", "h264", "re-encode", 20.0, "sRGB"])
        assert deep == {"filename_prefix": "video/x", "format": "mp4", "format.codec": "h264",
                        "format.codec.encoding": "re-encode", "format.codec.encoding.crf": 20.0,
                        "format.codec.encoding.color_space": "sRGB"}
        with pytest.raises(WorkflowError, match=r"node 14 \(SaveVideo\): 'format' is 'gif'; this ComfyUI offers"):
            wf_mod.map_widget_values(14, "SaveVideo", specs, ["video/x", "gif", "auto"])
    else:
        assert got == {"filename_prefix": "video/x", "format": "auto", "codec": "auto"}
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
              "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
              "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], **got}}}
    valid = asyncio.run(execution.validate_prompt("dyn", prompt, None))
    assert valid[0] and not valid[3], valid


def test_optional_widget_and_definition_order(comfy):
    specs = wf_mod.widget_specs(comfy.nodes.NODE_CLASS_MAPPINGS["NASAApplyAttention"])
    assert [s.name for s in specs] == ["alpha", "use_sampler_negative"]
    specs = wf_mod.widget_specs(comfy.nodes.NODE_CLASS_MAPPINGS["NASANegativeConditioning"])
    assert [(s.name, s.optional) for s in specs] == [("alpha", True)]
    ks = wf_mod.widget_specs(comfy.nodes.NODE_CLASS_MAPPINGS["KSampler"])
    assert [s.name for s in ks if s.control] == ["seed"]


def test_unknown_node_type(comfy):
    g = base_graph().node(40, "SomeCustomNodeThatIsNotInstalled", widgets=[])
    with pytest.raises(WorkflowError, match="node 40 has type 'SomeCustomNodeThatIsNotInstalled'"):
        convert(comfy, g.wf())
    g.nodes[-1]["mode"] = 2  # muted: ignored, like the frontend does
    assert "40" not in convert(comfy, g.wf())


def test_subgraphs_and_group_nodes_are_refused(comfy):
    g = base_graph()
    wf = g.wf()
    sub = "a1b2c3d4-0000-4000-8000-000000000000"
    wf["definitions"] = {"subgraphs": [{"id": sub, "name": "My block", "nodes": [], "links": []}]}
    wf["nodes"].append({"id": 50, "type": sub, "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(WorkflowError, match=r"node 50 is a subgraph \('My block'\).*not supported by the headless runner"):
        convert(comfy, wf)
    wf = base_graph().wf()
    wf["extra"] = {"groupNodes": {"pair": {"nodes": []}}}
    wf["nodes"].append({"id": 51, "type": "workflow>pair", "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(WorkflowError, match="node 51 is a group node.*not supported by the headless runner"):
        convert(comfy, wf)


def test_format_detection_and_api_passthrough(comfy):
    api = convert(comfy, load("sd15_1step_nasa.json"))
    p, fmt = wf_mod.to_api(api, comfy.nodes.NODE_CLASS_MAPPINGS)
    assert fmt == "api" and p == api and p is not api
    p, fmt = wf_mod.to_api({"prompt": api, "client_id": "x"}, comfy.nodes.NODE_CLASS_MAPPINGS)
    assert fmt == "api-request" and p == api
    assert wf_mod.to_api(load("sd15_1step_nasa.json"), comfy.nodes.NODE_CLASS_MAPPINGS)[1] == "ui"
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        wf_mod.to_api({"foo": 1}, comfy.nodes.NODE_CLASS_MAPPINGS)
    with pytest.raises(WorkflowError, match="not valid JSON"):
        wf_mod.load_workflow("{nope")


# --- --set ----------------------------------------------------------------------------------------------

def test_set_by_id_title_and_class(comfy):
    p = convert(comfy, load("sd15_1step_nasa.json"))
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    notes = wf_mod.apply_sets(p, ["3.seed=7", "Positive Prompt.text=a cat", "negative prompt (nasa).text=hats",
                                  "KSampler.cfg=1.5", "Apply NASA Attention.use_sampler_negative=false",
                                  "EmptyLatentImage.width=64", 'Save Image.filename_prefix="42"',
                                  "NASAApplyAttention.alpha=0.3"], m)
    assert len(notes) == 8
    assert p["3"]["inputs"]["seed"] == 7 and p["3"]["inputs"]["cfg"] == 1.5
    assert p["6"]["inputs"]["text"] == "a cat" and p["7"]["inputs"]["text"] == "hats"
    assert p["10"]["inputs"]["use_sampler_negative"] is False and p["10"]["inputs"]["alpha"] == 0.3
    assert p["5"]["inputs"]["width"] == 64 and p["9"]["inputs"]["filename_prefix"] == "42"
    wf_mod.apply_sets(p, ["10.negative=[\"7\", 0]"], m)  # an optional input not in the prompt yet
    assert p["10"]["inputs"]["negative"] == ["7", 0]


def test_set_errors(comfy):
    p = convert(comfy, load("sd15_1step_nasa.json"))
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    with pytest.raises(WorkflowError, match=r"matches several nodes by class: 6 \(CLIPTextEncode.*7 \(CLIPTextEncode"):
        wf_mod.apply_sets(p, ["CLIPTextEncode.text=x"], m)
    with pytest.raises(WorkflowError) as e:
        wf_mod.apply_sets(p, ["Nope.text=x"], m)
    assert "no node 'Nope'" in str(e.value) and "3 (KSampler)" in str(e.value) and "'Positive Prompt'" in str(e.value)
    with pytest.raises(WorkflowError) as e:
        wf_mod.apply_sets(p, ["KSampler.sead=1"], m)
    assert "has no input 'sead'" in str(e.value) and "seed, steps, cfg" in str(e.value)
    for bad in ("3seed=1", "3.seed", "=1"):
        with pytest.raises(WorkflowError, match="NODE.INPUT=VALUE"):
            wf_mod.apply_sets(p, [bad], m)


# --- execution -------------------------------------------------------------------------------------------

def _png_text(path):
    from PIL import Image
    with Image.open(path) as im:
        return dict(im.text)


@pytest.mark.parametrize("name", sorted(WORKFLOW_FAMILY))
def test_run_example_workflow_random_weights(comfy, cli, tmp_path, name):
    r = cli.run_workflow(PACK_ROOT / "workflows" / name, SMALL, out_dir=tmp_path,
                         random_weights=f"{WORKFLOW_FAMILY[name]}:tiny")
    assert r.ok, r.error
    assert r.exit_code == 0 and len(r.images) == 1
    img = r.images[0]
    assert img.is_file() and img.parent == tmp_path.resolve()
    text = _png_text(img)
    assert json.loads(text["workflow"]) == load(name)
    embedded = json.loads(text["prompt"])
    assert embedded == r.prompt
    assert any(n["class_type"] in NASA_APPLIERS for n in embedded.values())
    assert any(n["class_type"] == "NASA_RandomWeightCheckpoint" for n in embedded.values())
    assert next(iter(by_class(embedded, "EmptyLatentImage").values()))["inputs"]["width"] == 64


def test_run_api_format_input(comfy, cli, tmp_path):
    api = convert(comfy, load("sd15_1step_nasa.json"))
    r = cli.run_workflow(json.dumps(api), SMALL + ["KSampler.seed=3"], out_dir=tmp_path, random_weights="sd15")
    assert r.ok, r.error
    text = _png_text(r.images[0])
    assert "prompt" in text and "workflow" not in text  # as ComfyUI: no UI workflow to embed
    assert json.loads(text["prompt"])["3"]["inputs"]["seed"] == 3


def test_run_validation_error(comfy, cli, tmp_path):
    r = cli.run_workflow(PACK_ROOT / "workflows" / "sd15_1step_nasa.json", SMALL + ["10.alpha=5.0"],
                         out_dir=tmp_path, random_weights="sd15")
    assert not r.ok and r.exit_code == 2 and "10" in r.node_errors
    assert "node 10 (NASAApplyAttention, 'Apply NASA Attention')" in r.error and "alpha" in r.error
    assert not list(tmp_path.iterdir())


def test_run_usage_errors(comfy, cli, tmp_path):
    wf = PACK_ROOT / "workflows" / "sd15_1step_nasa.json"
    r = cli.run_workflow(wf, SMALL, random_weights="sd3")
    assert r.exit_code == 2 and "unknown family 'sd3'" in r.error
    r = cli.run_workflow(tmp_path / "missing.json")
    assert r.exit_code == 2 and "not found" in r.error
    r = cli.run_workflow(wf, ["KSampler.nope=1"])
    assert r.exit_code == 2 and "has no input 'nope'" in r.error


def test_run_execution_error_names_the_node(comfy, cli, tmp_path):
    class Fails:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",)}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"

        def go(self, samples):
            raise ValueError("boom from the test node")

    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    mappings["NASATest_Fails"] = Fails
    try:
        api = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
               "2": {"class_type": "NASATest_Fails", "inputs": {"samples": ["1", 0]}}}
        r = cli.run_workflow(api, out_dir=tmp_path)
    finally:
        del mappings["NASATest_Fails"]
    assert not r.ok and r.exit_code == 1 and r.failed_node == "2"
    assert r.error.startswith("node 2 (NASATest_Fails) failed: ValueError: boom from the test node")


def test_progress_lines(comfy, cli, tmp_path, capsys):
    r = cli.run_workflow(PACK_ROOT / "workflows" / "sd15_1step_nasa.json", SMALL, out_dir=tmp_path,
                         random_weights="sd15", quiet=False)
    assert r.ok, r.error
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in err and "node 3 (KSampler): step 1/1" in err
    assert "node 10 (NASAApplyAttention): done in" in err and "node 9 (SaveImage): done in" in err


# --- the real command line ---------------------------------------------------------------------------------

def _cli(comfy, *args, cwd):
    env = dict(os.environ, COMFYUI_PATH=str(comfy.dir))
    return subprocess.run([sys.executable, str(PACK_ROOT / "scripts" / "nasa_run.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_subprocess_success(comfy, tmp_path):
    out = tmp_path / "out"
    r = _cli(comfy, str(PACK_ROOT / "workflows" / "sd15_1step_nasa.json"), "--random-weights", "sd15",
             "--set", "EmptyLatentImage.width=64", "--set", "EmptyLatentImage.height=64", "--out", str(out),
             cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    images = list(out.glob("nasa_sd15_1step_*.png"))
    assert len(images) == 1 and str(images[0]) in r.stdout
    assert {"prompt", "workflow"} <= set(_png_text(images[0]))
    assert "Traceback" not in r.stderr


def test_cli_subprocess_validation_error(comfy, tmp_path):
    r = _cli(comfy, str(PACK_ROOT / "workflows" / "sd15_1step_nasa.json"), "--random-weights", "sd15",
             "--set", "Apply NASA Attention.alpha=5.0", "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    both = r.stdout + r.stderr
    assert "node 10 (NASAApplyAttention" in both and "bigger than max" in both
    assert "Traceback" not in both


@pytest.mark.parametrize("world", ["1", "2"])
def test_exit_process_flushes_and_skips_teardown_only_under_several_processes(world):
    """scripts/nasa_eval.py and nasa_distill.py end through comfy_env.exit_process: with WORLD_SIZE > 1 the buffered
    output is written and the exit code kept, but Python's teardown (atexit here; torch's gloo teardown, which can
    abort a finished run) is skipped; one process ends as sys.exit does."""
    code = ("import atexit, sys; sys.path.insert(0, sys.argv[1]); import _pack_entry; "
            "atexit.register(lambda: print('teardown ran')); print('result written', end=''); "
            "sys.stderr.write('warned'); _pack_entry.exit_process(3)")
    env = {k: v for k, v in os.environ.items() if k not in support.LAUNCHER_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code, str(PACK_ROOT / "scripts")], capture_output=True, text=True,
                          env={**env, "WORLD_SIZE": world}, timeout=120)
    assert done.returncode == 3 and done.stderr.endswith("warned"), done.stderr
    assert done.stdout == ("result written" if world == "2" else "result writtenteardown ran\n")
