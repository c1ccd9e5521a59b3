"""Sampling the nodes do themselves, through ComfyUI's own sampler (touches ComfyUI internals, so it lives apart
from the thin nodes): :mod:`.alpha_grid` renders one seed over a list of alphas for the NASA Alpha Grid node."""
