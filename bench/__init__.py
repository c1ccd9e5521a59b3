"""Benchmark and cost tools (tables, never tests): :mod:`.timing` (wall time of NASA against the plain forward and
CFG), :mod:`.costs` (NASA's extra FLOPs on ComfyUI's models at published sizes), :mod:`.trim` (the FLUX padding
study). They run inside ComfyUI: ``scripts/nasa_bench.py`` and ``scripts/nasa_cost.py`` load the pack as ComfyUI
loads a custom-node folder.
"""
