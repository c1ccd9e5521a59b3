"""Nodes of the toy world: load the shipped tiny models, and judge what a workflow made."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..toy import judges, models, world

ATTRIBUTE_CHOICES = ([f"color: {c}" for c in world.COLORS] + [f"shape: {s}" for s in world.SHAPES]
                     + [f"size: {s}" for s in world.SIZES] + [f"position: {p}" for p in world.POSITIONS]
                     + [f"background: {b}" for b in world.BACKGROUNDS] + [f"defect: {d}" for d in world.DEFECTS])
NONE = "(nothing)"


class NASAToyModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASAToyModelLoader",
            display_name="NASA Toy Model Loader",
            category="loaders/nasa",
            description=("Loads the pack's tiny toy-world models (shipped, < 30 MB, no download): a 24x24-pixel "
                         "text-to-image UNet or FLUX-class MMDiT (ComfyUI's own Flux model class), ComfyUI's CLIP "
                         "with the real tokenizer, and the pixel-space VAE. "
                         "Use with the stock KSampler, VAEDecode and SaveImage; an EmptyLatentImage of 192x192 "
                         "is one 24x24 image. Prompts name shapes (circle, square, triangle), colors, size, "
                         "position, background and defects (blurry, noisy, with a stray dot)."),
            inputs=[io.Combo.Input("model", options=list(models.ALL_FILES), default="student v3 (one-step)",
                                   tooltip="Which shipped toy model: the UNet's multi-step teacher, its one-step "
                                           "students (v3: few defects at one step, keeps 92% as much of the "
                                           "prompt as the teacher; the first SBv2 student, blurry at one step; v3's "
                                           "NASA-T student), or the FLUX-class MMDiT's "
                                           "teacher or one-step student. The steps, sampler, scheduler and cfg each "
                                           "one is meant for are on the help page.")],
            outputs=[io.Model.Output(tooltip="The toy diffusion model: an SD1.5-type UNet in pixel space (the "
                                             "teacher predicts eps, the students v) or the FLUX-class MMDiT (flow)."),
                     io.Clip.Output(tooltip="The toy text encoder (ComfyUI's SD1 CLIP at 64 wide)."),
                     io.Vae.Output(tooltip="ComfyUI's pixel-space VAE (no weights).")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        try:
            patcher, clip, vae, _ = models.load_checkpoint(model)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"NASA Toy Model Loader, input 'model' ({model!r}): {e}") from e
        return io.NodeOutput(patcher, clip, vae)


def _parse(choice: str, node: str, input_name: str):
    if choice == NONE:
        return None
    if choice not in ATTRIBUTE_CHOICES:
        raise ValueError(f"{node}, input '{input_name}': {choice!r} is not a toy-world attribute; "
                         f"pick one of {ATTRIBUTE_CHOICES}")
    attribute, value = choice.split(": ")
    return attribute, value


def _to_bchw(images: torch.Tensor, node: str, input_name: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"{node}, input '{input_name}': expected an IMAGE batch (B, H, W, 3), got {tuple(images.shape)}")
    if images.shape[1] != world.SIZE or images.shape[2] != world.SIZE:
        raise ValueError(f"{node}, input '{input_name}': the judges read {world.SIZE}x{world.SIZE} toy images, got "
                         f"{images.shape[2]}x{images.shape[1]}; use an EmptyLatentImage of "
                         f"{world.SIZE * 8}x{world.SIZE * 8} with the toy models")
    return images.movedim(-1, 1).float()


def compare_report(without: torch.Tensor, with_nasa: torch.Tensor, remove, keep) -> str:
    """Removal / retention / defect rates of two batches (B, 3, H, W), as one line each."""
    lines = []
    for label, images in (("without NASA", without), ("with NASA", with_nasa)):
        v = judges.judge(images)
        present = v.has(*remove)
        parts = [f"{label}: '{remove[0]}: {remove[1]}' removed in {int((v.valid & ~present).sum())}/{len(images)} "
                 f"({100 * float((v.valid & ~present).float().mean()):.0f}%)"]
        if keep is not None:
            kept = v.has(*keep)
            parts.append(f"'{keep[0]}: {keep[1]}' kept in {int(kept.sum())}/{len(images)}")
        parts.append(f"defective {int(v.any_defect.sum())}/{len(images)}")
        lines.append(", ".join(parts))
    return "\n".join(lines)


def side_by_side(without: torch.Tensor, with_nasa: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """An IMAGE (1, H, W, 3): the first row without NASA, the second with, each image enlarged."""
    def row(images):
        big = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
        pad = torch.nn.functional.pad(big, (2, 2, 2, 2), value=1.0)
        return torch.cat(list(pad), dim=2)
    both = torch.cat([row(without), row(with_nasa)], dim=1)
    return both.movedim(0, -1)[None]


class NASAToyJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NASAToyJudge",
            display_name="NASA Toy Judge",
            category="image/nasa",
            description=("Measures how well a negative prompt was honoured on the toy world: exact pixel judges "
                         "read every image's shape, color, size, position, background and defects. Shows both "
                         "batches side by side (top: without NASA, bottom: with) and the removal rate."),
            inputs=[io.Image.Input("without_nasa", tooltip="Images sampled without NASA (24x24 toy images)."),
                    io.Image.Input("with_nasa", tooltip="The same seeds sampled with NASA."),
                    io.Combo.Input("remove", options=ATTRIBUTE_CHOICES, default="color: red",
                                   tooltip="The attribute the negative prompt names (what should be gone)."),
                    io.Combo.Input("keep", options=[NONE] + ATTRIBUTE_CHOICES, default="shape: circle",
                                   tooltip="An attribute the positive prompt names (what should stay).")],
            outputs=[io.Image.Output(display_name="side_by_side", tooltip="Top row without NASA, bottom row with."),
                     io.String.Output(display_name="report", tooltip="Removal, retention and defect counts.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, without_nasa, with_nasa, remove, keep) -> io.NodeOutput:
        node = "NASA Toy Judge"
        a = _to_bchw(without_nasa, node, "without_nasa")
        b = _to_bchw(with_nasa, node, "with_nasa")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"{node}: 'without_nasa' has {a.shape[0]} images and 'with_nasa' {b.shape[0]}; "
                             f"sample both with the same batch size and seed")
        report = compare_report(a, b, _parse(remove, node, "remove"), _parse(keep, node, "keep"))
        logging.info("NASA Toy Judge:\n%s", report)
        return io.NodeOutput(side_by_side(a, b), report, ui={"text": [report]})


NODES = [NASAToyModelLoader, NASAToyJudge]
