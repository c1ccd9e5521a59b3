"""Helpers the family adapter tests share (imported as ``nasa_test_support``; conftest registers it).

Only plumbing lives here - sampling with ComfyUI's own sampler, counting hooks, the error bound
against a reference. Each family's independent reference of the formula stays in its own test file.
"""
from __future__ import annotations

import pytest
import torch

MISSING_FAMILY = "model family missing in this ComfyUI"
"""The one skip reason CI accepts with a ComfyUI found (tests/conftest.py)."""


def skip_missing_family(family: str, needs: str) -> None:
    """Skip a test of ``family`` on a ComfyUI version that lacks it; ``needs``: what is missing (a class name)."""
    import comfyui_version
    pytest.skip(f"{MISSING_FAMILY}: {family} ({needs} is not in ComfyUI {comfyui_version.__version__})")


def sample(model, latent, pos, neg, cfg=1.0, steps=1, capture=None, scheduler="simple", seed=1, noise=None,
           **kwargs):
    """One ``comfy.sample.sample`` run (euler) of ``latent`` on fixed noise; returns the latent.

    ``capture``: a list that receives ``(cond_denoised, uncond_denoised or None)`` of every step,
    taken by a post-CFG function on a clone of ``model``."""
    import comfy.sample
    if noise is None:
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    if capture is not None:
        model = model.clone()

        def post_cfg(args):
            capture.append((args["cond_denoised"].clone(), None if args["uncond_denoised"] is None
                            else args["uncond_denoised"].clone()))
            return args["denoised"]
        model.set_model_sampler_post_cfg_function(post_cfg)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, pos, neg, latent,
                               disable_pbar=True, seed=seed, **kwargs)


def probe(model, latent, pos, neg, sigmas, cfg=1.0, seed=1):
    """The model's denoised output at each of ``sigmas`` on one fixed input, through ComfyUI's own
    sample_custom/CFGGuider (so NASA's sampler wrapper and the conds run as in any sampler); a list."""
    import comfy.sample
    import comfy.samplers
    x = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    outs = []

    def sampler_fn(model_k, noise, sigmas_, extra_args=None, callback=None, disable=None):
        for s in sigmas_:
            outs.append(model_k(x.to(noise), s.reshape(1).expand(x.shape[0]).to(noise), **(extra_args or {})).clone())
        return noise

    comfy.sample.sample_custom(model, torch.zeros(latent.shape), cfg, comfy.samplers.KSAMPLER(sampler_fn),
                               torch.tensor(sigmas, dtype=torch.float32), pos, neg, latent, disable_pbar=True, seed=seed)
    return outs


def flux_conds(config, seed=0, pos_len=32, neg_len=40):
    """Random FLUX text-encoder outputs (T5 tokens + pooled CLIP) of a DIT_FAMILIES config's widths: (pos, neg)."""
    g = torch.Generator().manual_seed(seed)
    return tuple([[torch.randn(1, n, config["context_in_dim"], generator=g),
                   {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=g)}]] for n in (pos_len, neg_len))


class Lengths:
    """Token counts of the first input of each given module (e.g. every block's cross_attn.k), by position."""

    def __init__(self, modules):
        self.calls = {i: [] for i in range(len(modules))}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, inputs, output):
            self.calls[i].append(inputs[0].shape[1])
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class Forwards:
    """How many times the diffusion model of a ModelPatcher runs."""

    def __init__(self, mp):
        self.n = 0
        self.h = mp.model.diffusion_model.register_forward_pre_hook(self._hook)

    def _hook(self, *a):
        self.n += 1

    def close(self):
        self.h.remove()


def per_forward(lengths, forwards):
    """Split one module's token counts into ``forwards`` equal groups, each sorted."""
    n = len(lengths) // forwards
    assert n * forwards == len(lengths), lengths
    return [sorted(lengths[i * n:(i + 1) * n]) for i in range(forwards)]


def once_per_run(lengths, pos, neg, forwards):
    """Token counts of a module that takes the positive at every forward and the negative once per sampling run
    (a multi-step run reuses the negative's projection at steps 2+): is ``lengths`` exactly that?"""
    return sorted(lengths) == sorted([pos] * forwards + [neg])


def check_close(got, want, base, tol=1e-3):
    """``got`` equals the reference ``want`` within ``tol`` of NASA's effect (``want - base``), and that
    effect is large enough to test anything."""
    effect = (want - base).abs().max().item()
    err = (got - want).abs().max().item()
    assert effect > 1e-2 * base.abs().max().item(), f"NASA's effect {effect} is too small to test anything"
    assert err <= tol * effect, (err, effect)


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
