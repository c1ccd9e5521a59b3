"""Plumbing of the browser end-to-end test (tests/browser/test_browser_e2e.py): what it installs, the real ComfyUI
server it starts, and Chromium.

* Python packages: ComfyUI's server and frontend as the found ComfyUI checkout pins them in its own
  requirements.txt (comfyui-frontend-package, comfyui-workflow-templates, comfyui-embedded-docs), the server's
  other dependencies and Playwright (tests/browser/requirements.txt).
* Chromium: Debian's package (``/usr/bin/chromium``), or any Chromium named by ``NASA_CHROMIUM``. Browser
  drivers that download their own browser are not used.

The test installs nothing: ``python tests/browser/install.py COMFYUI_DIR`` (run by ``.ci/run`` for each
ComfyUI) installs both; the test reports what is missing with that command.
* The server: ComfyUI's own main.py (through tests/browser/serve.py) on a free loopback port, with a fresh base
  directory whose custom_nodes holds a copy of this pack's tracked files, as a user's install would.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional

PACK_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACK_FOLDER = "comfyui-nasa"            # the folder name ComfyUI-Manager gives a clone of the repository
FRONTEND_PINS = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = "127.0.0.1"

# Loader nodes of the real-model workflows -> the ComfyUI model folder their file names are looked up in.
LOADERS = {
    "CheckpointLoaderSimple": "checkpoints",
    "UNETLoader": "diffusion_models",
    "CLIPLoader": "text_encoders",
    "DualCLIPLoader": "text_encoders",
    "TripleCLIPLoader": "text_encoders",
    "QuadrupleCLIPLoader": "text_encoders",
    "VAELoader": "vae",
    "LoraLoaderModelOnly": "loras",
    # LTX-2: Gemma 3 (text_encoders) + the checkpoint (its text projection; the CheckpointLoaderSimple of the same
    # workflow puts that file in checkpoints); the audio VAE read from the checkpoint.
    "LTXAVTextEncoderLoader": "text_encoders",
    "LTXVAudioVAELoader": "checkpoints",
}


def artifacts_dir() -> Path:
    """Where screenshots and the server log go: $NASA_TEST_ARTIFACTS or test-artifacts/browser (git-ignored)."""
    path = Path(os.environ.get("NASA_TEST_ARTIFACTS") or PACK_ROOT / "test-artifacts") / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------- packages
def requirement_lines(path: Path) -> List[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def comfy_frontend_pins(comfy_dir: Path) -> List[str]:
    """The frontend packages exactly as the ComfyUI checkout's requirements.txt pins them."""
    pins = [line for line in requirement_lines(Path(comfy_dir) / "requirements.txt")
            if line.split("==")[0].strip().lower() in FRONTEND_PINS]
    if len(pins) != len(FRONTEND_PINS):
        raise RuntimeError(f"{comfy_dir}/requirements.txt does not pin all of {FRONTEND_PINS} (found {pins}); "
                           f"the browser test needs a ComfyUI with the pip-installed frontend (0.3.4x or newer)")
    return pins


def _satisfied(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        installed = metadata.version(name.strip())
    except metadata.PackageNotFoundError:
        return False
    return not version or installed == version.strip()


# Installed without its dependencies: spandrel requires torchvision, which has no CPU wheel for this torch here
# (pip would pull a CUDA torch); ComfyUI imports spandrel fine with the torchvision stand-in.
NO_DEPS = ("spandrel==0.4.2",)


def _pip_install(requirements: List[str], *flags: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *flags, *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"browser test: could not install {requirements} ({' '.join(cmd)}):\n{done.stderr[-3000:]}")


def wanted_python_packages(comfy_dir: Path) -> List[str]:
    """What the server, the frontend and Playwright need for this ComfyUI checkout (its own frontend pins)."""
    return comfy_frontend_pins(comfy_dir) + requirement_lines(HERE / "requirements.txt") + list(NO_DEPS)


def missing_python_packages(comfy_dir: Path) -> List[str]:
    return [r for r in wanted_python_packages(comfy_dir) if not _satisfied(r)]


def install_python_packages(comfy_dir: Path) -> List[str]:
    """pip-install what :func:`missing_python_packages` lists (setup only: tests never install); returns it."""
    missing = missing_python_packages(comfy_dir)
    with_deps = [r for r in missing if r not in NO_DEPS]
    if with_deps:
        _pip_install(with_deps)
    no_deps = [r for r in missing if r in NO_DEPS]
    if no_deps:
        _pip_install(no_deps, "--no-deps")
    return missing


# --------------------------------------------------------------------------------------------- chromium
def find_chromium() -> Optional[Path]:
    named = os.environ.get("NASA_CHROMIUM")
    if named:
        return Path(named) if Path(named).exists() else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def install_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (setup only, root: tests never install)."""
    found = find_chromium()
    if found:
        return found
    how = "install Debian's Chromium (`apt-get install chromium`) or point NASA_CHROMIUM at a Chromium binary"
    if os.environ.get("NASA_CHROMIUM"):
        raise RuntimeError(f"NASA_CHROMIUM={os.environ['NASA_CHROMIUM']} does not exist; {how}")
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise RuntimeError(f"no Chromium found and apt-get is not usable here (needs root); {how}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=1200)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1200)
    found = find_chromium()
    if done.returncode != 0 or not found:
        raise RuntimeError(f"`{' '.join(install)}` failed:\n{done.stderr[-3000:]}\n{how}")
    return found


def setup_command(comfy_dir: Path) -> str:
    """The command that installs what the browser test needs for this ComfyUI (tests/browser/install.py)."""
    return f"python tests/browser/install.py {comfy_dir}"


def missing_setup(comfy_dir: Path) -> Optional[str]:
    """What the browser test lacks here and the command that installs it, or None when nothing is missing."""
    missing = missing_python_packages(comfy_dir)
    lacks = ([f"Python packages {', '.join(missing)}"] if missing else []) + \
        ([] if find_chromium() else ["Chromium (Debian's package, or NASA_CHROMIUM)"])
    if not lacks:
        return None
    return f"missing {' and '.join(lacks)}; run `{setup_command(comfy_dir)}` in this environment"


# --------------------------------------------------------------------------------------------- the pack
def pack_files() -> List[Path]:
    """The pack's files as a clone has them: git's tracked files (the working-tree version of each)."""
    if (PACK_ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=PACK_ROOT, capture_output=True, check=True)
        return [Path(p) for p in listed.stdout.decode().split("\0") if p and (PACK_ROOT / p).is_file()]
    skip = {".git", ".venv", ".venv-ci", "__pycache__", "test-artifacts", "output", ".pytest_cache"}
    return [p.relative_to(PACK_ROOT) for p in PACK_ROOT.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(PACK_ROOT).parts)]


def install_pack(custom_nodes: Path) -> Path:
    target = Path(custom_nodes) / PACK_FOLDER
    for rel in pack_files():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACK_ROOT / rel, target / rel)
    return target


def model_placeholders(workflows: Iterable[Path]) -> Dict[str, List[str]]:
    """ComfyUI model folder -> file names the loaders of these UI-format workflows ask for."""
    wanted: Dict[str, List[str]] = {}
    for path in workflows:
        for node in json.loads(Path(path).read_text(encoding="utf-8"))["nodes"]:
            if node["type"] not in LOADERS:
                continue
            folder = LOADERS[node["type"]]
            names = [v for v in node.get("widgets_values", []) if isinstance(v, str) and "." in v]
            wanted.setdefault(folder, [])
            wanted[folder] += [n for n in names if n not in wanted[folder]]
    return wanted


# --------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's main.py on a free loopback port, in its own process group; stopped by its own pid."""

    def __init__(self, comfy_dir: Path, base_dir: Path, log_path: Path):
        self.comfy_dir, self.base_dir, self.log_path = Path(comfy_dir), Path(base_dir), Path(log_path)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        (self.base_dir / "user").mkdir(parents=True, exist_ok=True)
        # --use-pytorch-cross-attention: torch SDPA, as the headless runner uses on CPU, so both give the same pixels
        cmd = [sys.executable, str(HERE / "serve.py"), str(self.comfy_dir), "--cpu", "--use-pytorch-cross-attention",
               "--listen", LOOPBACK,
               "--port", str(self.port), "--base-directory", str(self.base_dir), "--disable-auto-launch",
               "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} before serving; log:\n{self.log()[-4000:]}")
            try:
                self.get_json("/api/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)            # main.py's own KeyboardInterrupt shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str, timeout: float = 30):
        return json.loads(self.get(path, timeout))

    def wait_history(self, prompt_id: str, timeout: float = 600) -> dict:
        """The finished history entry of a queued prompt (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/api/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
