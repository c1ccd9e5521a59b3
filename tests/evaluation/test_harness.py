"""The evaluation harness (evaluation/graph.py, harness.py, cli.py) on ComfyUI's real executor and the pack's example
workflows: the roles it finds in every example workflow (or the reason it refuses one), the settings it writes, and
a run on the toy workflow - NASA at alpha 0 is the no-negative image bit for bit, each setting changes the image,
the scores are CLIP's, the table follows from the records, and an interrupted run resumes without redoing work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import nasa_test_support as support

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
REFUSED = {   # example workflows the evaluation cannot run, and why (the error says so)
    "sd15_1step_alpha_grid.json": "found no VAE decode",           # NASA Alpha Grid samples inside the node
    "toy_1step_methods.json": "several samplers through Apply NASA Attention",
    "sd15_1step_masked_negative.json": "has a negative of its own",
    "sd15_1step_two_negatives.json": "has a negative of its own",
    "hunyuan_video15_nasa.json": "makes video",
    "ltx2_distilled_nasa.json": "makes video",
    "wan21_causvid_4step_nasa.json": "makes video",
    "wan21_vace_causvid_4step_nasa.json": "makes video",
}


@pytest.fixture(scope="module")
def ev(comfy):
    from nasa_runner.cli import WorkflowSession
    session = WorkflowSession(cpu=True)
    yield type("Ev", (), dict(session=session, graph=comfy.mod("evaluation.graph"),
                              harness=comfy.mod("evaluation.harness"), settings=comfy.mod("evaluation.settings"),
                              pairs=comfy.mod("evaluation.pairs"), cli=comfy.mod("evaluation.cli"),
                              clip=comfy.mod("evaluation.clip"), detector=comfy.mod("evaluation.detector")))
    session.close()


def _api(ev, name):
    return ev.session.to_api(WORKFLOWS / name)[0]


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_roles_in_every_example_workflow(ev, name):
    if name in support.EXAMPLE_WORKFLOWS:            # a family this ComfyUI lacks: its nodes are missing too
        support.skip_missing_pipeline(support.EXAMPLE_WORKFLOWS[name])
    prompt = _api(ev, name)
    classes = ev.session.nodes.NODE_CLASS_MAPPINGS
    if name in REFUSED:
        with pytest.raises(ev.graph.GraphError, match=REFUSED[name]):
            ev.graph.find_roles(prompt, classes)
        return
    roles = ev.graph.find_roles(prompt, classes)
    assert prompt[roles.sampler]["class_type"] in ("KSampler", "SamplerCustom")
    assert prompt[roles.nasa]["class_type"] in ("NASAApplyAttention", "NASAApplyAttentionAdvanced")
    assert roles.positive_text[0] != roles.negative_text[0]
    for nid, field in (roles.positive_text, roles.negative_text):
        assert isinstance(prompt[nid]["inputs"][field], str) and "clip" in prompt[nid]["inputs"]
    assert prompt[roles.image]["class_type"] in ("VAEDecode", "VAEDecodeTiled")
    path, nid = [], roles.sampler                                   # the sampler's model path, walked here
    while isinstance(prompt[nid]["inputs"].get("model"), list):
        nid = prompt[nid]["inputs"]["model"][0]
        path.append(nid)
    assert roles.nasa in path


def test_each_setting_is_written_into_a_copy(ev):
    S = ev.settings
    prompt = _api(ev, "sd15_1step_nasa.json")
    before = json.dumps(prompt, sort_keys=True)
    classes = ev.session.nodes.NODE_CLASS_MAPPINGS
    roles = ev.graph.find_roles(prompt, classes)

    def made(setting):
        p = ev.graph.evaluation_prompt(prompt, roles, "a cat", "a dog", 7, S.parse(setting), classes)
        n = p[roles.negative_text[0]]["inputs"][roles.negative_text[1]]
        return p, n, p[roles.sampler]["inputs"]["cfg"], p[roles.nasa]
    for setting, negative, cfg, alpha in (("none", "", 1.0, 0.0), ("cfg:4", "a dog", 4.0, 0.0),
                                          ("nasa:0.3", "a dog", 1.0, 0.3)):
        p, n, c, nasa = made(setting)
        assert (n, c, nasa["inputs"]["alpha"], nasa["class_type"]) == (negative, cfg, alpha, "NASAApplyAttention")
        assert p[roles.positive_text[0]]["inputs"][roles.positive_text[1]] == "a cat"
        assert p[roles.seed[0]]["inputs"][roles.seed[1]] == 7
        saves = [n for n in p.values() if n["class_type"] == "SaveImage"]
        assert saves == [p["nasa_eval"]] and p["nasa_eval"]["inputs"]["images"] == [roles.image, 0]
    for setting, inputs in (("nag:5", {"method": "nag", "nag_scale": 5.0}),
                            ("vsf:2", {"method": "vsf", "vsf_scale": 2.0})):
        _, n, _, nasa = made(setting)
        assert nasa["class_type"] == "NASAApplyAttentionAdvanced" and n == "a dog"
        assert inputs.items() <= nasa["inputs"].items() and nasa["inputs"]["use_sampler_negative"] is True
    assert json.dumps(prompt, sort_keys=True) == before            # the workflow itself is untouched
    no_nasa = {k: v for k, v in prompt.items() if v["class_type"] != "NASAApplyAttention"}
    no_nasa[roles.sampler]["inputs"]["model"] = prompt[roles.nasa]["inputs"]["model"]
    plain_roles = ev.graph.find_roles(no_nasa, classes)
    with pytest.raises(ev.graph.GraphError, match="needs Apply NASA Attention"):
        ev.graph.evaluation_prompt(no_nasa, plain_roles, "a", "b", 0, S.parse("nasa:0.5"), classes)


class _Counting:
    """The session, counting the runs it executes."""

    def __init__(self, session):
        self.session, self.nodes, self.runs = session, session.nodes, 0

    def execute(self, prompt, **kw):
        self.runs += 1
        return self.session.execute(prompt, **kw)


@pytest.fixture(scope="module")
def tiny_clip(comfy, tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel
    from nasa_evaluation.clip import ClipScorer
    path = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)).save_pretrained(path)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(comfy.dir / "comfy" / "sd1_tokenizer" / name, path / name)
    return ClipScorer.from_folder(path)


def test_toy_run_scores_and_resumes(ev, tiny_clip, tmp_path):
    """The toy workflow (a batch of 16 toy images per run): 1 pair x 1 seed x 4 settings."""
    H, S = ev.harness, ev.settings
    prompt = ev.session.to_api(WORKFLOWS / "toy_1step_nasa.json", ["EmptyLatentImage.batch_size=4"])[0]
    pair = ev.pairs.Pair("t1", "a triangle", "green", "green")
    settings = S.parse_all(["none", "nasa:0", "nasa:0.75", "vsf:2"])
    todo = H.jobs([pair], [3], settings)
    counting = _Counting(ev.session)
    scorer = H.Scorer(tiny_clip)
    unscored = H.run(counting, prompt, todo, tmp_path, None, log=lambda s: None)     # made without --clip first
    assert counting.runs == 4 and not any("clip_plus" in r for r in unscored.values())
    assert "not scored" in H.table(H.summarize(unscored.values(), settings))
    logs = []
    records = H.run(counting, prompt, todo, tmp_path, scorer, log=logs.append)      # scored later, not made again
    assert counting.runs == 4 and len(records) == 4 and all(r["clip"] == scorer.source for r in records.values())
    assert any("4 made earlier to score with" in line for line in logs)
    imgs = {j.setting.key: torch.stack([H.load_image(tmp_path / "images" / n) for n in records[j.key]["images"]])
            for j in todo}
    assert all(t.shape == (4, 24, 24, 3) for t in imgs.values())
    assert torch.equal(imgs["none"], imgs["nasa:0"])                # alpha 0 is the plain model, bit for bit
    assert not torch.equal(imgs["none"], imgs["nasa:0.75"]) and not torch.equal(imgs["nasa:0.75"], imgs["vsf:2"])
    # the scores are the CLIP model's own, for each image
    rec = records[todo[2].key]
    emb = tiny_clip.embed_images(imgs["nasa:0.75"])
    pos, neg = tiny_clip.embed_texts(["a triangle", "green"])
    plus = torch.nn.functional.cosine_similarity(emb, pos[None].expand_as(emb)).tolist()
    minus = torch.nn.functional.cosine_similarity(emb, neg[None].expand_as(emb)).tolist()
    assert rec["clip_plus"] == pytest.approx(plus, abs=1e-5) and rec["clip_minus"] == pytest.approx(minus, abs=1e-5)
    assert rec["removed"] == [p < 0.5 for p in rec["p_present"]]
    rows = H.summarize(records.values(), settings)
    assert [r["images"] for r in rows] == [4, 4, 4, 4]
    assert rows[2]["clip_minus"] == pytest.approx(sum(minus) / 4)
    assert rows[0]["removal"] == pytest.approx(sum(records[todo[0].key]["removed"]) / 4)
    assert "| NASA α 0.75 | 4 |" in H.table(rows)
    # resume: nothing redone; a job whose image is gone, and a torn last line (a kill), are redone
    again = H.run(counting, prompt, todo, tmp_path, scorer, log=lambda s: None)
    assert counting.runs == 4 and again == records                  # scored by this CLIP: nothing redone
    (tmp_path / "images" / records[todo[1].key]["images"][2]).unlink()
    with (tmp_path / "records.jsonl").open("a") as f:
        f.write('{"key": "t1|3|vsf:2", "images": [')
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join(l for l in lines if '"t1|3|vsf:2"' not in l) + "\n")
    H.run(counting, prompt, todo, tmp_path, scorer, log=lambda s: None)
    assert counting.runs == 6


@pytest.fixture(scope="module")
def tiny_hps(comfy, tmp_path_factory):
    """An HPSv2-format file: a tiny random OpenCLIP ViT with ViT-H-14's 16 heads per tower, its state dict under
    "state_dict" as HPS_v2_compressed.pt holds it."""
    import open_clip
    torch.manual_seed(1)
    model = open_clip.model.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, head_width=2,
                                                               patch_size=8),
                                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=16, layers=1))
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_cli_end_to_end_and_bad_input(comfy, ev, tiny_clip, tiny_hps, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "t2", "positive": "a circle", "negative": "red"}) + "\n")
    clip_dir = tmp_path / "clip"
    tiny_clip.model.save_pretrained(clip_dir)
    tiny_clip.tokenizer.save_pretrained(clip_dir)
    out = tmp_path / "out"
    argv = [str(WORKFLOWS / "toy_1step_nasa.json"), "--pairs", str(pairs), "--settings", "none", "nasa:0.75",
            "--seeds", "1", "--clip", str(clip_dir), "--out", str(out), "--set", "EmptyLatentImage.batch_size=2",
            "--quiet"]
    assert ev.cli.main(argv, ev.session) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in results["table"]] == ["none", "nasa:0.75"]
    table = (out / "table.md").read_text()
    assert table.startswith("| setting | images | CLIP+") and "HPSv2 ↑" not in table
    assert "- HPSv2: not measured (give --hps" in table and "- ImageReward: not measured" in table
    assert results["not_measured"][0].startswith("HPSv2: not measured") and "hps" not in results["images"][0]
    # HPSv2 given later: the images are scored again (HPSv2 beside CLIP), not made again
    assert ev.cli.main(argv + ["--hps", str(tiny_hps)], ev.session) == 0
    results = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert "| CLIP+ ↑ | CLIP− ↓ | removal success ↑ | P(feature present) ↓ | HPSv2 ↑ |" in table
    assert "HPSv2: not measured" not in table and "- ImageReward: not measured" in table
    # a CLIP from ComfyUI's two files (clip_vision + text encoder; ComfyUI's own tokenizer files): scored again
    T = support.load_by_path("eval_clip_tests", Path(__file__).parent / "test_clip.py")
    (tmp_path / "halves").mkdir()
    whole = T.vit_b_widths()
    vision, text = T.halves(whole, tmp_path / "halves")
    assert ev.cli.main(argv[:8] + argv[10:] + ["--clip-vision", str(vision), "--clip-text", str(text)],
                       ev.session) == 0
    halves = json.loads((out / "results.json").read_text())
    assert halves["clip"] == [str(vision), str(text)] and "hps" not in halves["images"][1]
    assert halves["images"][1]["clip"] == "CLIP clip_vision_b.safetensors + clip_text_b.safetensors"
    from transformers import CLIPTokenizerFast
    tokens = CLIPTokenizerFast.from_pretrained(comfy.dir / "comfy" / "sd1_tokenizer")(["a circle"], return_tensors="pt")
    shown = torch.stack([ev.harness.load_image(out / "images" / n) for n in halves["images"][1]["images"]])
    with torch.no_grad():
        plus = torch.nn.functional.cosine_similarity(
            whole.get_image_features(pixel_values=ev.clip.prepare_images(shown, 32)), whole.get_text_features(**tokens))
    assert halves["images"][1]["clip_plus"] == pytest.approx(plus.tolist(), abs=1e-5)
    # an OWL-ViT judge beside CLIP: the best box's confidence for the pair's gone, below the threshold = removed
    D = support.load_by_path("eval_detector_tests", Path(__file__).parent / "test_detector.py")
    owl = D.owl_folder("owlvit", tmp_path / "owl", comfy.dir)
    assert ev.cli.main(argv + ["--detector", str(owl), "--detector-threshold", "0.6"], ev.session) == 0
    judged = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert "| removal, detector ↑ |" in table and "kept, detector" not in table      # the pair keeps nothing
    assert "removal and keep by a detector: not measured" not in table and judged["detector"] == str(owl)
    detector = ev.detector.Detector.from_folder(owl, threshold=0.6)
    rec = judged["images"][1]
    want = [float(detector.max_scores(ev.harness.load_image(out / "images" / n), ["red"])[0]) for n in rec["images"]]
    assert rec["det_gone"] == pytest.approx(want, abs=1e-6) and rec["det_removed"] == [w < 0.6 for w in want]
    assert judged["table"][1]["removal_detector"] == pytest.approx(sum(w < 0.6 for w in want) / 2)
    assert f"| {100 * judged['table'][1]['removal_detector']:.1f}% (2) |" in table
    hps = ev.cli.load_hps(tiny_hps, clip_dir)
    rec = results["images"][1]
    images = torch.stack([ev.harness.load_image(out / "images" / n) for n in rec["images"]])
    want = torch.nn.functional.cosine_similarity(hps.embed_images(images), hps.embed_texts(["a circle"])).tolist()
    assert rec["hps"] == pytest.approx(want, abs=1e-5) and rec["clip"] == f"{clip_dir} + HPSv2 {tiny_hps.name}"
    assert results["table"][1]["hps"] == pytest.approx(sum(want) / 2)
    from PIL import Image
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (110 + 2 * 144, 18 + 144)          # 24 px toy images shown at 144 px
    for bad, message in ((["--settings", "nasa"], "needs a number after 'nasa:'"),
                         (["--settings", "cfg:0"], "outside cfg's range"),
                         (["--pairs", str(tmp_path / "none.jsonl")], "no such pair file"),
                         (["--clip", str(tmp_path)], "not a transformers CLIP folder"),
                         (["--hps", str(tiny_hps)], "HPSv2 scores beside CLIP; give --clip"),
                         (["--detector", str(tmp_path)], "the detector scores beside CLIP; give --clip"),
                         (["--clip", str(clip_dir), "--detector", str(tmp_path)], "not a transformers detector"),
                         (["--clip-vision", str(tiny_hps)], "or --clip-vision FILE with --clip-text FILE"),
                         (["--clip", str(clip_dir), "--clip-vision", "v", "--clip-text", "t"], "not both"),
                         (["--clip", str(clip_dir), "--hps", str(tmp_path / "no.pt")], "no such file")):
        assert ev.cli.main([str(WORKFLOWS / "toy_1step_nasa.json"), "--out", str(out), *bad], ev.session) == 2
        assert message in capsys.readouterr().out
    assert ev.cli.main([str(WORKFLOWS / "toy_1step_methods.json"), "--out", str(tmp_path / "g")], ev.session) == 2
    assert "several samplers through Apply NASA Attention" in capsys.readouterr().out


def test_two_processes_give_the_one_process_table(comfy, tiny_clip, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): the same table, scores and images as one process; and a run by
    one process is resumed by two (its records are read, its runs not redone)."""
    import numpy as np
    from PIL import Image
    clip_dir = tmp_path / "clip"
    tiny_clip.model.save_pretrained(clip_dir)
    tiny_clip.tokenizer.save_pretrained(clip_dir)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in (
        {"id": "t1", "positive": "a triangle", "negative": "green"},
        {"id": "t2", "positive": "a circle", "negative": "red"})) + "\n")
    script = Path(__file__).resolve().parents[2] / "scripts" / "nasa_eval.py"

    def evaluate(out, settings, procs):
        return support.launch(procs, script, [WORKFLOWS / "toy_1step_nasa.json", "--pairs", pairs, "--settings",
                                              *settings, "--seeds", 2, "--clip", clip_dir, "--out", out, "--cpu",
                                              "--set", "EmptyLatentImage.batch_size=2"], COMFYUI_PATH=str(comfy.dir))
    settings = ["none", "nasa:0.75", "vsf:2"]
    evaluate(tmp_path / "one", settings, 1)
    log = evaluate(tmp_path / "two", settings, 2)
    assert "[rank 1/2]" in log and sorted(p.name for p in (tmp_path / "two").glob("records*.jsonl")) == \
        ["records-0.jsonl", "records-1.jsonl"]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (tmp_path / "one" / "table.md").read_text() == (tmp_path / "two" / "table.md").read_text()
    assert one == two and len(one["images"]) == 12 and "clip_plus" in one["table"][0]
    for rec in one["images"]:
        for name in rec["images"]:
            a, b = (np.asarray(Image.open(tmp_path / d / "images" / name)) for d in ("one", "two"))
            assert np.array_equal(a, b), name
    # one process made "none" only; two processes then add the rest and reuse its 4 runs
    evaluate(tmp_path / "mixed", ["none"], 1)
    log = evaluate(tmp_path / "mixed", settings, 2)
    assert log.count("already done") == 2 and "6 runs (pair x seed x setting), 2 already done" in log
    assert (tmp_path / "mixed" / "table.md").read_text() == (tmp_path / "one" / "table.md").read_text()


@pytest.mark.parametrize("name, node_class, field, kind", [
    ("sd15_1step_nasa.json", "CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
    ("flux_schnell_1step_nasa.json", "UNETLoader", "unet_name", "diffusion_models")])
def test_checkpoint_replaces_the_workflows_model_file(ev, tmp_path, name, node_class, field, kind, capsys):
    """--checkpoint FILE: the loader at the top of the sampler's model path loads FILE (its folder registered with
    ComfyUI, first, so ComfyUI's own validation lists it); bad files and loaders without one file input are named."""
    import folder_paths
    file = tmp_path / "my model.safetensors"
    file.write_bytes(b"")
    prompt = _api(ev, name)
    try:
        note = ev.cli.use_checkpoint(prompt, str(file), ev.session.nodes.NODE_CLASS_MAPPINGS)
        loaders = [(nid, n) for nid, n in prompt.items() if n["class_type"] == node_class]
        assert len(loaders) == 1 and loaders[0][1]["inputs"][field] == "my model.safetensors"
        assert note == f"{loaders[0][0]}.{field}=my model.safetensors (--checkpoint)"
        assert folder_paths.get_full_path(kind, "my model.safetensors") == str(file)
        again = _api(ev, name)            # now a name ComfyUI lists is taken as it is
        ev.cli.use_checkpoint(again, "my model.safetensors", ev.session.nodes.NODE_CLASS_MAPPINGS)
        assert again == prompt
    finally:
        folder_paths.folder_names_and_paths[kind][0].remove(str(tmp_path))
    with pytest.raises(ev.graph.GraphError, match="no such file, and not a name in ComfyUI's"):
        ev.cli.use_checkpoint(_api(ev, name), str(tmp_path / "gone.safetensors"), ev.session.nodes.NODE_CLASS_MAPPINGS)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ev.graph.GraphError, match="does not list it among its"):
        try:
            ev.cli.use_checkpoint(_api(ev, name), str(tmp_path / "notes.txt"), ev.session.nodes.NODE_CLASS_MAPPINGS)
        finally:
            folder_paths.folder_names_and_paths[kind][0].remove(str(tmp_path))
    # the toy workflow's model node has no model file: said, through the command line's exit code 2
    out = tmp_path / "out"
    assert ev.cli.main([str(WORKFLOWS / "toy_1step_nasa.json"), "--checkpoint", str(file), "--out", str(out)],
                       ev.session) == 2
    assert "has 0 model-file inputs (none); set its file with --set" in capsys.readouterr().out
    assert ev.cli.main([str(WORKFLOWS / name), "--checkpoint", str(file), "--random-weights", "sd15",
                        "--out", str(out)], ev.session) == 2
    assert "give one" in capsys.readouterr().out


def test_detector_judges_object_pairs_and_what_they_keep(comfy, ev, tiny_clip, tmp_path):
    """The detector judges the pairs that name things (not the quality ones): gone below its threshold, and
    every keep found at or above it."""
    D = support.load_by_path("eval_detector_tests", Path(__file__).parent / "test_detector.py")
    detector = ev.detector.Detector.from_folder(D.owl_folder("owlv2", tmp_path / "owl", comfy.dir),
                                                threshold=0.55)
    scorer = ev.harness.Scorer(tiny_clip, detector=detector)
    image = D._image()
    pair = ev.pairs.Pair("p", "a man on a bench", "glasses", keep=("a man", "a bench"))
    found = detector.max_scores(image, ["glasses", "a man", "a bench"])
    got = scorer.score(image, pair)
    assert got["det_gone"] == pytest.approx(float(found[0])) and got["det_removed"] == bool(found[0] < 0.55)
    assert got["det_kept"] == bool((found[1:] >= 0.55).all())
    quality = scorer.score(image, ev.pairs.Pair("q", "a portrait", "blurry", category="quality"))
    assert not any(k.startswith("det_") for k in quality) and "clip_plus" in quality
    # a run of quality pairs only: the detector was given but had nothing to judge, and the note says which
    record = {"setting": "none", "images": ["a.png"], **{k: [v] for k, v in quality.items()}}
    judged_none = ev.harness.summarize([record], [ev.settings.parse("none")])
    H = ev.harness
    said = H.not_measured(judged_none, detector_given=True)
    assert "removal and keep by a detector: not measured (every pair is of the quality category" in said[-2]
    assert "give --detector" in H.not_measured(judged_none)[-2]
    assert scorer.source.endswith("owlv2 owl @0.55") and "det_kept" not in scorer.score(
        image, ev.pairs.Pair("n", "a cat", "a hat"))

