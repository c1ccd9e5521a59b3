"""NASA on ComfyUI's own PixArt-α / PixArt-Σ classes (``comfy.ldm.pixart``, random weights).

Held against code written here, independent of the pack:
* a PixArt forward with NASA (or NAG, VSF) written out (float64 cross-attention, the model's weights) on the
  inputs the diffusion model received inside ComfyUI's sampler (``_reference``), batch 1, batch 2 and cfg > 1;
* hooks counting each block's ``kv_linear`` inputs of the negative's length: every cross-attention
  layer projects the negative exactly once per sampling run, and the caption projection embeds it once;
* alpha = 0 runs the original forward (the negative is never projected); cfg 1 runs one model pass per step;
* the object patches are ComfyUI's: the original ``cross_attn.forward`` is back after unpatch, and a
  NASA forward left on the shared model by a clone switch does nothing for a plain patcher;
* a CLIP-wide negative on a real-width PixArt (T5 4096, loaded through ComfyUI's own detection) is
  refused with an error naming the node, the family and the fix.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batches, widths, a second node, the canary)
run on PixArt-α and PixArt-Σ in test_contract.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

POS_LEN = 12
NEG_LEN = 7          # differs from POS_LEN and every batch multiple of it, so hooks can tell them apart
SIZE = 34            # latent side: PixArt's on-the-fly position embedding needs (H + W) / 2 >= 33
FAMILIES = ["pixart", "pixart_sigma"]


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")

    def model(family="pixart", dtype=torch.float32):
        return cases.model(rm, family, dtype)

    return dict(rm=rm, pixart=comfyui.mod("adapters.pixart"), nasa_run=comfyui.mod("adapters.run"),
                model=model, apply=support.apply_nasa, width=lambda family: cases.width(rm, family),
                adapters=comfyui.mod("adapters"), core=comfyui.mod("nasa_core"))


def _conds(env, family="pixart", **kw):
    return cases.conds(env["rm"], family, **kw)


def _sample(model, pos, neg, cfg=1.0, steps=1, batch=1):
    return cases.sample(model, "pixart", pos, neg, cfg, steps, batch)


class _Capture:
    """Every diffusion-model forward during a run: its inputs (as PixArtMS.forward got them) and output."""

    def __init__(self, dm):
        self.calls = []
        self._handles = [dm.register_forward_pre_hook(self._pre, with_kwargs=True),
                         dm.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        x, t = args[:2]
        to = kwargs.get("transformer_options") or {}
        self.calls.append(dict(x=x.clone(), t=t.clone(), context=kwargs["context"].clone(),
                               c_size=kwargs.get("c_size"), c_ar=kwargs.get("c_ar"),
                               cond_or_uncond=list(to.get("cond_or_uncond", []))))

    def _post(self, module, args, out):
        self.calls[-1]["out"] = out.clone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


# ----------------------------------------------------------------------------- independent reference

def _attn(q, k, v, heads):
    """(B, N, C) queries, (B or 1, L, C) keys/values -> (B, N, C): per-head softmax written out, float64."""
    b, n, c = q.shape
    d = c // heads
    k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    qh, kh, vh = (t.double().reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, n, c)


def _reference(dm, call, negative, alpha, method=None):
    """PixArtMS forward (published block structure, the model's weights) whose every cross-attention is
    Z+ - alpha * softmax(Q K-^T/sqrt(d)) V- on the positive rows, K-/V- = kv_linear(caption projection of
    the negative); cross-attention in float64. ``method``: None (NASA), ("nag", tau, blend) or ("vsf", bias)
    at strength ``alpha`` instead (support.steered_written_out)."""
    from comfy.ldm.pixart.pixartms import get_2d_sincos_pos_embed_torch, t2i_modulate
    x, t, context = call["x"], call["t"], call["context"]
    b, _, h, w = x.shape
    p = dm.patch_size
    c_res = (h + w) // 2
    interpolation = dm.pe_interpolation
    if interpolation is None or dm.pe_precision is not None:
        interpolation = round(c_res / 64, dm.pe_precision or 0)
    pos = get_2d_sincos_pos_embed_torch(dm.hidden_size, h=h // p, w=w // p, pe_interpolation=interpolation,
                                        base_size=(round(c_res / 64) * 64) // p, dtype=x.dtype)[None]
    chunks = call["cond_or_uncond"]
    steer = [r for r in range(b) if chunks[r // (b // len(chunks))] == 0]
    hid = dm.x_embedder(x) + pos
    temb = dm.t_embedder(t, x.dtype)
    if dm.micro_conditioning:
        c_size = call["c_size"] if call["c_size"] is not None else torch.tensor([[h * 8, w * 8]] * b, dtype=x.dtype)
        c_ar = call["c_ar"] if call["c_ar"] is not None else torch.tensor([[h / w]] * b, dtype=x.dtype)
        temb = temb + torch.cat([dm.csize_embedder(c_size, b), dm.ar_embedder(c_ar, b)], dim=1)
    t0 = dm.t_block(temb)
    y = dm.y_embedder.y_proj(context)                       # (B, L, hidden)
    neg = dm.y_embedder.y_proj(negative.to(x.dtype))        # (1, L-, hidden)
    for blk in dm.blocks:
        mods = (blk.scale_shift_table[None] + t0.reshape(b, 6, -1)).chunk(6, dim=1)
        hid = hid + mods[2] * blk.attn(t2i_modulate(blk.norm1(hid), mods[0], mods[1]), HW=(h, w))
        ca = blk.cross_attn
        q = ca.q_linear(hid)
        k, v = ca.kv_linear(y).chunk(2, dim=-1)
        k_neg, v_neg = ca.kv_linear(neg).chunk(2, dim=-1)
        z = _attn(q, k, v, ca.num_heads)
        if steer:
            rows = [support.split_heads(u.expand(len(steer), -1, -1), ca.num_heads)
                    for u in (q[steer], k[steer], v[steer], k_neg, v_neg)]
            z[steer] = support.steered_written_out(method, z[steer], *rows, alpha)
        hid = hid + ca.proj(z.to(hid.dtype))
        hid = hid + mods[5] * blk.mlp(t2i_modulate(blk.norm2(hid), mods[3], mods[4]))
    out = dm.unpatchify(dm.final_layer(hid, temb), h, w)
    return out[:, :dm.in_channels] if dm.pred_sigma else out


def _check_run_against_reference(env, mp, width, alpha, cfg=1.0, batch=1, same_lengths=False, tol=1e-4,
                                 method=None):
    """Sample one step with NASA, then hold every captured forward against ``_reference``. ``method``: (the pack's
    method object, its written form) to run NAG or VSF at ``alpha`` (that method's strength) instead."""
    pos, neg = _conds(env, width=width, neg_len=POS_LEN if same_lengths else NEG_LEN)
    dm = mp.model.diffusion_model
    nasa = env["apply"](mp, alpha=alpha) if method is None else env["adapters"].apply_nasa(mp, alpha=alpha,
                                                                                            method=method[0])
    with _Capture(dm) as cap:
        _sample(nasa, pos, neg, cfg=cfg, batch=batch)
    assert cap.calls
    for call in cap.calls:
        with torch.no_grad():
            want = _reference(dm, call, neg[0][0], alpha, None if method is None else method[1])
            base = _reference(dm, call, neg[0][0], 0.0)
        support.check_close(call["out"], want, base, tol)
    return cap.calls


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("family", FAMILIES)
def test_output_equals_independent_reference(env, family):
    """cfg 1, batch 1 (the sampler's negative, which ComfyUI drops from the model pass at cfg 1)."""
    calls = _check_run_against_reference(env, env["model"](family), env["width"](family), alpha=0.8)
    assert [c["cond_or_uncond"] for c in calls] == [[0]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, family, method):
    """NAG and VSF on every block's cross-attention (cfg 1, batch 1: VSF's one softmax over the caption's keys and
    the negative's) equal the methods written out on the reference; at zero strength the output is the unpatched
    model's, bit for bit."""
    mp = env["model"](family)
    obj, off = support.method_objects(env["core"], method)
    _check_run_against_reference(env, mp, env["width"](family), alpha=obj.strength, method=(obj, method))
    pos, neg = _conds(env, family)
    assert torch.equal(_sample(env["adapters"].apply_nasa(mp, alpha=off.strength, method=off), pos, neg),
                       _sample(mp, pos, neg))


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_two_with_cfg_steers_exactly_the_cond_rows_like_the_reference(env, family):
    """cfg 3, latent batch 2, prompt and negative of equal length: ComfyUI runs cond and uncond in one
    forward of 4 rows; the reference steers the two cond rows only."""
    calls = _check_run_against_reference(env, env["model"](family), env["width"](family), alpha=0.8, cfg=3.0,
                                         batch=2, same_lengths=True)
    assert len(calls) == 1 and sorted(calls[0]["cond_or_uncond"]) == [0, 1] and calls[0]["x"].shape[0] == 4


def test_batch_two_at_cfg_one_matches_reference(env):
    _check_run_against_reference(env, env["model"](), env["width"]("pixart"), alpha=1.0, batch=2)


def test_every_cross_attention_layer_steered_once_per_forward_with_one_pass_per_step(env):
    """Hooks on each block's kv_linear count inputs of the negative's length: one per layer per sampling run
    (cfg 1, 2 steps -> 2 model passes; step 2 reuses the projections); the caption projection embeds the
    negative once per run too, the prompt once per forward."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = _conds(env)
    negative_kv = {i: 0 for i in range(len(dm.blocks))}
    embedded, passes = [], []
    handles = [blk.cross_attn.kv_linear.register_forward_hook(
        lambda m, inp, out, i=i: negative_kv.__setitem__(i, negative_kv[i] + (inp[0].shape[-2] == NEG_LEN)))
        for i, blk in enumerate(dm.blocks)]
    handles.append(dm.y_embedder.y_proj.register_forward_hook(lambda m, inp, out: embedded.append(inp[0].shape[-2])))
    handles.append(dm.register_forward_pre_hook(lambda *a: passes.append(1)))
    try:
        _sample(env["apply"](mp, alpha=0.5), pos, neg, cfg=1.0, steps=2)
    finally:
        for h in handles:
            h.remove()
    assert len(passes) == 2
    assert len(dm.blocks) == 3 and negative_kv == {i: 1 for i in range(len(dm.blocks))}
    assert support.once_per_run(embedded, POS_LEN, NEG_LEN, 2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_alpha_zero_is_bit_identical_and_runs_the_original_forward(env, family, cfg):
    """kv_linear sees exactly the plain model's inputs: the negative is never projected at alpha 0."""
    mp = env["model"](family)
    dm = mp.model.diffusion_model
    pos, neg = _conds(env, family)
    seen = []
    h = dm.blocks[0].cross_attn.kv_linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    try:
        base = _sample(mp, pos, neg, cfg=cfg, steps=2)
        plain_inputs = list(seen)
        seen.clear()
        got = _sample(env["apply"](mp, alpha=0.0), pos, neg, cfg=cfg, steps=2)
    finally:
        h.remove()
    assert torch.equal(base, got)
    assert seen == plain_inputs and len(seen) == (2 if cfg == 1 else 4)


def test_unpatch_restores_the_original_cross_attention_forward(env):
    """While the NASA clone samples, every block's cross_attn.forward is NASA's object patch; once ComfyUI
    unloads the model, it is the layer's own MultiHeadCrossAttention.forward again."""
    import comfy.model_management
    from comfy.ldm.pixart.blocks import MultiHeadCrossAttention
    mp = env["model"]()
    layers = [blk.cross_attn for blk in mp.model.diffusion_model.blocks]
    pos, neg = _conds(env)
    during = []
    h = layers[-1].register_forward_pre_hook(lambda m, a: during.append([l.forward for l in layers]))
    try:
        _sample(env["apply"](mp), pos, neg)
    finally:
        h.remove()
    assert during and all(f.__name__ == "nasa_cross_attention" for f in during[0])
    comfy.model_management.unload_all_models()
    for layer in layers:
        assert layer.forward == MultiHeadCrossAttention.forward.__get__(layer)


def test_input_model_untouched(env):
    mp = env["model"]()
    pos, neg = _conds(env)
    opts_before, wrappers_before, objects_before = repr(mp.model_options), repr(mp.wrappers), dict(mp.object_patches)
    plain_before = _sample(mp, pos, neg)
    steered = _sample(env["apply"](mp, alpha=1.0), pos, neg)
    plain_after = _sample(mp, pos, neg)
    assert torch.equal(plain_before, plain_after) and not torch.equal(steered, plain_after)
    assert repr(mp.model_options) == opts_before and repr(mp.wrappers) == wrappers_before
    assert mp.object_patches == objects_before


def test_left_over_patch_is_inert_outside_a_nasa_forward(env):
    """ComfyUI leaves a sampled clone's object patches on the shared modules until the next load. A model
    call that does not go through NASA's wrapper (here BaseModel.apply_model with a NASA run in its options
    but not the NASA clone's wrappers) then runs the original forward: bit-identical to the unpatched layer.
    This also holds the wrapper to restoring its per-call slot after the NASA run."""
    import comfy.model_management
    mp = env["model"]()
    layers = [blk.cross_attn for blk in mp.model.diffusion_model.blocks]
    pos, neg = _conds(env)
    g = torch.Generator().manual_seed(4)
    x, sigma = torch.randn(1, 4, SIZE, SIZE, generator=g), torch.tensor([3.0])
    nasa = env["apply"](mp, alpha=1.0)
    _sample(nasa, pos, neg)
    assert all(l.forward.__name__ == "nasa_cross_attention" for l in layers)
    nasa_run = env["nasa_run"]
    run = nasa_run.NasaRun(nasa_run.negative_prompt([(neg[0][0], {})], 1.0), {}, "test",
                            layers=env["pixart"].FAMILY.layers(mp.model))

    def call(wrappers=None):
        options = {nasa_run.RUN_KEY: run, "cond_or_uncond": [0]}
        if wrappers is not None:
            options["wrappers"] = wrappers        # as the sampler passes a patcher's wrappers
        with torch.no_grad():
            return mp.model.apply_model(x, sigma, c_crossattn=pos[0][0], transformer_options=options)
    left_over = call()
    steered = call(nasa.wrappers)
    comfy.model_management.unload_all_models()
    assert all("nasa" not in l.forward.__name__ for l in layers)
    original = call()
    assert torch.equal(left_over, original) and not torch.equal(steered, original)


def test_another_nodes_cross_attention_patch_is_refused(env):
    mp = env["model"]().clone()
    mp.add_object_patch("diffusion_model.blocks.1.cross_attn.forward", lambda x, cond, mask=None: x)
    with pytest.raises(ValueError, match=r"Apply NASA Attention: another node already replaced the cross-attention "
                                         r"of PixArt block 1 .* Remove that node"):
        env["apply"](mp)


# ----------------------------------------------------------------------------- real width, the stock loader

_FULL = dict(in_channels=4, patch_size=2, hidden_size=1152, num_heads=16, depth=1)   # caption_channels: default


@pytest.fixture(scope="module", params=[("PixArtAlpha", "pixart_alpha", True), ("PixArtSigma", "pixart_sigma", False)],
                ids=["alpha", "sigma"])
def full_width(env, request):
    """PixArt at its published width (1152 hidden, 16 heads, T5 4096 captions), one block, saved as a state
    dict and loaded back through ComfyUI's own detection and loader."""
    import comfy.sd
    config_class, image_model, micro = request.param
    built = env["rm"].build_diffusion_model(config_class, dict(_FULL, image_model=image_model, micro_condition=micro),
                                            seed=0, scope=f"{image_model}_full")
    sd = built.model.diffusion_model.state_dict()
    del built
    loaded = comfy.sd.load_diffusion_model_state_dict(sd)
    del sd
    return config_class, loaded


def test_full_width_loads_through_the_stock_loader_and_steers(env, full_width):
    config_class, mp = full_width
    assert type(mp.model.model_config).__name__ == config_class
    assert env["pixart"].matches(mp) and env["pixart"].context_dim(mp) == 4096
    _check_run_against_reference(env, mp, 4096, alpha=0.5)


@pytest.mark.parametrize("clip_width", [768, 2048])
def test_clip_encoded_negative_names_node_family_and_fix(env, full_width, clip_width):
    """A negative from CLIP-L (768) or SDXL's CLIP-L+G (2048) instead of T5-XXL (4096)."""
    config_class, mp = full_width
    _, clip_negative = _conds(env, width=clip_width)
    with pytest.raises(ValueError, match=rf"Apply NASA Attention: 'negative' is {clip_width} wide but this PixArt "
                                         rf"\({config_class}\) model's text input expects 4096\. .* encode it "
                                         rf"with the same text encoder as the positive prompt"):
        env["apply"](mp, negative=clip_negative)
