"""Install what the browser end-to-end test needs for one ComfyUI checkout, into the running interpreter's
environment: that checkout's pinned frontend packages, the server's dependencies and Playwright
(tests/browser/requirements.txt), and Debian's Chromium (apt-get, as root) when no Chromium is found.

Usage: python tests/browser/install.py COMFYUI_DIR

Run by .ci/run once per ComfyUI version, in that version's virtual environment (their frontend pins differ).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    comfy_dir = Path(argv[0]).expanduser().resolve()
    try:
        installed = harness.install_python_packages(comfy_dir)
        chromium = harness.install_chromium()
    except RuntimeError as exc:
        print(f"tests/browser/install.py: {exc}", file=sys.stderr)
        return 1
    print(f"browser test ready for {comfy_dir}: installed {', '.join(installed) or 'no Python packages'}; "
          f"Chromium at {chromium}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
