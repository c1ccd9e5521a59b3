"""V3 node classes of the NASA pack. Imported relatively: ComfyUI has a top-level module named `nodes` too."""
from .nasa_nodes import NODES, NASAApplyAttention, NASANegativeConditioning

__all__ = ["NODES", "NASAApplyAttention", "NASANegativeConditioning"]
