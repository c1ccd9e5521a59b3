"""NASA-I on ComfyUI's own HiDream-I1 class (random weights, tiny config from runner.random_weights.models: 2 double
and 2 single blocks, MoE feed-forwards, T5 48 wide, 3 Llama layers 40 wide).

Held against code written here, independent of the pack:
* a float64-attention HiDream forward with the negative stream and NASA written out (``_reference``): T5 and the
  last Llama layer through their caption projections, each block's own Llama layer appended to the text (positive
  and negative alike) and cut off after it, the MoE feed-forward written out (gate softmax, top 2 of 4 experts
  unnormalised, plus the shared expert), RoPE written out (text positions zero); also with the embedded stream and
  with block selections,
* the negative stream after double block 0 (what enters block 1's text norm) and after the last double block (what
  enters single block 0) equals the text of a plain forward on the negative prompt (its T5 tokens and its Llama
  states, same image, timestep and pooled vector),
* text query rows of the first block are untouched; every block projects the negative once per forward at cfg 1,
* a negative without Llama states (or of another Llama width) and HiDream-E1's ``image_cond`` are refused with
  errors naming the node and the fix,
* on the MoE model, the generic checks that hold for it: alpha 0 bit-identical at cfg 1 and cfg > 1, every layer
  steered, finite in bfloat16, and at cfg > 1 in one batch the uncond rows within rounding (ComfyUI's MoE runs a
  batch's tokens through each expert together, which couples its rows at that level by itself).

The generic checks (alpha 0, finite in fp32/bf16, cfg > 1 uncond rows bit for bit, batches, widths, a second node,
the canary, torch.compile) run in test_contract.py and test_speed_stack.py on the "hidream_dense" case: the same
model with dense feed-forwards, where they hold bit for bit (ComfyUI's MoE also graph-breaks torch.compile on its
routing at every call, so NASA's MoE calls on the stream add breaks there).
"""
from __future__ import annotations

import pytest
import torch

import nasa_family_cases as cases
import nasa_test_support as support

CASE = "hidream_dense"          # the contract case (dense feed-forwards); the MoE model is built here
POS_LEN, NEG_LEN = cases.CASES[CASE].pos_len, cases.CASES[CASE].neg_len


def _llama_len(n):
    return n // 2 + 3          # as family_cases draws them


POS_TEXT, NEG_TEXT = POS_LEN + 2 * _llama_len(POS_LEN), NEG_LEN + 2 * _llama_len(NEG_LEN)   # inside a block


@pytest.fixture(scope="module")
def env(comfyui):
    cases.skip_if_missing(CASE)
    rm = comfyui.mod("runner.random_weights.models")
    built = {}

    def moe_model(**overrides):
        """The published structure's tiny model (MoE feed-forwards), RMS norm weights drawn around 1."""
        key = tuple(sorted(overrides.items()))
        if key not in built:
            mp = rm.build_dit_model("hidream", **overrides)
            support.sharpen_rms_norms(mp.model.diffusion_model)
            built[key] = mp
        return built[key]

    def sampler_settings(m):
        import comfy.patcher_extension as pe
        wrappers = m.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, comfyui.mod("adapters.binding").WRAPPER_KEY)
        return wrappers[0].nasa_settings

    return dict(cases.family_env(comfyui, CASE, hidream="adapters.hidream", pack="adapters", core="nasa_core"),
                model=moe_model,
                dense=lambda: cases.model(rm, CASE), apply_nasa=comfyui.mod("adapters").apply_nasa,
                sampler_settings=sampler_settings)


def _inputs(config, batch=1, seed=3):
    g = torch.Generator().manual_seed(seed)
    layers, t5, llama = max(config["llama_layers"]) + 1, config["caption_channels"][0], config["caption_channels"][1]
    x = torch.randn(batch, 16, 8, 8, generator=g)
    y = torch.randn(batch, config["text_emb_dim"], generator=g)
    context = torch.randn(batch, POS_LEN, t5, generator=g)
    ll = torch.randn(batch, layers, _llama_len(POS_LEN), llama, generator=g)
    negative = torch.randn(1, NEG_LEN, t5, generator=g)
    neg_ll = torch.randn(1, layers, _llama_len(NEG_LEN), llama, generator=g)
    t = torch.tensor([0.7, 0.3][:batch]) if batch <= 2 else torch.full((batch,), 0.5)
    return x, t, y, context, ll, negative, neg_ll


def _direct(env, mp, x, t, y, context, ll, negative, neg_ll, alpha, stream="propagated", blocks="", method=None,
            **extra):
    """One diffusion-model forward of the NASA clone of ``mp`` with a NasaRun built by hand (every row positive),
    the negative's Llama states in its options as the text encoder puts them there. The clone is loaded as the
    sampler loads it, which applies its object patches. ``method``: nasa_core.Nag / Vsf at strength ``alpha``."""
    import comfy.model_management
    run_mod = env["nasa_run"]
    neg = [[negative, {"conditioning_llama3": neg_ll}]]
    m = env["apply_nasa"](mp, negative=neg, alpha=alpha, stream=stream, blocks=blocks, method=method)
    settings = env["sampler_settings"](m)
    run = run_mod.NasaRun(run_mod.negative_prompt([(negative, {"conditioning_llama3": neg_ll})], alpha), {}, "test",
                          layers=env["hidream"].FAMILY.layers(m.model), blocks=settings.blocks, stream=stream,
                          stream_last=settings.stream_last, stream_skip=settings.stream_skip, method=method)
    options = dict(m.model_options["transformer_options"])
    options.update({run_mod.RUN_KEY: run, "cond_or_uncond": [0], "wrappers": m.wrappers})
    comfy.model_management.load_models_gpu([m])
    with torch.no_grad():
        return m.model.diffusion_model(x, t, y, context, ll, transformer_options=options, **extra)


# ----------------------------------------------------------------------------- independent reference

def _moe(ff, x):
    """A HiDream feed-forward written out: a dense SwiGLU as is; a mixture of experts as gate softmax, the top
    ``num_activated_experts`` scores as weights (not renormalised), weighted experts plus the shared expert."""
    if not hasattr(ff, "experts"):
        return ff(x)
    flat = x.reshape(-1, x.shape[-1])
    scores = torch.softmax(flat @ ff.gate.weight.t().to(flat.dtype), dim=-1)
    top, idx = scores.topk(ff.num_activated_experts, dim=-1)
    out = ff.shared_experts(flat)
    for e, expert in enumerate(ff.experts):
        weight = (top * (idx == e)).sum(-1, keepdim=True)
        out = out + weight * expert(flat)
    return out.reshape(x.shape)


def _mod(norm, x, shift, scale):
    return norm(x) * (1 + scale) + shift


def _reference(dm, x, t, y, context, ll, negative, neg_ll, alpha, stream="propagated", scales=None, method=None):
    """HiDream forward with NASA (``method`` ("nag", tau, blend) or ("vsf", bias): that method at strength ``alpha``,
    support.steered_written_out), written from the paper's formula and HiDream's published block structure using
    the model's weights; attention in float64. ``scales``: alpha multiplier per ("double" | "single", index), 0
    where missing (None: every block at 1); ``stream="embedded"``: the negative is never updated by the blocks."""
    from einops import rearrange

    def scale(kind, i):
        return 1.0 if scales is None else scales.get((kind, i), 0.0)
    b, p = x.shape[0], dm.patch_size
    hp, wp = x.shape[-2] // p, x.shape[-1] // p
    img = dm.x_embedder.proj(rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p))
    n_img = img.shape[1]
    adaln = dm.t_embedder(t, x.dtype) + dm.p_embedder(y)
    n_blocks = len(dm.llama_layers)

    def texts(t5, states):
        per_block = [dm.caption_projection[i](states[:, dm.llama_layers[i]]) for i in range(n_blocks)]
        return torch.cat((dm.caption_projection[-1](t5), per_block[-1]), 1), per_block
    txt, txt_ll = texts(context, ll)
    neg, neg_ll_p = texts(negative, neg_ll)
    neg, neg_ll_p = neg.expand(b, -1, -1), [n.expand(b, -1, -1) for n in neg_ll_p]
    rows, cols = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    img_ids = torch.stack((torch.zeros_like(rows), rows, cols), -1).reshape(1, -1, 3).expand(b, -1, -1)
    axes = dm.pe_embedder.axes_dim

    def rot(q, n_text, with_image=True):
        ids = torch.zeros(b, n_text, 3)
        if with_image:
            ids = torch.cat((img_ids.float(), ids), 1)
        return support.reference_rotary(q, ids, axes)

    def heads(t_, attn):
        return t_.unflatten(-1, (attn.heads, -1))

    def joint(q, k, v, qn, kn, vn, kind, i):
        """Joint attention over [image; text], steered on the image rows, and the stream's own attention."""
        a = support.reference_attention(q, k, v)
        if scale(kind, i):
            a[:, :n_img] = support.steered_written_out(method, a[:, :n_img], *(t_.transpose(1, 2) for t_ in (
                q[:, :n_img], k, v, kn, vn)), alpha * scale(kind, i))
        na = support.reference_attention(qn, torch.cat((kn, k[:, :n_img]), 1), torch.cat((vn.double(), v[:, :n_img].double()), 1))
        return a.float(), na.float()

    for i, holder in enumerate(dm.double_stream_blocks):
        blk, attn = holder.block, holder.block.attn1
        si, ci, gi, smi, cmi, gmi, st, ct, gt, smt, cmt, gmt = blk.adaLN_modulation(adaln)[:, None].chunk(12, dim=-1)
        text, ntext = torch.cat((txt, txt_ll[i]), 1), torch.cat((neg, neg_ll_p[i]), 1)
        ni, nt, nn = _mod(blk.norm1_i, img, si, ci), _mod(blk.norm1_t, text, st, ct), _mod(blk.norm1_t, ntext, st, ct)

        def qkv_t(h):
            return (heads(attn.q_rms_norm_t(attn.to_q_t(h)), attn), heads(attn.k_rms_norm_t(attn.to_k_t(h)), attn),
                    heads(attn.to_v_t(h), attn))
        qi, ki, vi = (heads(attn.q_rms_norm(attn.to_q(ni)), attn), heads(attn.k_rms_norm(attn.to_k(ni)), attn),
                      heads(attn.to_v(ni), attn))
        qt, kt, vt = qkv_t(nt)
        qn, kn, vn = qkv_t(nn)
        q, k = rot(torch.cat((qi, qt), 1), text.shape[1]), rot(torch.cat((ki, kt), 1), text.shape[1])
        v = torch.cat((vi, vt), 1)
        a, na = joint(q, k, v, rot(qn, ntext.shape[1], False), rot(kn, ntext.shape[1], False), vn, "double", i)
        img = gi * attn.to_out(a[:, :n_img]) + img
        text = gt * attn.to_out_t(a[:, n_img:]) + text
        img = gmi * _moe(blk.ff_i, _mod(blk.norm3_i, img, smi, cmi)) + img
        text = gmt * blk.ff_t(_mod(blk.norm3_t, text, smt, cmt)) + text
        txt = text[:, :txt.shape[1]]
        if stream == "propagated":
            ntext = gt * attn.to_out_t(na) + ntext
            ntext = gmt * blk.ff_t(_mod(blk.norm3_t, ntext, smt, cmt)) + ntext
            neg = ntext[:, :neg.shape[1]]
    n_double = len(dm.double_stream_blocks)
    for j, holder in enumerate(dm.single_stream_blocks):
        blk, attn = holder.block, holder.block.attn1
        s, c, g, sm, cm, gm = blk.adaLN_modulation(adaln)[:, None].chunk(6, dim=-1)
        h = torch.cat((img, txt, txt_ll[n_double + j]), 1)
        ntext = torch.cat((neg, neg_ll_p[n_double + j]), 1)

        def qkv(h_):
            return (heads(attn.q_rms_norm(attn.to_q(h_)), attn), heads(attn.k_rms_norm(attn.to_k(h_)), attn),
                    heads(attn.to_v(h_), attn))
        q, k, v = qkv(_mod(blk.norm1_i, h, s, c))
        qn, kn, vn = qkv(_mod(blk.norm1_i, ntext, s, c))
        q, k = rot(q, h.shape[1] - n_img), rot(k, h.shape[1] - n_img)
        a, na = joint(q, k, v, rot(qn, ntext.shape[1], False), rot(kn, ntext.shape[1], False), vn, "single", j)
        h = g * attn.to_out(a) + h
        h = gm * _moe(blk.ff_i, _mod(blk.norm3_i, h, sm, cm)) + h
        img, txt = h[:, :n_img], h[:, n_img:n_img + txt.shape[1]]
        if stream == "propagated":
            ntext = g * attn.to_out(na) + ntext
            ntext = gm * _moe(blk.ff_i, _mod(blk.norm3_i, ntext, sm, cm)) + ntext
            neg = ntext[:, :neg.shape[1]]
    out = dm.final_layer(img, adaln)
    return -rearrange(out, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=hp, w=wp, p1=p, p2=p)


def _check_against_reference(env, mp, alpha=1.0, batch=2, stream="propagated", blocks="", scales=None, tol=1e-3):
    args = _inputs(env["config"], batch)
    got = _direct(env, mp, *args, alpha, stream=stream, blocks=blocks)
    dm = mp.model.diffusion_model
    with torch.no_grad():
        want = _reference(dm, *args, alpha, stream=stream, scales=scales)
        base = _reference(dm, *args, 0.0)
    support.check_close(got, want, base, tol)
    return got


# ----------------------------------------------------------------------------- tests

def test_matches_independent_reference(env):
    """Two rows at different timesteps (per-row modulation of the stream), MoE model."""
    _check_against_reference(env, env["model"]())


@pytest.mark.parametrize("method", support.METHODS)
def test_nag_and_vsf_equal_their_references(env, method):
    """NAG and VSF on the joint attention's image rows (MoE model, two rows at different timesteps); VSF's softmax
    over the block's image, text and Llama keys and the negative stream's. At zero strength the output is the
    unpatched model's, bit for bit."""
    obj, off = support.method_objects(env["core"], method)
    mp = env["model"]()
    args = _inputs(env["config"], 2)
    dm = mp.model.diffusion_model
    got = _direct(env, mp, *args, obj.strength, method=obj)
    with torch.no_grad():
        want = _reference(dm, *args, obj.strength, method=method)
        base = _reference(dm, *args, 0.0)
        plain = dm(*args[:5], transformer_options={})
    support.check_close(got, want, base)
    assert torch.equal(_direct(env, mp, *args, off.strength, method=off), plain)


def test_dense_model_matches_independent_reference(env):
    _check_against_reference(env, env["dense"]())


def test_embedded_stream_matches_reference_and_differs_from_propagated(env):
    mp = env["model"]()
    got = _check_against_reference(env, mp, stream="embedded")
    propagated = _direct(env, mp, *_inputs(env["config"], 2), 1.0)
    assert (got - propagated).abs().max().item() > 1e-3 * propagated.abs().max().item()


@pytest.mark.parametrize("blocks,scales", [
    ("double", {("double", 0): 1.0, ("double", 1): 1.0}),
    ("single", {("single", 0): 1.0, ("single", 1): 1.0}),
    ("double:1*0.5, single:0", {("double", 1): 0.5, ("single", 0): 1.0}),
])
def test_block_selection_matches_reference(env, blocks, scales):
    _check_against_reference(env, env["model"](), blocks=blocks, scales=scales)


def test_alpha_zero_is_the_plain_forward(env):
    mp = env["model"]()
    args = _inputs(env["config"], 2)
    x, t, y, context, ll = args[:5]
    got = _direct(env, mp, *args, 0.0)
    with torch.no_grad():
        plain = mp.model.diffusion_model(x, t, y, context, ll, transformer_options={})
    assert torch.equal(got, plain)


@pytest.mark.parametrize("where", ["double", "single"])
def test_negative_stream_equals_a_real_forward_on_the_negative(env, where):
    """What enters double block 1's text norm (after double block 0), or single block 0's norm (after the last
    double block; a 1-double-block model there, so that it is again the first block's output): NASA's negative
    stream vs the text of an unpatched forward whose prompt is the negative (its T5 tokens and Llama states; same
    image, timestep and pooled vector)."""
    mp = env["model"]() if where == "double" else env["model"](num_layers=1, llama_layers=(0, 1, 2))
    dm = mp.model.diffusion_model
    x, t, y, context, ll, negative, neg_ll = _inputs(env["config"], 1)
    module = dm.double_stream_blocks[1].block.norm1_t if where == "double" else dm.single_stream_blocks[0].block.norm1_i
    with support.Inputs(nasa=module) as seen:
        _direct(env, mp, x, t, y, context, ll, negative, neg_ll, 1.0)
    with support.Inputs(plain=module) as real, torch.no_grad():
        dm(x, t, y, negative, neg_ll, transformer_options={})
    stream_len = NEG_TEXT
    if where == "single":       # the real forward enters single blocks with [image; text; Llama]: its text part
        n_img = 16
        real = {"plain": [r[:, n_img:] for r in real["plain"]]}
    support.same_stream(seen["nasa"], real["plain"], stream_len)


def test_only_image_queries_are_steered(env):
    """In double block 0 the text tokens' attention output (input of to_out_t) is bit-identical with and without
    NASA; the image tokens' (input of to_out) is not."""
    mp = env["model"]()
    attn = mp.model.diffusion_model.double_stream_blocks[0].block.attn1
    args = _inputs(env["config"], 1)
    with support.Inputs(txt=attn.to_out_t, img=attn.to_out) as seen:
        _direct(env, mp, *args, 0.0)
        _direct(env, mp, *args, 1.0)
    support.unchanged_then_changed([s for s in seen["txt"] if s.shape[1] == POS_TEXT], seen["img"])


def test_every_block_projects_the_negative_once_per_forward(env):
    """cfg 1, two steps: each block projects the positive's text (double: to_q_t; single: to_q on [image; text])
    and the negative stream once per forward; no pass for the negative."""
    mp = env["model"]()
    dm = mp.model.diffusion_model
    modules = {("double", i): b.block.attn1.to_q_t for i, b in enumerate(dm.double_stream_blocks)}
    modules.update({("single", i): b.block.attn1.to_q for i, b in enumerate(dm.single_stream_blocks)})
    pos, neg = cases.conds(env["rm"], CASE)
    with support.Lengths(modules) as lengths, support.Forwards(mp) as passes:
        cases.sample(env["apply"](mp, alpha=0.5), CASE, pos, neg, cfg=1.0, steps=2)
    assert passes.n == 2
    for (kind, i), seen in lengths.calls.items():
        text = POS_TEXT if kind == "double" else 16 + POS_TEXT
        assert sorted(seen) == sorted([text, text, NEG_TEXT, NEG_TEXT]), (kind, i, seen)


def test_moe_model_at_cfg_above_one_keeps_uncond_rows_within_rounding(env):
    """cond and uncond in one batch (same prompt lengths): the uncond prediction equals the plain model's within
    float rounding (ComfyUI's MoE runs a batch's tokens through each expert together), the cond one is steered."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], CASE, neg_len=POS_LEN)
    plain, steered = [], []
    with support.Forwards(mp) as runs:
        cases.sample(mp, CASE, pos, neg, cfg=3.0, steps=2, capture=plain)
    cases.sample(env["apply"](mp, alpha=1.0), CASE, pos, neg, cfg=3.0, steps=2, capture=steered)
    assert runs.batches == [2, 2]
    torch.testing.assert_close(steered[0][1], plain[0][1], rtol=1e-5, atol=1e-5)
    assert (steered[0][0] - plain[0][0]).abs().max() > 1e-2 * plain[0][0].abs().max()


def test_negative_without_llama_states_is_refused(env):
    mp = env["model"]()
    config = env["config"]
    pos, neg = cases.conds(env["rm"], CASE)
    bare = [[neg[0][0], {"pooled_output": neg[0][1]["pooled_output"]}]]
    with pytest.raises(ValueError, match=r"^Apply NASA Attention: the negative prompt has no Llama 3.1 states "
                                         r"\('conditioning_llama3'.*Encode the negative with the same HiDream text "
                                         r"encoder"):
        cases.sample(env["apply"](mp, negative=bare), CASE, pos, neg)
    narrow = [[neg[0][0], {"conditioning_llama3": torch.zeros(1, 3, 5, config["caption_channels"][1] + 8)}]]
    with pytest.raises(ValueError, match=r"^Apply NASA Attention: the negative prompt's Llama 3.1 states .* have "
                                         r"shape \(1, 3, 5, 48\); this HiDream-I1 model takes \(1, at least 3 layers, "
                                         r"tokens, 40\)"):
        cases.sample(env["apply"](mp, negative=narrow), CASE, pos, neg)


def test_sampler_negative_reads_its_own_llama_states(env):
    """The sampler's negative (use_sampler_negative) carries its Llama states in its conditioning as the wired one
    does: both steer alike."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], CASE)
    sampler = cases.sample(env["apply"](mp, alpha=1.0), CASE, pos, neg)
    wired = cases.sample(env["apply"](mp, alpha=1.0, negative=neg, use_sampler_negative=False), CASE, pos, neg)
    assert torch.equal(sampler, wired)
    other = [[neg[0][0], {**neg[0][1], "conditioning_llama3": torch.randn(neg[0][1]["conditioning_llama3"].shape)}]]
    moved = cases.sample(env["apply"](mp, alpha=1.0, negative=other, use_sampler_negative=False), CASE, pos, neg)
    assert not torch.equal(moved, wired), "the negative's Llama states were not read"


def test_hidream_e1_image_cond_is_refused(env):
    """A reference image in the positive's conditioning (HiDream-E1's concat_latent_image -> image_cond): refused
    when NASA would steer, untouched at alpha 0."""
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], CASE)
    edit = [[pos[0][0], {**pos[0][1], "concat_latent_image": torch.randn(1, 16, 8, 8)}]]
    plain = cases.sample(mp, CASE, edit, neg)      # the plain model runs it; NASA at alpha 0 leaves it alone
    assert torch.equal(cases.sample(env["apply"](mp, alpha=0.0), CASE, edit, neg), plain)
    with pytest.raises(ValueError, match=r"^Apply NASA Attention: this HiDream run edits an image \(HiDream-E1.*"
                                         r"Bypass the NASA node for this run"):
        cases.sample(env["apply"](mp, alpha=1.0), CASE, edit, neg)


def test_neighbours_refuse_each_other(env):
    """HiDream's adapter claims no other family's model, and no other family claims HiDream."""
    adapters = env["hidream"]
    mp = env["model"]()
    assert adapters.matches(mp)
    flux = cases.model(env["rm"], "flux")
    assert not adapters.matches(flux)
    assert [f for f in env["pack"].FAMILIES if f.matches(mp)] == [adapters.FAMILY]


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_moe_model_alpha_zero_is_bit_identical(env, cfg):
    mp = env["model"]()
    pos, neg = cases.conds(env["rm"], CASE, neg_len=POS_LEN)      # cfg > 1: cond and uncond in one batch
    base = cases.sample(mp, CASE, pos, neg, cfg=cfg, steps=2)
    assert torch.equal(cases.sample(env["apply"](mp, alpha=0.0), CASE, pos, neg, cfg=cfg, steps=2), base)
    assert torch.equal(cases.sample(env["apply"](mp, alpha=0.0, negative=neg), CASE, pos, neg, cfg=cfg, steps=2), base)


def test_moe_model_steers_every_layer_and_stays_finite_in_bfloat16(env):
    mp = env["model"]()
    dm = mp.model.diffusion_model
    expected = frozenset([("double", i) for i in range(len(dm.double_stream_blocks))]
                         + [("single", i) for i in range(len(dm.single_stream_blocks))])
    assert support.all_layers(env["hidream"].FAMILY, mp) == expected
    pos, neg = cases.conds(env["rm"], CASE)
    m = env["apply"](mp, alpha=0.5)
    assert torch.isfinite(cases.sample(m, CASE, pos, neg)).all()
    assert support.steered_layers(m) == expected
    low = env["rm"].build_dit_model("hidream", dtype=torch.bfloat16)
    support.sharpen_rms_norms(low.model.diffusion_model)
    low.set_model_compute_dtype(torch.bfloat16)
    plain = cases.sample(low, CASE, pos, neg)
    steered = cases.sample(env["apply"](low, alpha=1.0), CASE, pos, neg)
    assert torch.isfinite(steered).all() and not torch.equal(steered, plain)
