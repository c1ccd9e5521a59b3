"""NASA on ComfyUI's own Kandinsky5 (Kandinsky 5 Video Lite/Pro and Image Lite), tiny random weights.

Held against code written here, independent of the pack:
* a reference written out in float64 replaces each visual block's cross_attention through a torch forward hook:
  the negative through text_embeddings (Linear + LayerNorm) and every text transformer block (LayerNorm, the
  time_embed modulation, self-attention with RMS q/k norms and 1-D RoPE, GELU FFN, gates) modulated by the steered
  row's own time_embed (the tensor the visual block receives: its timestep plus its prompt's pooled CLIP vector),
  then the layer's to_key + key_norm and to_value, and Z+ - alpha * softmax(Q K-^T / sqrt(d)) V- before out_layer.
  NASA's output equals it at cfg 1 (video and image), on the cond rows at cfg > 1 (cond and uncond rows have
  different time_embeds there), over two steps and through an attention override installed before NASA (which
  runs the negative's text-block and cross-attention calls too);
* NASA's negative text stream after the last text block equals what the model computes from the negative as an
  ordinary prompt carrying the positive's pooled vector (and differs from the negative's own pooled vector: the
  check can fail);
* each visual block projects the negative at every forward (its stream depends on the timestep), the
  self-attentions never see it;
* the start frames Kandinsky5ImageToVideo writes through time_dim_replace are conditioning: not steered;
* alpha 0 is bit-identical; variants with another block class are refused; another node's patch of a visual
  block's forward is refused by name.

The generic checks (alpha 0, finite, cfg > 1 uncond rows, batches, widths, a second node, the canary) run in
test_contract.py on both model lines. The random-weight builder leaves RMSNorm weights at 0; family_cases.py gives
them random values in [0.5, 2) so that the softmax is not trivial.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nasa_family_cases as cases
import nasa_test_support as support

VIDEO, IMAGE = "kandinsky5", "kandinsky5_image"
POS_LEN, NEG_LEN = cases.CASES[VIDEO].pos_len, cases.CASES[VIDEO].neg_len     # distinct, so hooks tell them apart


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing(VIDEO)
    return dict(cases.family_env(comfyui, VIDEO, kandinsky="adapters.kandinsky5"), adapters=comfyui.mod("adapters"))


def _model(env, name=VIDEO):
    return cases.model(env["rm"], name)


def _conds(env, name=VIDEO, **kw):
    return cases.conds(env["rm"], name, **kw)


def _sample(mp, name, pos, neg, cfg=1.0, steps=1, **kw):
    return cases.sample(mp, name, pos, neg, cfg, steps, **kw)


# ----------------------------------------------------------------------------- independent reference

def _lin(x, layer):
    return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())


def _rms(x, norm):
    eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight.double()


def _heads(x, heads):
    return x.unflatten(-1, (heads, -1))       # (B, L, C) -> (B, L, H, D)


def _text_block(block, x, te):
    """TransformerEncoderBlock written out: x (1, L, C), te (1, time_dim)."""
    mod = _lin(F.silu(te.double()), block.text_modulation.out_layer)
    shift, scale, gate, ff_shift, ff_scale, ff_gate = (m[:, None] for m in mod.chunk(6, dim=-1))
    attn = block.self_attention
    h = F.layer_norm(x, x.shape[-1:], eps=block.self_attention_norm.eps) * (1 + scale) + shift
    ids = torch.arange(x.shape[1], dtype=torch.float64)[None, :, None]
    head_dim = attn.head_dim
    q = support.reference_rotary(_rms(_heads(_lin(h, attn.to_query), attn.num_heads), attn.query_norm), ids,
                                 [head_dim])
    k = support.reference_rotary(_rms(_heads(_lin(h, attn.to_key), attn.num_heads), attn.key_norm), ids, [head_dim])
    v = _heads(_lin(h, attn.to_value), attn.num_heads)
    x = x + gate * _lin(support.reference_attention(q, k, v), attn.out_layer)
    h = F.layer_norm(x, x.shape[-1:], eps=block.feed_forward_norm.eps) * (1 + ff_scale) + ff_shift
    ff = block.feed_forward
    return x + ff_gate * _lin(F.gelu(_lin(h, ff.in_layer)), ff.out_layer)


def _negative_stream(dm, negative, te):
    """The negative (1, L, width) through text_embeddings and the text blocks, modulated by ``te`` (1, time_dim)."""
    emb = dm.text_embeddings
    x = F.layer_norm(_lin(negative, emb.in_layer), (emb.norm.normalized_shape[0],), emb.norm.weight.double(),
                     emb.norm.bias.double(), emb.norm.eps)
    for block in dm.text_transformer_blocks:
        x = _text_block(block, x, te)
    return x


def _attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V of (B, L, H, D) tensors, float64, -> (B, L, H*D)."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (p @ v).transpose(1, 2).flatten(2)


def _reference(mp, negative, alpha, skip_tokens=0, method=None):
    """Every visual block's cross_attention of ``mp`` computes NASA (or ``method``, written as
    support.steered_written_out takes it) written out in float64 while the returned hooks are open (a ``with``
    block); each block's time_embed is read by a pre-hook on the block (the model's own tensor). ``skip_tokens``:
    leading query tokens that are conditioning (unsteered)."""
    dm = mp.model.diffusion_model
    seen = {}
    pre = [b.register_forward_pre_hook(lambda m, args, kwargs, i=i: seen.__setitem__(i, args[2]), with_kwargs=True)
           for i, b in enumerate(dm.visual_transformer_blocks)]
    hooks = []
    for i, block in enumerate(dm.visual_transformer_blocks):
        attn = block.cross_attention

        def hook(module, args, kwargs, output, attn=attn, i=i):
            x, context = args[0], args[1]
            h = attn.num_heads
            q = _rms(_heads(_lin(x, attn.to_query), h), attn.query_norm)
            k, v = _rms(_heads(_lin(context, attn.to_key), h), attn.key_norm), _heads(_lin(context, attn.to_value), h)
            z = _attention(q, k, v)
            te = seen[i]
            chunks = kwargs["transformer_options"]["cond_or_uncond"]
            per = x.shape[0] // len(chunks)
            for c, kind in enumerate(chunks):
                if kind != 0:
                    continue
                for r in range(c * per, (c + 1) * per):
                    stream = _negative_stream(dm, negative, te[r:r + 1])
                    k_neg = _rms(_heads(_lin(stream, attn.to_key), h), attn.key_norm)
                    v_neg = _heads(_lin(stream, attn.to_value), h)
                    z[r:r + 1, skip_tokens:] = support.steered_written_out(
                        method, z[r:r + 1, skip_tokens:], *(t.transpose(1, 2) for t in (
                            q[r:r + 1, skip_tokens:], k[r:r + 1], v[r:r + 1], k_neg, v_neg)), alpha)
            return _lin(z, attn.out_layer).to(x.dtype)
        hooks.append((attn, hook))

    class Hooks(support.Replacing):
        def close(self):
            super().close()
            for handle in pre:
                handle.remove()
    return Hooks(hooks)


def _reference_sample(mp, name, negative, alpha, *args, skip_tokens=0, method=None, **kwargs):
    with _reference(mp, negative, alpha, skip_tokens, method):
        return _sample(mp, name, *args, **kwargs)


# ----------------------------------------------------------------------------- the formula

@pytest.mark.parametrize("name", [VIDEO, IMAGE])
def test_steered_output_equals_independent_reference(env, name):
    mp = _model(env, name)
    pos, neg = _conds(env, name)
    base = _sample(mp, name, pos, neg, steps=2)
    got = _sample(env["apply"](mp, alpha=0.8), name, pos, neg, steps=2)
    want = _reference_sample(mp, name, neg[0][0], 0.8, pos, neg, steps=2)
    support.check_close(got, want, base)


@pytest.mark.parametrize("name", [VIDEO, IMAGE])
@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, comfyui, method, name):
    """NAG and VSF on every visual block's cross-attention (VSF's softmax over the prompt's keys and the negative's,
    streamed through the text blocks with the row's time_embed) equal the methods written out in the test;
    switched off, the output is the unpatched model's, bit for bit."""
    obj, off = support.method_objects(comfyui.mod("nasa_core"), method)
    mp = _model(env, name)
    pos, neg = _conds(env, name)
    base = _sample(mp, name, pos, neg, steps=2)
    got = _sample(env["adapters"].apply_nasa(mp, alpha=obj.strength, method=obj), name, pos, neg, steps=2)
    want = _reference_sample(mp, name, neg[0][0], obj.strength, pos, neg, steps=2, method=method)
    support.check_close(got, want, base)
    assert torch.equal(_sample(env["adapters"].apply_nasa(mp, alpha=off.strength, method=off), name, pos, neg,
                               steps=2), base)


def test_alpha_zero_is_bit_identical(env):
    mp = _model(env)
    pos, neg = _conds(env)
    assert torch.equal(_sample(env["apply"](mp, alpha=0.0), VIDEO, pos, neg, steps=2),
                       _sample(mp, VIDEO, pos, neg, steps=2))


def test_cfg_above_one_cond_rows_equal_the_reference(env):
    """cfg 4, cond and uncond in one batched pass (the rows' time_embeds differ: their pooled vectors do): the
    first step's cond prediction equals the reference's, which streams the negative with the cond row's own."""
    mp = _model(env)
    pos, neg = _conds(env, neg_len=POS_LEN)       # same length: cond and uncond share one batched pass
    base_cap, nasa_cap, ref_cap = [], [], []
    _sample(mp, VIDEO, pos, neg, cfg=4.0, capture=base_cap)
    _sample(env["apply"](mp, alpha=0.8), VIDEO, pos, neg, cfg=4.0, capture=nasa_cap)
    _reference_sample(mp, VIDEO, neg[0][0], 0.8, pos, neg, cfg=4.0, capture=ref_cap)
    support.check_close(nasa_cap[0][0], ref_cap[0][0], base_cap[0][0])
    assert torch.equal(nasa_cap[0][1], base_cap[0][1])


@pytest.mark.parametrize("backend", ["pytorch", "sub_quad"])
def test_attention_override_installed_before_computes_both_terms(env, backend):
    """An optimized_attention_override set before NASA (an attention-kernel patch node) keeps running every
    attention call: the negative's text-block self-attentions and its cross-attention terms go through it too."""
    import comfy.ldm.modules.attention as attention
    kernel = attention.get_attention_function(backend)
    keys = []

    def override(func, *args, **kwargs):
        k = args[1]
        keys.append(k.shape[2] if kwargs.get("skip_reshape") else k.shape[1])
        return kernel(*args, **kwargs)
    mp = _model(env).clone()
    mp.model_options["transformer_options"]["optimized_attention_override"] = override
    pos, neg = _conds(env)
    base = _sample(mp, VIDEO, pos, neg)
    keys.clear()
    got = _sample(env["apply"](mp, alpha=0.8), VIDEO, pos, neg)
    dm = mp.model.diffusion_model
    per_text = len(dm.text_transformer_blocks) + len(dm.visual_transformer_blocks)   # text blocks, cross-attentions
    assert keys.count(NEG_LEN) == per_text and keys.count(POS_LEN) == per_text, keys
    support.check_close(got, _reference_sample(mp, VIDEO, neg[0][0], 0.8, pos, neg), base)


# ----------------------------------------------------------------------------- the negative's text path

def test_negative_stream_equals_the_model_on_the_negative_with_the_positive_pooled_vector(env):
    """The last text block's output for the negative in a NASA run equals the model's own output for the negative
    as a prompt that carries the positive's pooled CLIP vector; with the negative's own pooled vector it differs."""
    mp = _model(env)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)
    seen = []
    h = dm.text_transformer_blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    try:
        _sample(env["apply"](mp, alpha=0.8), VIDEO, pos, neg)
        nasa = [t for t in seen if t.shape[1] == NEG_LEN]
        seen.clear()
        _sample(mp, VIDEO, [[neg[0][0], dict(pos[0][1])]], pos)
        with_positive_pooled = [t for t in seen if t.shape[1] == NEG_LEN]
        seen.clear()
        _sample(mp, VIDEO, neg, pos)
        with_own_pooled = [t for t in seen if t.shape[1] == NEG_LEN]
    finally:
        h.remove()
    assert len(nasa) == len(with_positive_pooled) == len(with_own_pooled) == 1
    torch.testing.assert_close(nasa[0], with_positive_pooled[0], rtol=1e-5, atol=1e-6)
    assert (nasa[0] - with_own_pooled[0]).abs().max() > 1e-2


def test_negative_projected_by_every_visual_block_at_every_forward(env):
    mp = _model(env)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)
    text_k = support.Lengths([b.cross_attention.to_key for b in dm.visual_transformer_blocks])
    self_k = support.Lengths([b.self_attention.to_key for b in dm.visual_transformer_blocks])
    text_blocks = support.Lengths([dm.text_transformer_blocks[0]])
    fwd = support.Forwards(mp)
    try:
        _sample(env["apply"](mp, alpha=0.5), VIDEO, pos, neg, steps=2)
    finally:
        for c in (text_k, self_k, text_blocks, fwd):
            c.close()
    assert fwd.n == 2                                               # cfg 1: one model pass per step
    for i, lengths in text_k.calls.items():             # the prompt and the negative, at each forward
        assert sorted(lengths) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN], (i, lengths)
    assert sorted(text_blocks.calls[0]) == [POS_LEN, POS_LEN, NEG_LEN, NEG_LEN]
    assert all(NEG_LEN not in lengths for lengths in self_k.calls.values())


# ----------------------------------------------------------------------------- what is not steered

def test_start_frames_of_image_to_video_are_not_steered(env):
    """Kandinsky5ImageToVideo writes the start image's latent into the first frames (time_dim_replace): those
    tokens are conditioning. Block 0's cross-attention output of the start frame's tokens is bit-identical with
    NASA, the generated frame's differs; the whole output equals the reference that skips the start frame."""
    mp = _model(env)
    pos, neg = _conds(env)
    start = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    pos = [[pos[0][0], {**pos[0][1], "time_dim_replace": start}]]
    neg = [[neg[0][0], {**neg[0][1], "time_dim_replace": start}]]
    outs = []
    h = mp.model.diffusion_model.visual_transformer_blocks[0].cross_attention.register_forward_hook(
        lambda m, i, o: outs.append(o.clone()))
    try:
        base = _sample(mp, VIDEO, pos, neg)
        got = _sample(env["apply"](mp, alpha=1.0), VIDEO, pos, neg)
    finally:
        h.remove()
    plain, nasa = outs
    per_frame = 4 * 4                                   # 8x8 latent, 2x2 patches
    assert plain.shape[1] == 2 * per_frame
    assert torch.equal(nasa[:, :per_frame], plain[:, :per_frame])
    assert ((nasa[:, per_frame:] - plain[:, per_frame:]).abs().amax(-1) > 0).all()
    want = _reference_sample(mp, VIDEO, neg[0][0], 1.0, pos, neg, skip_tokens=per_frame)
    support.check_close(got, want, base)


# ----------------------------------------------------------------------------- refusals

def test_other_block_classes_are_refused(env):
    """A Kandinsky5 whose visual block is another class (a subclass with another forward) is not steered."""
    from comfy.ldm.kandinsky5.model import TransformerDecoderBlock

    class OtherBlock(TransformerDecoderBlock):
        pass
    mp = _model(env)
    assert env["kandinsky"].matches(mp)
    block = mp.model.diffusion_model.visual_transformer_blocks[1]
    block.__class__ = OtherBlock
    try:
        assert not env["kandinsky"].matches(mp)
        with pytest.raises(ValueError, match="model family 'Kandinsky5' is not supported"):
            env["apply"](mp)
    finally:
        block.__class__ = TransformerDecoderBlock
    assert all(f is env["kandinsky"].FAMILY or not f.matches(mp) for f in env["adapters"].FAMILIES)


def test_another_nodes_block_patch_is_refused(env):
    mp = _model(env).clone()
    block = mp.model.diffusion_model.visual_transformer_blocks[0]
    mp.add_object_patch("diffusion_model.visual_transformer_blocks.0.forward", lambda *a, **k: block(*a, **k))
    with pytest.raises(ValueError, match="another node already replaced the forward of Kandinsky 5 visual block 0"):
        env["apply"](mp)


def test_input_model_untouched(env):
    mp = _model(env)
    pos, neg = _conds(env)
    opts_before, patches_before = repr(mp.model_options), dict(mp.object_patches)
    plain = _sample(mp, VIDEO, pos, neg)
    steered = _sample(env["apply"](mp), VIDEO, pos, neg)
    assert torch.equal(_sample(mp, VIDEO, pos, neg), plain) and not torch.equal(steered, plain)
    assert repr(mp.model_options) == opts_before and dict(mp.object_patches) == patches_before
