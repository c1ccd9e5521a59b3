"""SD3 / SD3.5 family adapter: SD3 Medium, SD3.5 Large / Large Turbo / Medium (``comfy.ldm.modules.diffusionmodules.mmdit``).

MMDiT has no cross-attention: each ``JointBlock`` attends jointly over [text; image] (text first)
with separate weights, a ``context_block`` for the text and an ``x_block`` for the image. NASA's
negative flows through the ``context_block`` weights as a stream of its own (see :mod:`.joint`):

* embedded as the model embeds its text: ``context_processor`` (when the checkpoint has one),
  then ``context_embedder``; MMDiT has no positional encoding on text tokens;
* each block: the context block's public ``pre_attention`` (adaLN modulation from the row's
  ``vec`` = timestep + pooled-text embedding of the positive, ``norm1``, ``attn.qkv`` and the RMS
  qk norm of SD3.5) gives the stream's Q/K/V in the layout the joint call uses, (B, L, H*D);
  ``post_attention`` (``attn.proj``, gates, ``norm2``, MLP) finishes it. The last context block is
  ``pre_only`` (no output projection): there only the stream's K/V are used;
* the joint attention subtracts alpha * softmax(Q_img K-^T) V- on the image-query rows. SD3.5
  Medium's x blocks make a second, image-only self-attention call after the joint one: only the
  first (joint) call is steered.

Hook: a ``"dit"`` ``("double_block", i)`` replace per joint block (MMDiT.forward_core_with_concat
honours it; any replace installed before NASA is chained). A steered block runs as MMDiT runs it unreplaced
(without activation checkpointing, see :func:`_joint_block`). ``register_length`` tokens are not
prepended to the stream: ComfyUI's loader never builds an MMDiT with registers.
"""
from __future__ import annotations

from typing import Optional

from . import joint
from .family import Family


def _mmdit_class():
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    return OpenAISignatureMMDITWrapper


def matches(model_patcher) -> bool:
    """An SD3 config on ComfyUI's MMDiT class without register tokens (the stream does not prepend them),
    whose joint blocks expose the context block's pre/post-attention steps the stream runs."""
    import comfy.supported_models as sm
    base = model_patcher.model
    dm = getattr(base, "diffusion_model", None)
    return (type(dm) is _mmdit_class() and isinstance(getattr(base, "model_config", None), sm.SD3)
            and not getattr(dm, "register_length", 0)
            and all(hasattr(jb.context_block, "pre_attention") and hasattr(jb.context_block, "post_attention")
                    for jb in dm.joint_blocks))


def context_dim(model_patcher) -> Optional[int]:
    return getattr(model_patcher.model.diffusion_model.context_embedder, "in_features", None)


def model_name(model_patcher) -> str:
    return FAMILY.name


def _embed(dm):
    def embed(neg):
        if dm.context_processor is not None:
            neg = dm.context_processor(neg.clone())      # its blocks add in place
        return dm.context_embedder(neg)
    return embed


def _context_prepare(block, vec):
    def prepare(s):
        (s.q, s.k, s.v), s.scratch["intermediates"] = block.pre_attention(s.x, joint.rows_of(vec, s.rows))

    def finish(s):
        s.x = block.post_attention(s.out, *s.scratch["intermediates"])
    return prepare, finish


def _joint_block(dm, index):
    """The joint block as MMDiT runs it where no replace is set: with the model's own ``use_checkpoint`` (off at
    inference). ComfyUI's ``original_block`` leaves it at ``block_mixing``'s default, torch.utils.checkpoint,
    which torch.compile cannot trace with NASA's stream in it (a graph break per block); outputs are equal."""
    def block(args):
        out = {}
        out["txt"], out["img"] = dm.joint_blocks[index](args["txt"], args["img"], c=args["vec"],
                                                        transformer_options=args["transformer_options"],
                                                        use_checkpoint=getattr(dm, "use_checkpoint", False))
        return out
    return block


def _make_block(index):
    def make(prior):
        def nasa_joint_block(args, extra):
            call_block, state, dm = joint.streams_block(args, extra, prior, index, _embed)
            if state is None or not state.streams:
                return call_block(args)
            call_block = joint.chain(prior, _joint_block(dm, index))
            txt = args["txt"]
            prepare, finish = _context_prepare(dm.joint_blocks[index].context_block, args["vec"])
            last = index == len(dm.joint_blocks) - 1          # its context block is pre_only: K/V only
            t = txt.shape[1]
            return joint.run_block(state, args, call_block, slice(t, None), slice(t, None), prepare,
                                   None if last else finish, f"SD3 joint block {index}", layer=("joint", index))
        return nasa_joint_block
    return make


def block_groups(model_patcher) -> dict:
    return {"joint": list(range(len(model_patcher.model.diffusion_model.joint_blocks)))}


def flop_layers(model_patcher, latent) -> Optional[tuple]:
    """(Embedding, [NasaLayer]) for nasa_core.flops: context_embedder, then each joint block's context half on the
    stream (pre_attention with its modulation; post_attention except in the pre_only last block). None with a
    context_processor (not described)."""
    from ..nasa_core.flops import Embedding, NasaLayer, module_linear_weights, patch_tokens
    dm = model_patcher.model.diffusion_model
    if dm.context_processor is not None:
        return None
    p = dm.patch_size
    n_img = patch_tokens(latent[-2:], p)
    layers = []
    for i, jb in enumerate(dm.joint_blocks):
        cb = jb.context_block
        last = i == len(dm.joint_blocks) - 1
        rows = module_linear_weights(cb.attn.qkv) + (0 if last else module_linear_weights(cb.attn.proj, cb.mlp))
        layers.append(NasaLayer(width=cb.attn.qkv.weight.shape[0] // 3, query_tokens=n_img, row_weights=rows,
                                row_vector_weights=module_linear_weights(cb.adaLN_modulation),
                                stream_keys=-1 if last else n_img))
    return Embedding(module_linear_weights(dm.context_embedder)), layers


def install(model_patcher) -> int:
    dm = model_patcher.model.diffusion_model
    for i in range(len(dm.joint_blocks)):
        joint.install_dit_replace(model_patcher, "double_block", i, _make_block(i))
    return len(dm.joint_blocks)


FAMILY = Family(
    name="SD3/SD3.5", supported=("SD3 Medium, SD3.5 Large/Large Turbo/Medium",), model_classes=("SD3",),
    matches=matches,
    model_name=model_name, context_dim=context_dim, block_groups=block_groups, install=install,
    flop_layers=flop_layers, joint_stream=True)
