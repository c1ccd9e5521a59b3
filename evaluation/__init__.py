"""The paper's evaluation on a user's own model (issue 28; ``scripts/nasa_eval.py``, docs/evaluation.md):
:mod:`.pairs` (prompt-pair files, NegOpt and a built-in set), :mod:`.settings` (none / cfg / nasa / nag / vsf),
:mod:`.graph` (the workflow's sampler, texts, seed and NASA node, found by structure), :mod:`.clip` (a local CLIP),
:mod:`.harness` (the resumable loop and the table) and :mod:`.cli`. The metrics are pure torch in
``nasa_core.metrics``. The package imports nothing at import time, so its ComfyUI-free parts (pairs, clip) load on
their own.
"""
