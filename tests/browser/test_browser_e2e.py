"""End to end in the real ComfyUI frontend: the real server, the real frontend, headless Chromium.

What a user does, checked as they would see it: the pack sits in a fresh ``custom_nodes`` (a copy of its
tracked files, nothing else installed for it) and loads with no import error or warning; every workflow in
``workflows/`` is opened from its file through the frontend's file input and shows no missing-node or validation
dialog, every NASA node with its widgets, the file's values and its tooltips (hovered on the canvas); the
toy-world workflows are queued with the Run button, their image appears in the SaveImage node and its pixels are
judged (the negative attribute is gone in the NASA row) and equal the headless runner's; the real-model
workflows pass the server's validation and stop only at their loaders (this machine has no weights); each NASA
node's help page opens from the node's info button with its picture. Screenshots go to
test-artifacts/browser/ ($NASA_TEST_ARTIFACTS). ``NASA_UPDATE_SCREENSHOTS=1`` rewrites the README's and docs' pictures
(docs/screenshots/) and the help pages' toy picture from this run; otherwise the test checks that the committed
before/after pictures equal, pixel for pixel, what the UI produced.

Runs when ComfyUI is found, like the other ComfyUI tests. It installs nothing: ``python tests/browser/install.py
COMFYUI_DIR`` does (.ci/run runs it); without it the test fails with that command under ``CI``, else is skipped
loudly.
Bounded in time; the browser reaches nothing but the loopback server (every other request is aborted).
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasa_runner import comfy_env
from nasa_toy import judges, world

PACK_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (tests/browser/harness.py)
sys.path.pop(0)
import nasa_test_support as support  # noqa: E402

COMFY_DIR, COMFY_HOW = comfy_env.find_comfyui(PACK_ROOT)
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
TOY_WORKFLOWS = [p for p in WORKFLOWS if p.name.startswith("toy_")]
NASA_TYPES = ("NASAApplyAttention", "NASAApplyAttentionAdvanced", "NASANegative", "NASANegativeConditioning",
              "NASAAlphaGrid", "NASAToyModelLoader", "NASAToyJudge")
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
UPDATE = os.environ.get("NASA_UPDATE_SCREENSHOTS") == "1"
SCREENSHOTS = PACK_ROOT / "docs" / "screenshots"
HELP_PICTURE = PACK_ROOT / "web" / "docs" / "images" / "toy_green_triangle.png"
HELP_PICTURE_CELLS = 4                  # the help pages show the first four seeds of the toy before/after image
CELL = 4 * world.SIZE + 4               # side_by_side: each 24x24 image enlarged 4x with a 2-pixel border

pytestmark = pytest.mark.browser

if COMFY_DIR is None:
    pytest.skip(f"browser test SKIPPED: ComfyUI not found ({COMFY_HOW}); set COMFYUI_PATH", allow_module_level=True)
if os.environ.get("NASA_SKIP_BROWSER") == "1":
    pytest.skip("browser test SKIPPED on purpose: NASA_SKIP_BROWSER=1", allow_module_level=True)
_MISSING = harness.missing_setup(COMFY_DIR)
if _MISSING and os.environ.get("CI"):          # CI must run it: .ci/run installs it first
    pytest.fail(f"browser test cannot run: {_MISSING}", pytrace=False)
if _MISSING:
    pytest.skip(f"browser test SKIPPED: {_MISSING}", allow_module_level=True)

# --------------------------------------------------------------------------------------------- page helpers
JS_READY = "() => !!(window.app && window.app.graph && window.app.canvas && document.querySelector('#comfy-file-input'))"
JS_DIALOGS = """() => Array.from(document.querySelectorAll('.p-dialog')).filter(d => d.offsetParent !== null)
                      .map(d => d.innerText.slice(0, 500))"""
JS_NODES = """() => app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title,
                 widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value}))}))"""
# Centre a node on the canvas at 100 % zoom and return the screen position of one of its widgets (or its title).
JS_FOCUS = """([id, widget]) => {
    const n = app.graph.getNodeById(id); const ds = app.canvas.ds; const c = app.canvas.canvas;
    const r = c.getBoundingClientRect(); ds.scale = 1;
    ds.offset[0] = r.width / 2 - n.pos[0] - n.size[0] / 2; ds.offset[1] = r.height / 2 - n.pos[1] - n.size[1] / 2;
    app.canvas.setDirty(true, true); app.canvas.draw(true, true);
    const w = widget === null ? null : n.widgets.find(w => w.name === widget);
    const gx = n.pos[0] + n.size[0] / 2, gy = w ? n.pos[1] + w.y + 10 : n.pos[1] - 15;
    return [r.left + (gx + ds.offset[0]) * ds.scale, r.top + (gy + ds.offset[1]) * ds.scale]; }"""
JS_IMAGE_SHOWN = """(id) => { const n = app.graph.getNodeById(id);
    return !!(n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0); }"""
JS_HELP = """() => { const md = document.querySelector('.markdown-content'); if (!md) return null;
    const h1 = md.querySelector('h1');
    return {title: h1 ? h1.innerText : null, text: md.innerText.slice(0, 20000),
            images: Array.from(md.querySelectorAll('img')).map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))}; }"""


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


class UI:
    """One browser page on the server, with what it logged."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.page_errors, self.blocked = [], []
        page.on("pageerror", lambda e: self.page_errors.append(_first_line(str(e))))
        page.on("console", self._console)           # caught errors too: a widget that failed to build logs one
        page.route("**/*", self._route)

    def _console(self, message):
        if message.type == "error" and "Failed to load resource" not in message.text:   # 404s of optional files
            self.page_errors.append(_first_line(message.text))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.server.url) or url.startswith(("data:", "blob:")):
            return route.continue_()
        self.blocked.append(url)
        return route.abort()

    def open(self):
        self.page.goto(self.server.url, timeout=120_000)
        self.page.wait_for_function(JS_READY, timeout=120_000)
        self.page.wait_for_timeout(1500)
        self.startup_errors = set(self.page_errors)     # the frontend's own, before any workflow is opened

    def new_errors(self):
        return [e for e in self.page_errors if e not in self.startup_errors]

    def load_workflow(self, path: Path):
        self.page.set_input_files("#comfy-file-input", str(path))
        try:
            self.page.wait_for_function(
                "(name) => { const f = app.extensionManager.workflow.activeWorkflow?.filename || '';"
                " return (f === name || f.startsWith(name + ' (')) && app.graph.nodes.length > 0; }",  # 'x (2)': reopened
                arg=path.stem, timeout=60_000)
        except Exception as exc:
            self.screenshot(f"{path.stem}-LOAD-FAILED")
            active = self.page.evaluate("() => app.extensionManager.workflow.activeWorkflow?.filename")
            raise AssertionError(f"{path.name} did not open from the file input (active workflow: {active}, "
                                 f"dialogs: {self.dialogs()})") from exc
        self.page.wait_for_timeout(800)

    def run_button(self):
        """The Run (queue) button: its test id from frontend 1.4x on (a "Run" menu trigger sits beside it), else by
        its role and name."""
        by_id = self.page.locator('[data-testid="queue-button"]')
        return by_id if by_id.count() else self.page.get_by_role("button", name="Run", exact=True)

    def dialogs(self):
        return self.page.evaluate(JS_DIALOGS)

    def close_dialogs(self):
        for _ in range(3):
            if not self.dialogs():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def screenshot(self, name: str) -> Path:
        path = harness.artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def fit_view(self, min_scale: float = 0.65):
        """Fit the graph, then zoom to at least min_scale (below ~0.6 the canvas draws nodes without text)."""
        self.page.evaluate("""(s) => { const ds = app.canvas.ds; const c = app.canvas.canvas.getBoundingClientRect();
            let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            for (const n of app.graph.nodes) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
            ds.scale = Math.max(s, Math.min(c.width / (x1 - x0 + 60), c.height / (y1 - y0 + 60)));
            ds.offset[0] = c.width / 2 / ds.scale - (x0 + x1) / 2; ds.offset[1] = c.height / 2 / ds.scale - (y0 + y1) / 2;
            app.canvas.setDirty(true, true); app.canvas.draw(true, true); }""", min_scale)
        self.page.wait_for_timeout(300)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    shutil.rmtree(harness.artifacts_dir())          # this run's screenshots only (the folder is recreated below)
    base = tmp_path_factory.mktemp("comfyui_base")
    harness.install_pack(base / "custom_nodes")
    for folder, names in harness.model_placeholders(WORKFLOWS).items():
        for name in names:          # empty files: the loaders' lists offer them; loading them fails, as it must
            (base / "models" / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (base / "models" / folder / name).touch()
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))   # a returning user: no template browser
    srv = harness.ComfyServer(COMFY_DIR, base, harness.artifacts_dir() / "server.log")
    try:
        srv.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get_json("/api/object_info")


@pytest.fixture(scope="module")
def ui(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:      # Playwright gives each launch a fresh, empty user-data dir
        browser = p.chromium.launch(executable_path=str(harness.find_chromium()), headless=True,   # checked at import
                                    args=harness.CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        view = UI(page, server)
        view.open()
        yield view
        (harness.artifacts_dir() / "blocked-requests.txt").write_text(
            "Requests the frontend tried off loopback; each was aborted:\n" + "\n".join(sorted(set(view.blocked))) + "\n")
        context.close()
        browser.close()


def _widget_inputs(node_def) -> list:
    order = node_def.get("input_order", {})
    names = list(order.get("required", [])) + list(order.get("optional", []))
    specs = {**node_def["input"].get("required", {}), **node_def["input"].get("optional", {})}
    return [n for n in names if isinstance(specs[n][0], list) or specs[n][0] in WIDGET_TYPES]


def _input_specs(node_def) -> dict:
    return {**node_def["input"].get("required", {}), **node_def["input"].get("optional", {})}


def _side_by_side_rows(png: bytes) -> list:
    """The toy judge's side-by-side PNG -> two (16, 3, 24, 24) float batches (without NASA, with NASA)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    rows = []
    for r in range(pixels.shape[0] // CELL):
        cells = [pixels[r * CELL + 2:(r + 1) * CELL - 2, i * CELL + 2:(i + 1) * CELL - 2][::4, ::4]
                 for i in range(pixels.shape[1] // CELL)]
        rows.append(torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2))
    return rows


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- tests
def test_pack_installs_fresh_and_loads_without_errors_or_warnings(server, object_info):
    """A copy of the tracked files in a fresh custom_nodes, nothing installed for it: imported, no warning."""
    requirements = harness.requirement_lines(PACK_ROOT / "requirements.txt")
    assert requirements == [], f"requirements.txt asks for {requirements}: install them in the fresh-install check"
    log = server.log()
    folder = f"custom_nodes/{harness.PACK_FOLDER}"
    import_lines = [line for line in log.splitlines() if line.rstrip().endswith(folder)]
    assert import_lines and all("IMPORT FAILED" not in line for line in import_lines), \
        f"the pack is not in ComfyUI's import-times list, or failed:\n{import_lines}\n{log[-3000:]}"
    lines = log.splitlines()
    about_pack = [i for i, line in enumerate(lines) if harness.PACK_FOLDER in line or "NASA" in line]
    noisy = [lines[i] for i in about_pack if any(k in lines[i] for k in ("WARNING", "ERROR", "Traceback", "Cannot import",
                                                                          "warning", "error"))]
    assert not noisy, "the server logged warnings or errors about the pack:\n" + "\n".join(noisy)
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    for i in tracebacks:                            # ComfyUI's own optional extras may fail (no kornia etc.)
        frames = "\n".join(lines[i:i + 30])
        assert harness.PACK_FOLDER not in frames.split("ModuleNotFoundError")[0], f"a traceback through the pack:\n{frames}"
    ours = {name: d for name, d in object_info.items() if d.get("python_module") == f"custom_nodes.{harness.PACK_FOLDER}"}
    assert sorted(ours) == sorted(NASA_TYPES)
    templates = server.get_json("/api/workflow_templates").get(harness.PACK_FOLDER, [])
    assert sorted(templates) == sorted(p.stem for p in WORKFLOWS), "workflows/ not listed for the template browser"
    for name in NASA_TYPES:                         # the help page each node's info button fetches
        page = server.get(f"/extensions/{harness.PACK_FOLDER}/docs/{name}.md").decode()
        assert page.startswith("# "), name


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_and_queues_in_the_ui(ui, server, object_info, comfy, workflow):
    saved = json.loads(workflow.read_text(encoding="utf-8"))
    if workflow.name in support.EXAMPLE_WORKFLOWS:      # a family the server's ComfyUI lacks (imported here too: ``comfy``)
        support.skip_missing_pipeline(support.EXAMPLE_WORKFLOWS[workflow.name])
    ui.close_dialogs()                              # a failed workflow before this one must not fail this one
    ui.load_workflow(workflow)
    assert ui.dialogs() == [], f"{workflow.name}: a dialog opened on load (missing nodes or models?)"
    nodes = ui.page.evaluate(JS_NODES)
    # node ids as the frontend keeps them: numbers up to frontend 1.3x, strings in 1.4x (compared as text)
    assert sorted((str(n["id"]), n["type"]) for n in nodes) == sorted((str(n["id"]), n["type"]) for n in saved["nodes"])
    by_id = {str(n["id"]): n for n in nodes}
    nasa = [n for n in saved["nodes"] if n["type"] in NASA_TYPES]
    assert nasa, f"{workflow.name} has no NASA node"
    for saved_node in nasa:
        node_def = object_info[saved_node["type"]]
        shown = by_id[str(saved_node["id"])]
        saved_node = {**saved_node, "id": shown["id"]}      # the id the frontend's own lookups take
        names = [w["name"] for w in shown["widgets"] if w["name"] != "control_after_generate"]
        assert names == _widget_inputs(node_def), f"{workflow.name} node {saved_node['id']}: widgets {names}"
        assert [w["value"] for w in shown["widgets"]] == saved_node.get("widgets_values", []), \
            f"{workflow.name} node {saved_node['id']} ({saved_node['type']}): the UI shows other values than the file"
        for name, spec in _input_specs(node_def).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{saved_node['type']}.{name} has no tooltip"
        dom_widgets = ui.page.evaluate("(id) => app.graph.getNodeById(id).widgets.filter(w => w.element).map(w => w.name)",
                                       saved_node["id"])
        for name in names:                          # hover each widget on the canvas: its tooltip shows
            if name in dom_widgets:                 # a multiline text box is an HTML element over the canvas, which the
                continue                            # canvas hover tooltip does not reach (its nodeDef tooltip is checked)
            x, y = ui.page.evaluate(JS_FOCUS, [saved_node["id"], name])
            ui.page.mouse.move(5, 500)
            ui.page.locator(".node-tooltip").wait_for(state="hidden", timeout=10_000)
            ui.page.mouse.move(x - 10, y)
            ui.page.mouse.move(x, y)
            tip = ui.page.locator(".node-tooltip")
            try:
                tip.wait_for(state="visible", timeout=10_000)
            except Exception as exc:
                kind = ui.page.evaluate("([id, name]) => app.graph.getNodeById(id).widgets.find(w => w.name === name).type",
                                        [saved_node["id"], name])
                ui.screenshot(f"{workflow.stem}-TOOLTIP-{name}-FAILED")
                raise AssertionError(f"{saved_node['type']}.{name} ({kind}): no tooltip on hover") from exc
            expected = _input_specs(node_def)[name][1]["tooltip"].strip()
            assert tip.inner_text().strip()[:60] == expected[:60], f"{saved_node['type']}.{name}: hover shows another tooltip"
        ui.page.mouse.move(5, 500)
    ui.fit_view()
    shot = ui.screenshot(f"{workflow.stem}-opened")
    if UPDATE:                                      # the gallery in docs/screenshots/workflows (256 colours)
        (SCREENSHOTS / "workflows").mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            image.convert("RGB").quantize(256).save(SCREENSHOTS / "workflows" / f"{workflow.stem}.png", optimize=True)

    with ui.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as posted:
        ui.run_button().click()
    answer = posted.value.json()
    assert posted.value.status == 200 and not answer.get("node_errors"), \
        f"{workflow.name}: the server rejected the prompt the UI built: {answer}"
    entry = server.wait_history(answer["prompt_id"], timeout=600)
    status = entry["status"]
    if workflow in TOY_WORKFLOWS:
        assert status["status_str"] == "success", f"{workflow.name}: {status}"
        save = next(n for n in saved["nodes"] if n["type"] == "SaveImage")
        save = {**save, "id": by_id[str(save["id"])]["id"]}
        ui.page.wait_for_function(JS_IMAGE_SHOWN, arg=save["id"], timeout=60_000)
        _check_toy_image(ui, server, workflow, saved, entry, save)
    else:                                           # no weights here: it must stop at a loader, nowhere else
        errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
        assert status["status_str"] == "error" and errors, f"{workflow.name}: {status}"
        assert errors[0]["node_type"] in harness.LOADERS, \
            f"{workflow.name}: failed at {errors[0]['node_type']} (not a model loader): {errors[0]['exception_message']}"
        ui.page.wait_for_timeout(500)
        ui.close_dialogs()
    assert ui.dialogs() == []
    assert ui.new_errors() == [], f"{workflow.name}: the page raised {ui.new_errors()}"


def _check_toy_image(ui, server, workflow, saved, entry, save):
    shown_src = ui.page.evaluate("(id) => app.graph.getNodeById(id).imgs[0].src", save["id"])
    assert "/api/view?" in shown_src
    png = ui.page.evaluate("""async (src) => { const r = await fetch(src); const b = new Uint8Array(await r.arrayBuffer());
                                let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }""", shown_src)
    png = base64.b64decode(png)
    rows = _side_by_side_rows(png)          # a judge's two rows, or several judges' stacked (the methods workflow)
    judge = next(n for n in saved["nodes"] if n["type"] == "NASAToyJudge")
    attribute, value = [s.strip() for s in judge["widgets_values"][0].split(":")]
    assert len(rows) == 2 * sum(n["type"] == "NASAToyJudge" for n in saved["nodes"]), len(rows)
    for panel in range(len(rows) // 2):
        red_without = int(judges.judge(rows[2 * panel]).has(attribute, value).sum())
        red_with = int(judges.judge(rows[2 * panel + 1]).has(attribute, value).sum())
        # The toy prompt's bias shows the attribute without NASA; NASA (the first panel) removes it from at least
        # a quarter of the seeds (the shipped v3 and NASA-T students remove it in 16/16 at alpha 0.75); each other
        # method's panel (NAG, VSF) from some.
        assert red_without >= 12 and red_with <= red_without - (4 if panel == 0 else 1), \
            f"{workflow.name} panel {panel}: '{attribute}: {value}' in {red_without}/16 without and {red_with}/16 with"

    # The same pixels as the headless runner's output for the same file (the UI changed nothing on the way).
    out = harness.artifacts_dir() / f"runner-{workflow.stem}"
    env = dict(os.environ, COMFYUI_PATH=str(COMFY_DIR))
    done = subprocess.run([sys.executable, str(PACK_ROOT / "scripts" / "nasa_run.py"), str(workflow), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runner_png = Path(done.stdout.strip().splitlines()[-1]).read_bytes()
    assert np.array_equal(_pixels(png), _pixels(runner_png)), f"{workflow.name}: UI and headless runner differ"

    ui.fit_view()
    shot = ui.screenshot(f"{workflow.stem}-ran")
    (harness.artifacts_dir() / f"{workflow.stem}-output.png").write_bytes(png)
    if workflow.stem == "toy_1step_nasa":
        crop = _pixels(png)[:, :HELP_PICTURE_CELLS * CELL]
        pictures = {SCREENSHOTS / "toy_before_after.png": _pixels(png), HELP_PICTURE: crop}
        if UPDATE:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            HELP_PICTURE.parent.mkdir(parents=True, exist_ok=True)
            for path, pixels in pictures.items():
                path.write_bytes(_png(pixels))
            (SCREENSHOTS / "toy_workflow.png").write_bytes(shot.read_bytes())
        for path, pixels in pictures.items():
            assert path.exists(), f"{path} missing: run the browser test once with NASA_UPDATE_SCREENSHOTS=1"
            committed = _pixels(path.read_bytes())
            assert _same_picture(committed, pixels), \
                f"{path} is not what the UI produces now: rerun with NASA_UPDATE_SCREENSHOTS=1"


def _same_picture(committed: np.ndarray, produced: np.ndarray) -> bool:
    """The committed picture is what the UI shows, up to float rounding between CPUs: the same torch build on two
    machines (different vector units) differs by 1/255 in a few pixels of the toy model's output (measured: 0.035%
    of the pixels of toy_before_after.png). Any real change of the image moves far more, by far more."""
    if committed.shape != produced.shape:
        return False
    diff = np.abs(committed.astype(np.int16) - produced.astype(np.int16))
    return int(diff.max()) <= 1 and float((diff > 0).mean()) <= 0.002


def _workflow_with(node_type: str) -> Path:
    for path in TOY_WORKFLOWS + WORKFLOWS:
        if any(n["type"] == node_type for n in json.loads(path.read_text(encoding="utf-8"))["nodes"]):
            return path
    raise AssertionError(f"no example workflow uses {node_type}")


@pytest.mark.parametrize("node_type", NASA_TYPES)
def test_help_page_opens_from_the_node(ui, object_info, node_type):
    """Select the node on the canvas, press the selection toolbox's info button: our page, its picture loads."""
    workflow = _workflow_with(node_type)
    ui.load_workflow(workflow)
    node_id = next(n["id"] for n in ui.page.evaluate(JS_NODES) if n["type"] == node_type)   # as the frontend keys it
    x, y = ui.page.evaluate(JS_FOCUS, [node_id, None])
    ui.page.mouse.click(x, y)
    display = object_info[node_type]["display_name"]
    try:
        ui.page.locator('[data-testid="info-button"]').click()
        ui.page.wait_for_function("(t) => document.querySelector('.markdown-content h1')?.innerText === t", arg=display)
    except Exception:
        ui.screenshot(f"help-{node_type}-FAILED")
        raise
    ui.page.wait_for_function("() => Array.from(document.querySelectorAll('.markdown-content img')).every(i => i.complete)")
    help_page = ui.page.evaluate(JS_HELP)
    for name in _input_specs(object_info[node_type]):
        assert name in help_page["text"], f"{node_type}'s help page does not mention input '{name}'"
    assert help_page["images"], f"{node_type}'s help page has no picture"
    assert all(i["ok"] for i in help_page["images"]), f"{node_type}'s help picture did not load: {help_page['images']}"
    ui.screenshot(f"help-{node_type}")
    if UPDATE and node_type == "NASAApplyAttention":
        (SCREENSHOTS / "help_panel.png").write_bytes((harness.artifacts_dir() / f"help-{node_type}.png").read_bytes())
    ui.page.keyboard.press("Escape")
    assert ui.new_errors() == [], f"the page raised {ui.new_errors()}"
