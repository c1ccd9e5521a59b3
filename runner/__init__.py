"""Headless workflow runner for the NASA pack (and any ComfyUI workflow).

Nothing here imports ComfyUI at import time; see :mod:`.comfy_env` for the bootstrap.
"""
