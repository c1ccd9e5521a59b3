"""The model's denoised output at chosen sigmas, through ComfyUI's own sampler machinery (for checks and tests)."""
from __future__ import annotations

import torch


def denoised_at(model, latent, pos, neg, sigmas, cfg=1.0, seed=1) -> list:
    """The model's denoised output at each of ``sigmas`` on one fixed input, through ComfyUI's own
    sample_custom/CFGGuider (so NASA's sampler wrapper and the conds run as in any sampler; more than one sigma is a
    multi-step run, which reuses the negative's projections); a list."""
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
