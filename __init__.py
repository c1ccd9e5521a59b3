"""NASA (Negative-Away Steer Attention) for ComfyUI: negative prompts for one-step and few-step models.

ComfyUI loads this file as a custom-node package and calls `comfy_entrypoint` (V3 node schema).
"""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

WEB_DIRECTORY = "./web"     # web/docs/<node id>.md: the help pages the frontend's node docs panel shows


class NASAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> NASAExtension:
    return NASAExtension()
