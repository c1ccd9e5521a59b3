"""NASA around each call of the diffusion model: what the call steers is decided once, before the model runs, and a
torch.compile'd model runs a graph only for what it was traced with.

* :func:`nasa_step`, an ``APPLY_MODEL`` wrapper (outside the diffusion model, which TorchCompileModel compiles
  alone): the call's :class:`.run.StepPlan` into its transformer_options, and the plan's signature onto the
  diffusion model for the call;
* :func:`nasa_forward_check`, a ``DIFFUSION_MODEL`` wrapper (inside a compiled model): reads the signature off the
  model. Eager, a consistency check. Traced, it makes the graph check the signature before every reuse: when
  ComfyUI's sampler calls a compiled model, torch.compile (2.13) does not re-check ``transformer_options`` - a graph
  traced for a call's uncond rows ran for its cond rows, one traced at alpha 0.8 ran at 0.3 - but it does check the
  model's attributes;
* :func:`own_forward`, an object patch of ``diffusion_model.forward`` with a forward of NASA's own: a compiled
  NASA model traces that function's code, so its graphs never mix with graphs of the same model compiled without
  NASA (which would not steer, and which nothing tells apart from a NASA call).
"""
from __future__ import annotations

import weakref

from .binding import set_wrapper, wrapped_call
from .run import RUN_KEY, STEP_KEY, with_plan

STEP_WRAPPER_KEY = "nasa_step"   # the key of these wrappers (a family may add its own wrappers under "nasa")
SIGNATURE_ATTR = "nasa_step_signature"   # on the diffusion model during a model call: its StepPlan's signature
FORWARD_PATCH = "diffusion_model.forward"


def _diffusion_model(base_model):
    """The diffusion model module of a BaseModel: the module itself while TorchCompileModel's wrapper has swapped
    in its compiled wrapper of it (``torch.compile`` keeps the module as ``_orig_mod``)."""
    dm = base_model.diffusion_model
    return getattr(dm, "_orig_mod", dm)


def nasa_step(executor, *args, **kwargs):
    """APPLY_MODEL wrapper: this call's plan (:meth:`.run.NasaRun.plan`) into its transformer_options, a fresh
    record of the layers it steers (:meth:`.run.NasaRun.new_call`), and the plan's signature on the diffusion
    model while it runs."""
    call = wrapped_call(executor, args, kwargs, "BaseModel._apply_model", needs=("transformer_options",))
    options = call["transformer_options"]
    run = options.get(RUN_KEY) if isinstance(options, dict) else None
    if run is None:
        return executor(*args, **kwargs)
    options = call["transformer_options"] = with_plan(options)
    run.new_call()
    dm = _diffusion_model(executor.class_obj)
    previous = getattr(dm, SIGNATURE_ATTR, None)
    setattr(dm, SIGNATURE_ATTR, options[STEP_KEY].signature)
    try:
        return call.invoke(executor)
    finally:
        if previous is None:
            delattr(dm, SIGNATURE_ATTR)
        else:
            setattr(dm, SIGNATURE_ATTR, previous)


def nasa_forward_check(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the call's plan is the one :func:`nasa_step` announced on the model."""
    call = wrapped_call(executor, args, kwargs, "the diffusion model's forward")
    options = call.get("transformer_options")       # a parameter, or in **kwargs (Lumina 2 in older releases)
    plan = options.get(STEP_KEY) if isinstance(options, dict) else None
    if plan is not None and getattr(executor.class_obj, SIGNATURE_ATTR, None) != plan.signature:
        raise RuntimeError("NASA: this model call's plan is not the one announced on the diffusion model (another "
                           "node called the model past NASA's wrapper); please report it to the NASA pack.")
    return executor(*args, **kwargs)


def own_forward(model_patcher):
    """``diffusion_model.forward`` for NASA's clone: the forward in place (an object patch set before NASA, else
    the class's), called from a function of NASA's own."""
    dm = model_patcher.model.diffusion_model
    current = model_patcher.object_patches.get(FORWARD_PATCH)
    prior = getattr(current, "nasa_prior", current)       # a second Apply NASA Attention replaces the first
    forward = prior if prior is not None else type(dm).forward.__get__(dm)

    def nasa_diffusion_forward(*args, **kwargs):
        return forward(*args, **kwargs)
    nasa_diffusion_forward.nasa_prior = prior
    return nasa_diffusion_forward


COMPILE_WRAPPER_KEY = "torch.compile"    # comfy_api.torch_helpers: TorchCompileModel's APPLY_MODEL wrapper
_compiled_settings: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # diffusion model -> last settings


def compiled_by_comfyui(model_options) -> bool:
    """Whether ComfyUI's TorchCompileModel compiled this model (its APPLY_MODEL wrapper, found by its key)."""
    import comfy.patcher_extension as pe
    options = (model_options or {}).get("transformer_options") or {}
    return bool(pe.get_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, COMPILE_WRAPPER_KEY, options))


def prepare_compiled_run(run, base_model, node: str) -> None:
    """Before a run of a model TorchCompileModel compiled. Every NASA setting a graph bakes in is a graph of its
    own, and torch.compile keeps at most ``recompile_limit`` (8) per function before it stops compiling it - after
    which the model's own functions, compiled without NASA, would run. So: an alpha ramp (a new coefficient, so a
    new graph, at every step) is refused, and graphs of other settings are dropped when the settings change (the
    model recompiles once, as it would for any change of what it computes)."""
    if run.schedule is not None and run.schedule.end_scale != 1.0:
        raise ValueError(f"{node}: 'alpha_end_scale' {run.schedule.end_scale:g} with TorchCompileModel: a ramp "
                         f"gives every step its own alpha, which a compiled model recompiles for at every step. "
                         f"Set alpha_end_scale to 1 (start_percent/end_percent windows are fine), or remove "
                         f"TorchCompileModel for this run.")
    import torch
    dm = _diffusion_model(base_model)
    settings = run.settings_signature
    previous = _compiled_settings.get(dm)
    _compiled_settings[dm] = settings
    if previous is not None and previous != settings:
        torch.compiler.reset()


def install(model_patcher) -> None:
    """The wrappers and the forward patch, on a (cloned) model patcher."""
    set_wrapper(model_patcher, "APPLY_MODEL", nasa_step, STEP_WRAPPER_KEY)
    set_wrapper(model_patcher, "DIFFUSION_MODEL", nasa_forward_check, STEP_WRAPPER_KEY)
    model_patcher.add_object_patch(FORWARD_PATCH, own_forward(model_patcher))
