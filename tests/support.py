"""Helpers the family adapter tests share (imported as ``nasa_test_support``; conftest registers it).

Only plumbing lives here - sampling with ComfyUI's own sampler, hooks that count and capture module inputs, a
NASA forward outside the sampler, the error bound against a reference, the UI-format check of workflow files, and
float64 building blocks of references (rotary embedding, attention) written out here. Each family's independent
reference of the formula stays in its own test file; the families' models, prompts and latents are declared once in
tests/adapters/family_cases.py.
"""
from __future__ import annotations

import math

import pytest
import torch

MISSING_FAMILY = "model family missing in this ComfyUI"
"""The one skip reason CI accepts with a ComfyUI found (tests/conftest.py)."""


def skip_missing_family(family: str, needs: str) -> None:
    """Skip a test of ``family`` on a ComfyUI version that lacks it; ``needs``: what is missing (a class name)."""
    import comfyui_version
    pytest.skip(f"{MISSING_FAMILY}: {family} ({needs} is not in ComfyUI {comfyui_version.__version__})")


EXAMPLE_WORKFLOWS = {  # file: --random-weights family
    "flux_schnell_1step_nasa.json": "flux",
    "flux_schnell_4step_nasa.json": "flux",
    "chroma_flash_nasa.json": "chroma",
    "sd35_turbo_4step_nasa.json": "sd35",
    "pixart_dmd_1step_nasa.json": "pixart",
    "wan21_causvid_4step_nasa.json": "wan21",
    "wan21_vace_causvid_4step_nasa.json": "wan21_vace",   # also on ComfyUI 0.3.64
    "qwen_image_lightning_8step_nasa.json": "qwen_image",
    "lumina2_nasa.json": "lumina2",
    "hidream_i1_fast_nasa.json": "hidream",       # also on ComfyUI 0.3.64
    "anima_nasa.json": "anima",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "z_image_turbo_8step_nasa.json": "z_image",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "flux2_klein_4step_nasa.json": "klein",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "longcat_image_nasa.json": "longcat_image",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "kandinsky5_image_lite_nasa.json": "kandinsky5_image",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "hunyuan_image21_distilled_nasa.json": "hunyuan_image21",   # also on ComfyUI 0.3.64
    "hunyuan_video15_nasa.json": "hunyuan_video15",   # ComfyUI 0.33+ (skip_missing_pipeline)
    "ltx2_distilled_nasa.json": "ltx2",   # ComfyUI 0.33+ (skip_missing_pipeline)
}
"""The example workflows the runner smoke-tests: file name -> its ``--random-weights`` family (tests/runner,
tests/browser)."""


def pipeline_model_class(family: str) -> str:
    """The ``comfy.supported_models`` class of the runner's ``--random-weights`` DiT ``family``, from the runner's
    own tables (its pipeline's DIT_FAMILIES entry)."""
    from nasa_runner.random_weights import dit, models
    return models.DIT_FAMILIES[dit.PIPELINES[family].dit][0]


def skip_missing_pipeline(family: str) -> None:
    """Skip a test of the runner's ``family`` (or of its example workflow) on a ComfyUI without its model class;
    the nodes and loader types of its workflow come with it (FLUX.2's EmptyFlux2LatentImage, LongCat's CLIP type)."""
    import comfy.supported_models as sm
    config_class = pipeline_model_class(family)
    if not hasattr(sm, config_class):
        skip_missing_family(family, config_class)


def sample(model, latent, pos, neg, cfg=1.0, steps=1, capture=None, scheduler="simple", seed=1, noise=None,
           **kwargs):
    """One ``comfy.sample.sample`` run (euler) of ``latent`` on fixed noise; returns the latent.

    ``capture``: a list that receives ``(cond_denoised, uncond_denoised or None)`` of every step,
    taken by a post-CFG function on a clone of ``model``."""
    import comfy.sample
    if noise is None:
        noise = random_like(latent, seed)
    if capture is not None:
        model = model.clone()

        def post_cfg(args):
            capture.append((args["cond_denoised"].clone(), None if args["uncond_denoised"] is None
                            else args["uncond_denoised"].clone()))
            return args["denoised"]
        model.set_model_sampler_post_cfg_function(post_cfg)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, pos, neg, latent,
                               disable_pbar=True, seed=seed, **kwargs)


def random_like(latent, seed=1):
    """Fixed random noise of ``latent``'s shape; for ComfyUI's NestedTensor latents (LTX-2's video + audio) one
    tensor per stream, nested alike."""
    g = torch.Generator().manual_seed(seed)
    if getattr(latent, "is_nested", False) and hasattr(latent, "tensors"):
        import comfy.nested_tensor
        return comfy.nested_tensor.NestedTensor([torch.randn(t.shape, generator=g) for t in latent.unbind()])
    return torch.randn(latent.shape, generator=g)


def flat(x):
    """A sampled latent or a model input/output as one tensor: ComfyUI's NestedTensor (LTX-2's video + audio) or a
    list of stream tensors packed as ComfyUI's sampler packs them (``comfy.utils.pack_latents``); a tensor as is."""
    if isinstance(x, (list, tuple)) or (getattr(x, "is_nested", False) and hasattr(x, "tensors")):
        import comfy.utils
        return comfy.utils.pack_latents(list(x.unbind()) if hasattr(x, "tensors") else list(x))[0]
    return x


def probe(model, latent, pos, neg, sigmas, cfg=1.0, seed=1):
    """The model's denoised output at each of ``sigmas`` on one fixed input (runner/probe.py); a list."""
    from nasa_runner.probe import denoised_at
    return denoised_at(model, latent, pos, neg, sigmas, cfg, seed)


def flux_conds(config, seed=0, pos_len=32, neg_len=40):
    """Random FLUX text-encoder outputs (T5 tokens + pooled CLIP) of a DIT_FAMILIES config's widths: (pos, neg)."""
    g = torch.Generator().manual_seed(seed)
    return tuple([[torch.randn(1, n, config["context_in_dim"], generator=g),
                   {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=g)}]] for n in (pos_len, neg_len))


class _Hooks:
    """Forward hooks that come off when closed (or at the end of a ``with`` block)."""

    handles: list

    def close(self):
        for h in self.handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Replacing(_Hooks):
    """Forward hooks (given the call's kwargs) whose return value replaces each module's output, while open:
    ``hooks`` is a list of (module, hook). The float64 references of the cross-attention families use it."""

    def __init__(self, hooks):
        self.handles = [module.register_forward_hook(hook, with_kwargs=True) for module, hook in hooks]


class Lengths(_Hooks):
    """Token counts of the first input of each given module (e.g. every block's cross_attn.k): ``calls[key]``, keyed
    by position in a list of modules or by the keys of a dict of them."""

    def __init__(self, modules):
        items = modules.items() if isinstance(modules, dict) else enumerate(modules)
        self.calls = {}
        self.handles = []
        for key, module in items:
            self.calls[key] = []
            self.handles.append(module.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, inputs, output):
            self.calls[key].append(inputs[0].shape[1])
        return hook


class Inputs(_Hooks):
    """The first input of each named module at every call, cloned: ``inputs[name]``, a list."""

    def __init__(self, **modules):
        self.inputs = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.inputs[name].append(flat(inputs[0]).clone())      # LTX-2's [video, audio]: packed
        return hook

    def __getitem__(self, name):
        return self.inputs[name]


class Forwards(_Hooks):
    """How many times the diffusion model of a ModelPatcher runs (``n``), and the batch size of each run
    (``batches``)."""

    def __init__(self, mp):
        self.n = 0
        self.batches = []
        self.handles = [mp.model.diffusion_model.register_forward_pre_hook(self._hook)]

    def _hook(self, module, args):
        self.n += 1
        self.batches.append((args[0][0] if isinstance(args[0], (list, tuple)) else args[0]).shape[0])


def text_projections(dm) -> dict:
    """Where each block of a FLUX-style model (FLUX, Chroma, HunyuanVideo) projects its text stream:
    ``{("double", i): txt_attn.qkv, ("single", i): linear1}`` (single blocks project [text; image] jointly)."""
    modules = {("double", i): blk.txt_attn.qkv for i, blk in enumerate(dm.double_blocks)}
    modules.update({("single", i): blk.linear1 for i, blk in enumerate(dm.single_blocks)})
    return modules


def per_forward(lengths, forwards):
    """Split one module's token counts into ``forwards`` equal groups, each sorted."""
    n = len(lengths) // forwards
    assert n * forwards == len(lengths), lengths
    return [sorted(lengths[i * n:(i + 1) * n]) for i in range(forwards)]


def once_per_run(lengths, pos, neg, forwards):
    """Token counts of a module that takes the positive at every forward and the negative once per sampling run
    (a multi-step run reuses the negative's projection at steps 2+): is ``lengths`` exactly that?"""
    return sorted(lengths) == sorted([pos] * forwards + [neg])


def unchanged_then_changed(unchanged, changed):
    """Inputs of two projections at alpha 0 and then alpha 1: ``unchanged`` (e.g. the text tokens' attention
    output) bit-identical, ``changed`` (the image tokens') not."""
    assert len(unchanged) == 2 and torch.equal(unchanged[0], unchanged[1])
    assert len(changed) == 2 and not torch.equal(changed[0], changed[1])


def same_stream(nasa, plain, neg_len):
    """What entered a module with the negative's ``neg_len`` tokens during a NASA forward (its negative stream)
    and during an unpatched forward whose prompt is the negative (``plain``): once each, equal within 1e-5."""
    stream, real = [s for s in nasa if s.shape[1] == neg_len], [s for s in plain if s.shape[1] == neg_len]
    assert len(stream) == 1 and len(real) == 1, (len(stream), len(real))
    torch.testing.assert_close(stream[0], real[0], rtol=1e-5, atol=1e-5)


def check_close(got, want, base, tol=1e-3):
    """``got`` equals the reference ``want`` within ``tol`` of NASA's effect (``want - base``), and that
    effect is large enough to test anything."""
    effect = (want - base).abs().max().item()
    err = (got - want).abs().max().item()
    assert effect > 1e-2 * base.abs().max().item(), f"NASA's effect {effect} is too small to test anything"
    assert err <= tol * effect, (err, effect)


def nasa_options(m, negative, alpha, nasa_run, family, **run_kwargs):
    """transformer_options for one diffusion-model forward of the NASA clone ``m`` outside a sampler: a NasaRun built
    by hand (``negative``, a tensor, at ``alpha``; ``run_kwargs`` as NasaRun takes them) with every row positive,
    and the patcher's wrappers, which the sampler passes there (comfy.sampler_helpers). ``nasa_run``: the pack's
    adapters.run; ``family``: its Family."""
    run = nasa_run.NasaRun(nasa_run.negative_prompt([(negative, {})], alpha), {}, "test",
                           layers=family.layers(m.model), **run_kwargs)
    options = dict(m.model_options["transformer_options"])
    options.update({nasa_run.RUN_KEY: run, "cond_or_uncond": [0], "wrappers": m.wrappers})
    return options


def apply_nasa(mp, **kw):
    """Apply NASA Attention, run as ComfyUI runs the node (alpha 1 and the sampler's negative by default)."""
    import nodes
    kw.setdefault("alpha", 1.0)
    kw.setdefault("use_sampler_negative", True)
    return nodes.NODE_CLASS_MAPPINGS["NASAApplyAttention"].execute(model=mp, **kw).result[0]


def apply_nasa_advanced(mp, **kw):
    """Apply NASA Attention (Advanced), run as ComfyUI runs the node (alpha 1, the sampler's negative, the whole
    schedule and every block by default)."""
    import nodes
    args = dict(alpha=1.0, use_sampler_negative=True, start_percent=0.0, end_percent=1.0, alpha_end_scale=1.0,
                blocks="")
    args.update(kw)
    return nodes.NODE_CLASS_MAPPINGS["NASAApplyAttentionAdvanced"].execute(model=mp, **args).result[0]


def sharpen_rms_norms(dm, seed=0):
    """Give every torch RMSNorm of ``dm`` random weights around 1, so a reference that skipped one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in dm.modules():
            if isinstance(m, torch.nn.RMSNorm) and m.weight is not None:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))


class TinyEps(torch.nn.Module):
    """The trainer tests' network: eps(x_t, t, cond[, negative=(neg_cond, alpha)]), two convolutions with
    FiLM by a linear map of the condition vector and t. With a negative the FiLM vector is
    film(cond) - alpha * film(neg): NASA's subtraction at the one place this network reads its text."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.film = torch.nn.Linear(9, 16)
        self.out = torch.nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x, t, cond, negative=None):
        tt = (t.float() / 1000)[:, None]
        f = self.film(torch.cat([cond, tt], 1))
        if negative is not None:
            neg, alpha = negative
            f = f - alpha * self.film(torch.cat([neg, tt], 1))
        return self.out(torch.nn.functional.silu(self.inp(x) * (1 + f)[:, :, None, None]))


def head_major_attention(q, k, v, heads, mask=None):
    """nasa_core.attention's result as attention kernels produce it before the output reshape: (B, H, Lq, D)."""
    import nasa_core
    out = nasa_core.attention(q, k, v, heads, mask)
    b, lq, c = out.shape
    return out.reshape(b, lq, heads, c // heads).transpose(1, 2)


def steered_layers(model) -> frozenset:
    """The layers ((group, index)) NASA steered in the last sampling run of ``model`` (a patched clone): what
    its sampler wrapper recorded."""
    import comfy.patcher_extension as pe
    wrappers = model.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, "nasa")
    assert len(wrappers) == 1, f"expected NASA's one sampler wrapper, found {len(wrappers)}"
    return wrappers[0].last_steered


def all_layers(family, model) -> frozenset:
    """Every (group, index) layer the family's block selection may name (``family``: an adapters.family.Family):
    what a canary expects steered."""
    return frozenset((group, i) for group, indices in family.block_groups(model).items() for i in indices)


def check_ui_workflow(wf: dict) -> None:
    """A UI-format workflow file as the frontend saves it: version 0.4, unique node ids and the id counters past
    them, every link recorded on both of its ends with the same type, every node with the frontend's keys."""
    assert wf["version"] == 0.4 and wf["groups"] == [] and wf["config"] == {} and wf["extra"] == {}
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] == max(ids)
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, slot, dst, dslot, typ in wf["links"]:
        assert lid in nodes[src]["outputs"][slot]["links"] and nodes[src]["outputs"][slot]["type"] == typ
        assert nodes[dst]["inputs"][dslot]["link"] == lid and nodes[dst]["inputs"][dslot]["type"] == typ
    for n in wf["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(n)


# ----------------------------------------------------------------------------- several processes (torchrun on CPU)

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(procs: int, script, args, timeout: int = 600, ok: bool = True, **env) -> str:
    """Run ``script`` with ``args`` in one process, or in ``procs`` under ``torch.distributed.run`` on a free
    loopback port (gloo on CPU); ``env``: extra variables (OMP_NUM_THREADS is 1). Its stdout; the exit status must
    be 0 (``ok``) or not."""
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(script)] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port),
         str(script)]
    variables = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    variables.update(OMP_NUM_THREADS="1", **env)
    done = subprocess.run(cmd + [str(a) for a in args], env=variables, capture_output=True, text=True,
                          timeout=timeout)
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def load_by_path(name: str, path):
    """Import the file ``path`` as module ``name`` (a test file, for a worker process to reuse its builders)."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- reference building blocks

def nag_written_out(pos, z_neg, weight, tau, blend):
    """NAG (Normalized Attention Guidance) on float64 (rows, tokens, channels) attention outputs, written from the
    paper: guided = Z+ + weight (Z+ - Z-); where its per-token L1 norm over the channels exceeds tau times Z+'s, it is
    scaled down to that; the result is Z+ + blend (guided - Z+). ``weight`` is the paper's scale (nag_scale - 1)."""
    pos, z_neg = pos.double(), z_neg.double()
    guided = pos + weight * (pos - z_neg)
    ratio = guided.abs().sum(-1, keepdim=True).clamp_min(1e-6) / pos.abs().sum(-1, keepdim=True).clamp_min(1e-6)
    capped = torch.where(ratio > tau, guided * tau / ratio, guided)
    return pos + blend * (capped - pos)


def vsf_written_out(q, k_pos, v_pos, k_neg, v_neg, heads, scale, bias):
    """VSF (Value Sign Flip) on (rows, tokens, channels) projections, written from the paper in float64: one softmax
    per head over the positive keys and the negative's, the negative's logits + ``bias``, against [V+; -scale V-]."""
    b, lq, c = q.shape
    out = steered_written_out(("vsf", bias), None, *(split_heads(t.expand(b, -1, -1), heads)
                                                   for t in (q, k_pos, v_pos, k_neg, v_neg)), scale)
    return out.reshape(b, lq, c)


def split_heads(t, heads):
    """(B, L, heads*D) -> (B, heads, L, D)."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


# The methods every family's reference is checked with (NAG at scale 3, VSF at scale 2): written out as
# ("nag", tau, blend) or ("vsf", bias); method_objects gives the pack's objects for them.
METHODS = [pytest.param(("nag", 2.0, 0.5), id="nag"), pytest.param(("vsf", 0.1), id="vsf")]


def method_objects(core, written):
    """(the pack's method for the written-out ``written``, the same method switched off); ``core``: nasa_core."""
    if written[0] == "nag":
        return core.Nag(scale=3.0, tau=written[1], alpha=written[2]), core.Nag(scale=1.0)
    return core.Vsf(scale=2.0, bias=written[1]), core.Vsf(scale=0.0)


def steered_written_out(method, pos, q, k, v, nk, nv, weight, mask=None):
    """The steered rows of one attention, written out in float64 on (B, H, L, D) projections -> (B, L, H*D).
    ``q``: the steered rows' queries; ``k``, ``v``: the keys and values they attend to (``mask``: an additive bias on
    those logits); ``nk``, ``nv``: the negative's; ``pos``: the rows' attention output without steering (unused by
    VSF). ``method``: None (NASA: Z+ - weight Z-), ("nag", tau, blend) (:func:`nag_written_out`, weight = the
    paper's scale) or ("vsf", bias) (one softmax over [K; K-], the negative's logits + bias, against [V; -weight V-])."""
    d = q.shape[-1]
    q, k, v, nk, nv = (t.double() for t in (q, k, v, nk, nv))

    def softmax_attention(scores, values):
        o = torch.softmax(scores, dim=-1) @ values
        return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)
    neg_scores = q @ nk.transpose(-1, -2) / math.sqrt(d)
    if method is not None and method[0] == "vsf":
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + (0 if mask is None else mask.double())
        return softmax_attention(torch.cat((scores, neg_scores + method[1]), -1), torch.cat((v, -weight * nv), 2))
    z_neg = softmax_attention(neg_scores, nv)
    if method is None:
        return pos.double() - weight * z_neg
    assert method[0] == "nag", method
    return nag_written_out(pos, z_neg, weight, *method[1:])


def reference_rotary(x, ids, axes_dim, theta=10000):
    """Rotary embedding written out (independent of the pack and of ComfyUI's RoPE kernels): (B, L, heads, D) by positions ids (B, L, axes), float64."""
    angles = torch.cat([ids[..., a, None].double() * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
                        for a, d in enumerate(axes_dim)], dim=-1)[:, :, None]
    x = x.double().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack((x0 * angles.cos() - x1 * angles.sin(), x0 * angles.sin() + x1 * angles.cos()), -1).flatten(-2)


def reference_attention(q, k, v):
    """(B, L, heads, D) -> (B, L, heads*D), softmax in float64."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    return o.transpose(1, 2).flatten(2)
