"""The family interface: what NASA needs to know about a model family, declared once per family.

Each family module (``unet.py``, ``flux.py``, ...) ends by declaring ``FAMILY = Family(...)``; :mod:`.registry`
lists them, and :func:`adapters.apply_nasa`, the cost tools and the tests use nothing else of a family. Reading a
family module tells the whole story of that family: which ComfyUI models it accepts, what it steers and how it
hooks in. Machinery several families share lives in its own module: :mod:`.attn2` (UNet attn2 replaces),
:mod:`.joint` (the negative text stream of joint attention), :mod:`.double_single` (FLUX-style double/single
blocks), :mod:`.cross_blocks` (Wan-style blocks with a text cross-attention call).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union


def model_layers(base_model) -> dict:
    """:attr:`Family.layers` of families whose hooks read the model being sampled from the run."""
    return {"model": base_model.diffusion_model}


def no_layers(base_model) -> dict:
    """:attr:`Family.layers` of families whose hooks are bound to their layers (nothing to resolve at sample time)."""
    return {}


@dataclass(frozen=True)
class Family:
    """One model family NASA steers. Every callable takes the ModelPatcher the node receives (``model_patcher``),
    except ``layers``, which takes the BaseModel being sampled."""

    name: str
    """Display name, e.g. "FLUX.1"."""
    supported: tuple
    """What a user may load, one string per model line (error messages, docs)."""
    model_classes: tuple
    """The names of the ``comfy.supported_models`` classes (ComfyUI's model configs) whose models this family
    steers; a class a ComfyUI version lacks is simply absent there. tests/adapters/test_model_coverage.py holds
    every config class of the ComfyUI under test to this list or to its table of refused classes."""
    matches: Callable[..., bool]
    """``matches(model_patcher)``: strictly this family's ComfyUI classes and structure; False for anything NASA
    would misread (a subclass with another forward, a variant with other text positions)."""
    model_name: Callable[..., str]
    """``model_name(model_patcher)``: the family and the model's config, as errors name it."""
    context_dim: Callable[..., Union[int, tuple, None]]
    """``context_dim(model_patcher)``: the text width the model takes, or a tuple of the widths it takes (a negative
    of another width is refused); None: any."""
    block_groups: Callable[..., dict]
    """``block_groups(model_patcher)``: ``{group: [index, ...]}``, what a block selection may name; every steering
    call site passes its ``(group, index)`` to the run."""
    install: Callable[..., int]
    """``install(model_patcher)``: patch every steered layer of a clone through ModelPatcher's own APIs; returns
    how many."""
    layers: Callable[..., dict] = model_layers
    """``layers(base_model)``: the run's layer map, resolved at sample time on the model being sampled."""
    flop_layers: Optional[Callable[..., tuple]] = None
    """``flop_layers(model_patcher, latent)``: ``(Embedding, [NasaLayer])`` for :mod:`nasa_core.flops`, or None."""
    video: bool = False
    """A mask's batch is frames."""
    joint_stream: bool = False
    """Joint attention: the negative flows as a stream through the text-stream weights (:mod:`.joint`); the
    ``stream`` option applies."""
