"""The paper's evaluation on a user's own model (issue 28), in steps: :mod:`.pairs` (prompt-pair files, NegOpt and
a built-in set). The metrics themselves are pure torch in ``nasa_core.metrics``. This package imports nothing at
import time, so its ComfyUI-free parts load on their own.
"""
