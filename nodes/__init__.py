"""V3 node classes of the NASA pack. Imported relatively: ComfyUI has a top-level module named `nodes` too."""
from .nasa_nodes import NODES as NASA_NODES, NASAApplyAttention, NASANegativeConditioning
from .toy_nodes import NODES as TOY_NODES, NASAToyJudge, NASAToyModelLoader

NODES = NASA_NODES + TOY_NODES

__all__ = ["NODES", "NASAApplyAttention", "NASANegativeConditioning", "NASAToyModelLoader", "NASAToyJudge"]
