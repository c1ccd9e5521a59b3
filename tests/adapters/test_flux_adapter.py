"""NASA-I on ComfyUI's own FLUX class (random weights): tiny config, a real-width config, and the stock loader.

Held against code written here, independent of the pack:
* a float64-attention FLUX forward with the negative stream and NASA written out (``_reference``), with the
  stability guard, the embedded stream and block selections,
* hooks counting each block's text-stream projection of the negative (one per block per forward; cfg 1 runs
  one pass per step) and showing the stream stops after the last selected block,
* the negative stream after double block 0 equals the text stream of a plain forward on the negative,
* text-query rows of the first block are untouched; Kontext reference tokens are not steered,
* FLUX.1 at its published width, through ComfyUI's own loader: the reference, alpha 0 bit-identical.

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows, batches, widths, a second node, the
canary) run in test_contract.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

NEG_LEN = 300          # distinct from the positive's 256 tokens, so hooks can tell them apart


@pytest.fixture(scope="module")
def env(comfyui):
    def sampler_settings(m):
        """The NasaSettings Apply NASA Attention left on the clone (on its sampler wrapper)."""
        import comfy.patcher_extension as pe
        wrappers = m.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, comfyui.mod("adapters.binding").WRAPPER_KEY)
        return wrappers[0].nasa_settings

    return dict(cases.family_env(comfyui, "flux", flux="adapters.flux", core="nasa_core"),
                apply_nasa=comfyui.mod("adapters").apply_nasa, sampler_settings=sampler_settings)


def _sample(model, pos, neg, cfg=1.0, steps=1):
    return cases.sample(model, "flux", pos, neg, cfg, steps)


def _direct(env, mp, x, t, context, y, negative, alpha, ref_latents=None, guard=None, stream="propagated", blocks="",
            method=None):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (batch rows all positive);
    ``guard`` (a nasa_core.Guard), ``stream`` and ``method`` (nasa_core.Nag, ...) as apply_nasa takes them."""
    if guard is None and stream == "propagated" and not blocks and method is None:
        m = env["apply"](mp, negative=[[negative, {}]], alpha=alpha)
    else:
        m = env["apply_nasa"](mp, negative=[[negative, {}]], alpha=alpha, guard=guard, stream=stream, blocks=blocks,
                              method=method)
    settings = env["sampler_settings"](m)
    options = support.nasa_options(m, negative, alpha, env["nasa_run"], env["flux"].FAMILY, blocks=settings.blocks,
                                   guard=guard, stream=stream, stream_last=settings.stream_last,
                                   stream_skip=settings.stream_skip, method=method)
    with torch.no_grad():
        return m.model.diffusion_model(x, t, context, y=y, ref_latents=ref_latents, transformer_options=options)


# ----------------------------------------------------------------------------- independent reference

def _rope(x, pe):
    x_ = x.double().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0].double() * x_[..., 0] + pe[..., 1].double() * x_[..., 1]).reshape(x.shape)


def _attn(q, k, v):
    """(B, H, L, D) float64 -> (B, L, H*D): softmax written out."""
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    o = p @ v.double()
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _heads(t, heads):
    return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def _mod(x, m):
    return x * (1 + m.scale) + m.shift


def _guarded(a, steer, weight, z_neg, guard, nag=None):
    """a[:, steer] - weight * z_neg (NASA), or NAG written out (``nag`` = (tau, blend); support.nag_written_out), then
    the guard written out: per image token, norms over all channels; ``guard`` = (mode, tau) or None."""
    pos = a[:, steer].clone()
    z = pos - weight * z_neg if nag is None else support.nag_written_out(pos, z_neg, weight, *nag)
    if guard is not None:
        mode, tau = guard
        pn, zn = pos.norm(dim=-1, keepdim=True), z.norm(dim=-1, keepdim=True)
        if mode == "rescale":
            z = z * pn / zn
        elif mode == "clip":
            z = torch.where(zn > tau * pn, z * (tau * pn) / zn, z)
    a[:, steer] = z


def _reference(dm, x, t, context, y, negative, alpha, ref_latents=None, steer_references=False, guard=None,
               stream="propagated", scales=None, nag=None, vsf=None):
    """FLUX forward with NASA (``nag`` = (tau, blend): NAG at strength ``alpha`` instead; ``vsf`` = bias: VSF at
    strength ``alpha``), written from the paper's
    formula and FLUX's published block structure,
    using the model's weights; attention in float64. ``guard`` = (mode, tau): the stability guard on the
    steered tokens; ``stream="embedded"``: the negative is never updated by the blocks; ``scales``: alpha
    multiplier per ("double" | "single", index), 0 where missing (None: every block at 1)."""
    def scale(kind, index):
        return 1.0 if scales is None else scales.get((kind, index), 0.0)
    from comfy.ldm.flux.layers import timestep_embedding
    from einops import rearrange
    img, img_ids = dm.process_img(x)
    n_img = img.shape[1]
    for ref in ref_latents or []:
        kimg, kids = dm.process_img(ref, index=1)
        img, img_ids = torch.cat((img, kimg), 1), torch.cat((img_ids, kids), 1)
    b = x.shape[0]
    pe = dm.pe_embedder(torch.cat((torch.zeros(b, context.shape[1], 3), img_ids), 1))
    pe_neg = dm.pe_embedder(torch.zeros(b, negative.shape[1], 3))
    img = dm.img_in(img)
    vec = dm.time_in(timestep_embedding(t, 256)) + dm.vector_in(y)
    txt, neg = dm.txt_in(context), dm.txt_in(negative).expand(b, -1, -1)
    T, H = txt.shape[1], dm.num_heads
    steer = slice(T, None) if steer_references else slice(T, T + n_img)
    for bi, blk in enumerate(dm.double_blocks):
        im1, im2 = blk.img_mod(vec)
        tm1, tm2 = blk.txt_mod(vec)

        def qkv(attn, h, m):
            q, k, v = _heads(attn.qkv(_mod(blk.img_norm1(h) if attn is blk.img_attn else blk.txt_norm1(h), m)), H)
            q, k = attn.norm(q, k, v)
            return q, k, v
        iq, ik, iv = qkv(blk.img_attn, img, im1)
        tq, tk, tv = qkv(blk.txt_attn, txt, tm1)
        nq, nk, nv = qkv(blk.txt_attn, neg, tm1)
        q, k = _rope(torch.cat((tq, iq), 2), pe), _rope(torch.cat((tk, ik), 2), pe)
        v = torch.cat((tv, iv), 2).double()
        nq, nk = _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v)
        if scale("double", bi) and vsf is not None:
            a[:, steer] = support.steered_written_out(("vsf", vsf), None, q[:, :, steer], k, v, nk, nv,
                                                       alpha * scale("double", bi))
        elif scale("double", bi):
            _guarded(a, steer, alpha * scale("double", bi), _attn(q[:, :, steer], nk, nv), guard, nag)
        na = _attn(nq, torch.cat((nk, k[:, :, T:]), 2), torch.cat((nv.double(), v[:, :, T:]), 2))
        ta, ia = a[:, :T].float(), a[:, T:].float()
        img = img + im1.gate * blk.img_attn.proj(ia)
        img = img + im2.gate * blk.img_mlp(_mod(blk.img_norm2(img), im2))
        txt = txt + tm1.gate * blk.txt_attn.proj(ta)
        txt = txt + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(txt), tm2))
        if stream == "propagated":
            neg = neg + tm1.gate * blk.txt_attn.proj(na.float())
            neg = neg + tm2.gate * blk.txt_mlp(_mod(blk.txt_norm2(neg), tm2))
    h = torch.cat((txt, img), 1)
    for bi, blk in enumerate(dm.single_blocks):
        m, _ = blk.modulation(vec)

        def lin1(h_):
            qkv_, mlp = torch.split(blk.linear1(_mod(blk.pre_norm(h_), m)), [3 * blk.hidden_size, blk.mlp_hidden_dim], -1)
            q, k, v = _heads(qkv_, H)
            q, k = blk.norm(q, k, v)
            return q, k, v, mlp
        q, k, v, mlp = lin1(h)
        nq, nk, nv, nmlp = lin1(neg)
        q, k, nq, nk = _rope(q, pe), _rope(k, pe), _rope(nq, pe_neg), _rope(nk, pe_neg)
        a = _attn(q, k, v)
        if scale("single", bi) and vsf is not None:
            a[:, steer] = support.steered_written_out(("vsf", vsf), None, q[:, :, steer], k, v, nk, nv,
                                                       alpha * scale("single", bi))
        elif scale("single", bi):
            _guarded(a, steer, alpha * scale("single", bi), _attn(q[:, :, steer], nk, nv), guard, nag)
        na = _attn(nq, torch.cat((nk, k[:, :, T:]), 2), torch.cat((nv.double(), v[:, :, T:].double()), 2))
        h = h + m.gate * blk.linear2(torch.cat((a.float(), blk.mlp_act(mlp)), 2))
        if stream == "propagated":
            neg = neg + m.gate * blk.linear2(torch.cat((na.float(), blk.mlp_act(nmlp)), 2))
    out = dm.final_layer(h[:, T:], vec)[:, :n_img]
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=x.shape[-2] // 2, w=x.shape[-1] // 2, ph=2, pw=2)


def _inputs(config, seed=3, batch=1, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, size, size, generator=g)
    context = torch.randn(batch, 256, config["context_in_dim"], generator=g)
    y = torch.randn(batch, config["vec_in_dim"], generator=g)
    negative = torch.randn(1, NEG_LEN, config["context_in_dim"], generator=g)
    return x, torch.full((batch,), 0.7), context, y, negative


def _check_against_reference(env, mp, config, alpha=1.0, ref_latents=None, tol=1e-3, guard=None, stream="propagated",
                             blocks="", scales=None, nag=None, vsf=None):
    """``guard`` = (mode, tau) or None; ``blocks``: the node's block selection, ``scales`` the same written out;
    ``nag`` = (scale, tau, blend) or ``vsf`` = (scale, bias): that method at those settings (``alpha`` unused)."""
    method = env["core"].Nag(*nag) if nag is not None else env["core"].Vsf(*vsf) if vsf is not None else None
    alpha = alpha if method is None else method.strength
    x, t, context, y, negative = _inputs(config)
    dm = mp.model.diffusion_model
    got = _direct(env, mp, x, t, context, y, negative, alpha, ref_latents,
                  guard=None if guard is None else env["core"].Guard(*guard), stream=stream, blocks=blocks,
                  method=method)
    with torch.no_grad():
        want = _reference(dm, x, t, context, y, negative, alpha, ref_latents, guard=guard, stream=stream,
                          scales=scales, nag=None if nag is None else nag[1:], vsf=None if vsf is None else vsf[1])
        base = _reference(dm, x, t, context, y, negative, 0.0, ref_latents)
    support.check_close(got, want, base, tol)
    return got


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    mp = env["model"]()
    _check_against_reference(env, mp, env["config"])


@pytest.mark.parametrize("guard", [("rescale", 1.0), ("clip", 0.2)])
def test_guard_matches_reference(env, guard):
    """Each guard mode equals the reference with the guard written out, and changes the output (it bites)."""
    mp = env["model"]()
    got = _check_against_reference(env, mp, env["config"], alpha=1.0, guard=guard)
    plain = _direct(env, mp, *_inputs(env["config"]), 1.0)
    assert (got - plain).abs().max().item() > 1e-3 * plain.abs().max().item(), "the guard never bit: test it harder"


@pytest.mark.parametrize("nag", [(3.0, 2.0, 0.5), (5.0, 100.0, 0.25)], ids=["capped", "uncapped"])
def test_nag_matches_reference(env, nag):
    """NAG on the joint attention's image tokens (the negative stream as NASA's) equals NAG written out on the FLUX
    reference; NAG at scale 1 (and at blend 0) is the unpatched model bit for bit."""
    mp = env["model"]()
    _check_against_reference(env, mp, env["config"], nag=nag, guard=("clip", 1.5) if nag[1] > 10 else None)
    args = _inputs(env["config"])
    with torch.no_grad():
        plain = mp.model.diffusion_model(*args[:3], y=args[3])
    for off in (env["core"].Nag(scale=1.0), env["core"].Nag(scale=5.0, alpha=0.0)):
        assert torch.equal(_direct(env, mp, *args, off.strength, method=off), plain)


@pytest.mark.parametrize("vsf", [(2.0, 0.1), (3.5, -1.0)])
def test_vsf_matches_reference(env, vsf):
    """VSF on the joint attention's image tokens: one softmax over the block's own keys (text and image, RoPE) and
    the negative stream's, as written out on the FLUX reference; VSF at scale 0 is the unpatched model bit for bit."""
    mp = env["model"]()
    _check_against_reference(env, mp, env["config"], vsf=vsf)
    args = _inputs(env["config"])
    with torch.no_grad():
        plain = mp.model.diffusion_model(*args[:3], y=args[3])
    off = env["core"].Vsf(scale=0.0)
    assert torch.equal(_direct(env, mp, *args, off.strength, method=off), plain)


def test_guard_off_and_unreached_clip_are_bit_identical(env):
    mp = env["model"]()
    args = _inputs(env["config"])
    plain = _direct(env, mp, *args, 1.0)
    for guard in (env["core"].Guard("off"), env["core"].Guard("clip", 1e6)):
        assert torch.equal(_direct(env, mp, *args, 1.0, guard=guard), plain), guard


def test_embedded_stream_matches_reference_and_differs_from_propagated(env):
    mp = env["model"]()
    got = _check_against_reference(env, mp, env["config"], stream="embedded")
    propagated = _direct(env, mp, *_inputs(env["config"]), 1.0)
    assert (got - propagated).abs().max().item() > 1e-3 * propagated.abs().max().item()


def test_embedded_stream_with_guard(env):
    _check_against_reference(env, env["model"](), env["config"], stream="embedded", guard=("clip", 0.2))


@pytest.mark.parametrize("blocks,scales", [
    ("double", {("double", 0): 1.0, ("double", 1): 1.0}),
    ("single", {("single", 0): 1.0, ("single", 1): 1.0}),
    ("double:1*0.5, single:0", {("double", 1): 0.5, ("single", 0): 1.0}),
])
def test_block_selection_matches_reference(env, blocks, scales):
    """A selection steers only its blocks (the stream still flows through the others up to the last selected
    block, and stops after it: exact, nothing reads it there)."""
    _check_against_reference(env, env["model"](), env["config"], blocks=blocks, scales=scales)


def test_stream_stops_after_the_last_selected_block(env):
    """Hooks on the text-stream projections: with 'double' the single blocks never see the negative; the
    last selected block projects it (its K/V) but does not run the stream's attention output or MLP."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    seen = []
    hooks = [b.txt_attn.qkv.register_forward_hook(lambda m, i, o, n=n: seen.append(("qkv", n, i[0].shape[1])))
             for n, b in enumerate(dm.double_blocks)]
    hooks += [b.txt_mlp.register_forward_hook(lambda m, i, o, n=n: seen.append(("mlp", n, i[0].shape[1])))
              for n, b in enumerate(dm.double_blocks)]
    hooks += [b.linear1.register_forward_hook(lambda m, i, o, n=n: seen.append(("linear1", n, i[0].shape[1])))
              for n, b in enumerate(dm.single_blocks)]
    try:
        _direct(env, mp, *_inputs(env["config"]), 1.0, blocks="double")
    finally:
        for h in hooks:
            h.remove()
    negative = [s for s in seen if s[2] == NEG_LEN]
    last = len(dm.double_blocks) - 1
    assert [s for s in negative if s[0] == "qkv"] == [("qkv", n, NEG_LEN) for n in range(len(dm.double_blocks))]
    assert [s for s in negative if s[0] == "mlp"] == [("mlp", n, NEG_LEN) for n in range(last)]
    assert not [s for s in negative if s[0] == "linear1"]


def test_stream_and_guard_errors_name_node_input_and_fix(env):
    mp = env["model"]()
    neg = [[torch.zeros(1, 4, env["config"]["context_in_dim"]), {}]]
    with pytest.raises(ValueError, match=r"Apply NASA Attention: 'stream' must be one of propagated, embedded"):
        env["apply_nasa"](mp, negative=neg, stream="cached")
    with pytest.raises(ValueError, match=r"'guard' must be a nasa_core.Guard"):
        env["apply_nasa"](mp, negative=neg, guard="clip")
    unet = cases.model(env["rm"], "sd15")
    with pytest.raises(ValueError, match=r"'stream' 'embedded' applies to joint-attention models .* Set it to 'propagated'"):
        env["apply_nasa"](unet, negative=[[torch.zeros(1, 4, 64), {}]], stream="embedded")


def test_kontext_reference_tokens_are_keys_but_not_steered(env):
    """With a Kontext reference image appended after the image tokens, only the generated image's rows are
    steered: the reference (which steers exactly those rows) matches, a reference steering all rows does not."""
    mp = env["model"]()
    config = env["config"]
    ref = [torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))]
    _check_against_reference(env, mp, config, ref_latents=ref)
    x, t, context, y, negative = _inputs(config)
    got = _direct(env, mp, x, t, context, y, negative, 1.0, ref)
    with torch.no_grad():
        wrong = _reference(mp.model.diffusion_model, x, t, context, y, negative, 1.0, ref, steer_references=True)
        right = _reference(mp.model.diffusion_model, x, t, context, y, negative, 1.0, ref)
    assert (got - wrong).abs().max() > 10 * (got - right).abs().max()


def test_every_block_projects_the_negative_once_per_forward(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    pos, neg = cases.conds(env["rm"], "flux")
    with support.Lengths(support.text_projections(dm)) as lengths, support.Forwards(mp) as passes:
        _sample(env["apply"](mp, alpha=0.5), pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2                                     # cfg 1: one pass per step, no negative batch
    for (name, i), seen in lengths.calls.items():
        if name == "double":                                 # text stream: positive once, negative once
            assert sorted(seen) == [256, 256, NEG_LEN, NEG_LEN], (name, i, seen)
        else:                                                # joint [text; image] once, negative once
            assert sorted(seen) == [256 + 16, 256 + 16, NEG_LEN, NEG_LEN], (name, i, seen)


def test_negative_stream_after_first_block_equals_a_real_forward_on_the_negative(env):
    """Capture what enters double block 1's text norm: NASA's negative stream vs the text stream of an unpatched
    forward whose prompt is the negative (same image, same timestep and pooled vector)."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    x, t, context, y, negative = _inputs(env["config"])
    with support.Inputs(nasa=dm.double_blocks[1].txt_norm1) as seen:
        _direct(env, mp, x, t, context, y, negative, 1.0)
    with support.Inputs(plain=dm.double_blocks[1].txt_norm1) as real, torch.no_grad():
        dm(x, t, negative, y=y, transformer_options={})
    support.same_stream(seen["nasa"], real["plain"], NEG_LEN)


def test_only_image_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of txt_attn.proj) is bit-identical with and
    without NASA; the image tokens' (input of img_attn.proj) is not."""
    mp = env["model"]()
    blk = mp.model.diffusion_model.double_blocks[0]
    args = _inputs(env["config"])
    with support.Inputs(txt=blk.txt_attn.proj, img=blk.img_attn.proj) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == 256], seen["img"])


# ----------------------------------------------------------------------------- real width and the stock loader

@pytest.fixture(scope="module")
def full_width(env):
    """FLUX.1 at its published width (3072 hidden, 24 heads, T5 4096, pooled 768), one double + one single block,
    saved as a state dict and loaded back through ComfyUI's own detection and loader."""
    import comfy.sd
    rm = env["rm"]
    built = rm.build_diffusion_model("FluxSchnell", rm.FLUX_FULL_WIDTH, torch.float32, seed=0, scope="flux_full")
    sd = built.model.diffusion_model.state_dict()
    del built
    loaded = comfy.sd.load_diffusion_model_state_dict(sd)
    del sd
    return loaded


def test_full_width_flux_loads_through_the_stock_loader_as_schnell(env, full_width):
    assert type(full_width.model.model_config).__name__ == "FluxSchnell"
    assert env["flux"].matches(full_width)
    assert env["flux"].context_dim(full_width) == 4096


def test_full_width_flux_matches_reference_and_alpha_zero_is_identity(env, full_width):
    config = env["rm"].FLUX_FULL_WIDTH
    _check_against_reference(env, full_width, config, alpha=0.5)
    pos, neg = support.flux_conds(config, pos_len=256, neg_len=NEG_LEN)
    base = _sample(full_width, pos, neg)
    assert torch.equal(base, _sample(env["apply"](full_width, alpha=0.0), pos, neg))
    steered = _sample(env["apply"](full_width, alpha=0.5), pos, neg)
    assert torch.isfinite(steered).all() and not torch.equal(base, steered)
