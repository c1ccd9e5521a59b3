"""The pack as ComfyUI, the Comfy Registry and ComfyUI-Manager see it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent


def test_pyproject_parses_with_comfyuis_own_config_parser(comfyui):
    from comfy_config import config_parser
    cfg = config_parser.extract_node_configuration(str(PACK))
    assert cfg.project.name and "comfyui" not in cfg.project.name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", cfg.project.version)
    assert cfg.project.license.file == "LICENSE" and (PACK / "LICENSE").is_file()
    assert cfg.project.urls.repository.startswith("https://")
    assert cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name and cfg.tool_comfy.icon
    assert cfg.project.supported_comfyui_version.startswith(">=")
    minimum = tuple(int(x) for x in cfg.project.supported_comfyui_version.removeprefix(">=").split("."))
    assert minimum <= tuple(int(x) for x in comfyui.version.split(".")[:3]), "requires-comfyui is above the tested ComfyUI"


def test_registry_icon_is_in_the_repository_and_square():
    """pyproject's Icon URL points into this repository (main branch); the file is a square PNG of at most 400 px."""
    import tomllib
    from PIL import Image
    cfg = tomllib.loads((PACK / "pyproject.toml").read_text(encoding="utf-8"))
    icon_url = cfg["tool"]["comfy"]["Icon"]
    repo = cfg["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert icon_url.startswith(prefix), f"Icon {icon_url} is not a file of {repo}"
    with Image.open(PACK / icon_url.removeprefix(prefix)) as icon:
        assert icon.format == "PNG" and icon.width == icon.height and 128 <= icon.width <= 400


def test_changelog_has_an_entry_for_this_version():
    import tomllib
    version = tomllib.loads((PACK / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    changelog = (PACK / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[?{re.escape(version)}\]?", changelog, re.M), f"CHANGELOG.md has no '## {version}' entry"


def _requirement_names(path) -> set:
    """The distribution names a requirements file asks for (normalised: lower case, '-' for '_')."""
    names = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[ ;]", line)[0].strip().lower().replace("_", "-"))
    return names


def test_requirements_do_not_reinstall_what_comfyui_brings():
    names = _requirement_names(PACK / "requirements.txt")
    assert not names & {"torch", "torchvision", "torchaudio", "numpy", "safetensors", "transformers", "comfyui"}


def test_nodes_registered_by_comfy_entrypoint_only(comfyui):
    import nodes
    for node_id in ("NASAApplyAttention", "NASANegativeConditioning", "NASAToyModelLoader", "NASAToyJudge"):
        assert node_id in nodes.NODE_CLASS_MAPPINGS
    assert not hasattr(comfyui.pack, "NODE_CLASS_MAPPINGS")   # it would make ComfyUI ignore comfy_entrypoint


def test_every_input_and_output_has_a_tooltip(comfyui):
    import nodes
    for node_id, display, category in (("NASAApplyAttention", "Apply NASA Attention", "model_patches/nasa"),
                                       ("NASANegativeConditioning", "NASA Negative Conditioning", "conditioning/nasa"),
                                       ("NASAApplyAttentionAdvanced", "Apply NASA Attention (Advanced)",
                                        "model_patches/nasa"),
                                       ("NASANegative", "NASA Negative", "conditioning/nasa"),
                                       ("NASAAlphaGrid", "NASA Alpha Grid", "model_patches/nasa"),
                                       ("NASAToyModelLoader", "NASA Toy Model Loader", "loaders/nasa"),
                                       ("NASAToyJudge", "NASA Toy Judge", "image/nasa")):
        schema = nodes.NODE_CLASS_MAPPINGS[node_id].define_schema()
        assert schema.display_name == display and schema.category == category and schema.description
        for item in list(schema.inputs) + list(schema.outputs):
            assert item.tooltip and len(item.tooltip) > 20, (node_id, getattr(item, "id", item))
        info = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        assert info["required"] or info["optional"]


def test_every_node_has_a_help_page_the_frontend_finds(comfyui):
    """web/docs/<node id>.md (ComfyUI's node-docs mechanism for custom nodes) for every node, naming each of its
    inputs; ComfyUI's own loader registered the pack's WEB_DIRECTORY that serves them."""
    import nodes
    node_ids = [c.define_schema().node_id for c in comfyui.mod("nodes").NODES]
    assert len(node_ids) == 7
    for node_id in node_ids:
        page = PACK / "web" / "docs" / f"{node_id}.md"
        assert page.is_file(), page
        text = page.read_text()
        schema = nodes.NODE_CLASS_MAPPINGS[node_id].define_schema()
        assert text.startswith(f"# {schema.display_name}\n"), node_id
        for item in schema.inputs:
            assert re.search(rf"\b{re.escape(item.id)}\b", text), (node_id, item.id)
    assert any(Path(d) == PACK / "web" for d in nodes.EXTENSION_WEB_DIRS.values()), nodes.EXTENSION_WEB_DIRS


def test_layout_and_import_rules():
    for folder in ("nodes", "nasa_core", "adapters", "toy", "distill", "workflows", "tests"):
        assert (PACK / folder).is_dir(), folder
    # nasa_core never imports ComfyUI; nodes never reach into comfy internals (adapters do)
    for f in (PACK / "nodes").glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in {"comfy_api", "__future__", "typing"}, (f.name, node.module)
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in {"comfy", "nodes"} for a in node.names), f.name
    for f in (PACK / "nasa_core").glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert all(n.split(".")[0] in {"torch", "math", "copy", "contextlib", "dataclasses", "typing", "re",
                                           "__future__", "os"} for n in names), (f.name, names)   # os: processes.py


def test_what_comfyui_loads_imports_only_what_comfyui_installs(comfyui):
    """A fresh install gets ComfyUI's requirements and our (empty) requirements.txt, nothing else: every module the
    code ComfyUI loads imports (at any depth, lazily too) is the standard library, ComfyUI, the pack, or a package
    ComfyUI's own requirements.txt names."""
    import importlib.metadata
    import sys
    comfy_modules = {p.stem for p in Path(comfyui.dir).glob("*.py")} | {p.name for p in Path(comfyui.dir).iterdir()
                                                                        if p.is_dir()}
    dists = importlib.metadata.packages_distributions()
    allowed = _requirement_names(Path(comfyui.dir) / "requirements.txt")
    files = [PACK / "__init__.py"] + [f for d in ("nodes", "adapters", "nasa_core", "toy", "sampling") for f in (PACK / d).glob("*.py")]
    outside = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else \
                [(node.module or "").split(".")[0]] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for root in roots:
                if root in sys.stdlib_module_names or root in comfy_modules:
                    continue
                names = {d.lower().replace("_", "-") for d in dists.get(root, [root])}
                if not names & allowed:
                    outside.setdefault(root, []).append(f"{f.relative_to(PACK)}")
    assert not outside, f"imports that neither ComfyUI nor requirements.txt install: {outside}"
