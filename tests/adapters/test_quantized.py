"""NASA on quantized diffusion models, loaded through ComfyUI's own loading path (tiny random-weight models).

What a user loads:

* fp8 weight storage - UNETLoader's ``weight_dtype`` fp8_e4m3fn / fp8_e5m2 (both ComfyUI versions): weights stored
  in fp8, ``comfy.ops.manual_cast`` casts them to the compute dtype at every forward;
* "scaled fp8" checkpoints - a ``scaled_fp8`` marker and a ``.scale_weight`` per layer (both versions: 0.3.64 runs
  them with ``scaled_fp8_ops``, newer ComfyUI converts them to its mixed-precision ``float8_e4m3fn`` layers);
* mixed-precision checkpoints - a ``_quantization_metadata`` layer list and the layouts of ``comfy.quant_ops``
  (QuantizedTensor weights in ``mixed_precision_ops`` layers, which are no ``torch.nn.Linear``): newer ComfyUI
  only. On 0.3.64 the test asserts that the format is absent and returns.

Each model is built with random weights in float32, its state dict converted to the checkpoint format, and loaded as
``comfy.sd.load_diffusion_model_state_dict`` loads it (:func:`_load`: ComfyUI's detection does not recognise the tiny
configurations - it derives head counts from widths of 128 per head - so the config is given, and every step after
detection is ComfyUI's). The round trip of the float32 state dict is bit-identical to the built model.

For every kind and family (SD1.5 UNet: attn2 replaces; FLUX: joint stream; Wan: cross-attention through the
attention override):

1. alpha 0 is bit-identical to the same quantized model without NASA;
2. alpha > 0 changes the output, which stays finite, and every layer of the adapter's ``block_groups`` steered;
3. a multi-step run (the negative's projections reused from step 1) is bit-identical to the same run with reuse
   switched off through the run's own switch (``NasaRun.projections.enabled``, cleared by a model function wrapper
   before every step); where the family reuses (SD1.5, Wan) hooks count the negative's projections: once per run;
4. (a) NASA on the quantized model is NASA on the float32 model that holds its rounded weights (bit for bit where
   the layers compute with the dequantized weights; see :func:`_check_against_dequantized`), and (b) for fp8 storage
   and scaled fp8, NASA's effect is close to its effect on the original float32 model (:func:`_check_close_to_fp32`).

The mixed-precision layouts of ``comfy.quant_ops.QUANT_ALGOS`` on CPU (measured with comfy-kitchen 0.2.31, eager
backend, torch 2.13 CPU): every layout loads and runs. pick_operations runs float8_e4m3fn, float8_e5m2, nvfp4 and
mxfp8 "emulated" (the weight dequantized to the compute dtype before the matmul: bit-identical to a float32 model
holding the dequantized weights); int8_tensorwise, asym_w4a8_int8 and convrot_w4a4 run their own linear kernels,
which also quantize the activations (against the dequantized weights the plain output moves by 0.5-1.5 %,
convrot_w4a4's W4A4 by 9 %), so check 4a bounds NASA's deviation by the plain output's there. convrot_w4a4 and
asym_w4a8_int8 need ``in_features % 256 == 0``: they are tested on a FLUX of width 256; quantizing the narrower
SD1.5 / Wan layers raises the ValueError asserted in :func:`test_layout_shape_limits`. Check 4b is not made for the
layouts: with activations quantized, NASA's effect (11 % of the wide FLUX's output) can drown in the activation noise
(convrot_w4a4: effect error 110 % against float32, 95 % against the dequantized weights, the plain output 9 % off).

Two more properties of the loading path: :func:`test_flop_count_does_not_depend_on_weight_storage` (NASA's counted
cost of a quantized model is the float32 model's) and :func:`test_steers_with_autograd_on` (weights that require
grad, as 0.3.64's loader leaves them and a trained model has them, are steered as in inference mode).
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

import nasa_test_support as support

NEG_LEN = 21            # the negative's token count; differs from every positive here, so hooks can tell it apart
FP8_WEIGHTS = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}   # UNETLoader's weight_dtype
FAMILIES = ("sd15", "flux", "wan21_t2v")
LAYOUTS = ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8", "int8_tensorwise", "convrot_w4a4", "asym_w4a8_int8")
WIDE_ONLY = ("convrot_w4a4", "asym_w4a8_int8")     # in_features % 256 == 0: the FLUX of width 256 only
ACTIVATION_QUANTIZING = ("int8_tensorwise", "asym_w4a8_int8", "convrot_w4a4")   # their linear kernels (also on CPU)
STEPS = 2                       # a multi-step run: step 2 reuses what step 1 projected
MAX_EFFECT_ERROR = 0.7          # see _check_close_to_fp32


# ----------------------------------------------------------------------------- models

def _prompt(width, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, width, generator=g), {}]]


def _build(rm, name):
    """A float32 family model and what the tests need of it.

    ``kv``: module names that project the negative (hooks count them); ``text_path``: the Linear layers the
    negative runs through (each must be quantized in the loaded model, or the test would not test NASA on them)."""
    import comfy.supported_models as sm
    if name == "sd15":
        base = rm.build_unet_model("sd15", "tiny", seed=0)
        width = base.model.model_config.unet_config["context_dim"]
        kv = [n for n, _ in base.model.diffusion_model.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
        return SimpleNamespace(name=name, base=base, config_class=sm.SD15, config=rm.unet_config("sd15", "tiny"),
                               latent=torch.zeros(1, 4, 8, 8), pos=_prompt(width, 77, 0), neg=_prompt(width, NEG_LEN, 1),
                               kv=kv, text_path=kv)
    if name in ("flux", "flux_wide"):
        wide = dict(hidden_size=256, num_heads=16, context_in_dim=256) if name == "flux_wide" else {}
        cls, config = rm.DIT_FAMILIES["flux"]
        config = rm.detected_config({**config, **wide})     # as the builder completes it for this ComfyUI
        base = rm.build_dit_model("flux", seed=0, **wide)
        pos, neg = support.flux_conds(config, neg_len=NEG_LEN)
        dm = base.model.diffusion_model
        path = ["txt_in"] + [f"double_blocks.{i}.{m}" for i in range(len(dm.double_blocks))
                             for m in ("txt_mod.lin", "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2")]
        path += [f"single_blocks.{i}.{m}" for i in range(len(dm.single_blocks))
                 for m in ("modulation.lin", "linear1", "linear2")]
        return SimpleNamespace(name=name, base=base, config_class=getattr(sm, cls), config=config,
                               latent=torch.zeros(1, 16, 8, 8), pos=pos, neg=neg, kv=[], text_path=path)
    cls, config = rm.DIT_FAMILIES[name]
    config = rm.detected_config(config)
    base = rm.build_dit_model(name, seed=0)
    support.sharpen_rms_norms(base.model.diffusion_model)    # norm_q / norm_k: else every softmax is near uniform
    if name == "ltxv":      # LTX-Video takes the text encoder's token mask
        width = config["caption_channels"]
        pos, neg = _prompt(width, 16, 0), _prompt(width, NEG_LEN, 1)
        for p in (pos, neg):
            p[0][1]["attention_mask"] = torch.ones(1, p[0][0].shape[1], dtype=torch.long)
        kv = [f"transformer_blocks.{i}.attn2.{m}" for i in range(config["num_layers"]) for m in ("to_k", "to_v")]
        return SimpleNamespace(name=name, base=base, config_class=getattr(sm, cls), config=dict(config),
                               latent=torch.zeros(1, 128, 2, 4, 4), pos=pos, neg=neg, kv=kv, text_path=kv)
    width = config["text_dim"]
    kv = [f"blocks.{i}.cross_attn.{m}" for i in range(config["num_layers"]) for m in ("k", "v")]
    return SimpleNamespace(name=name, base=base, config_class=getattr(sm, cls), config=dict(config),
                           latent=torch.zeros(1, 16, 2, 8, 8), pos=_prompt(width, 16, 0), neg=_prompt(width, NEG_LEN, 1),
                           kv=kv, text_path=kv + ["text_embedding.0", "text_embedding.2"])


@contextmanager
def _no_weight_warnings():
    """ComfyUI's load_model_weights only logs missing / unexpected keys: here they fail the load."""
    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith(("unet missing", "unet unexpected")):
                seen.append(msg)
    handler = Catch(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
    if seen:
        raise AssertionError(f"the state dict did not load cleanly: {seen}")


def _load(fam, sd, weight_dtype=None, metadata=None, inference=True):
    """``comfy.sd.load_diffusion_model_state_dict(sd, {"dtype": weight_dtype}, metadata)`` with ``fam``'s config in
    place of detection (model_detection.model_config_from_unet's quantization steps included), inside inference
    mode as ComfyUI's executor runs UNETLoader (``inference=False``: outside it, as a script or trainer loads).
    A ModelPatcher."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    sd = dict(sd)
    if hasattr(comfy.utils, "convert_old_quants"):          # newer ComfyUI: scaled fp8 / metadata -> comfy_quant keys
        sd, metadata = comfy.utils.convert_old_quants(sd, "", metadata=metadata)
    config = fam.config_class(dict(fam.config))
    quant = comfy.utils.detect_layer_quantization(sd, "") if hasattr(comfy.utils, "detect_layer_quantization") else None
    if quant:
        config.quant_config = quant
    marker = sd.pop("scaled_fp8", None)         # 0.3.64's model_config_from_unet (newer: converted above)
    if marker is not None:
        config.scaled_fp8 = torch.float8_e4m3fn if marker.dtype == torch.float32 else marker.dtype
        config.optimizations["fp8"] = marker.nelement() != 2
    quantized = bool(quant) or marker is not None
    load_device = mm.get_torch_device()
    if weight_dtype is None:
        weight_dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(sd),
                                     supported_dtypes=list(config.supported_inference_dtypes),
                                     weight_dtype=None if quantized else comfy.utils.weight_dtype(sd))
    manual_cast = mm.unet_manual_cast(None if quant else weight_dtype, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(weight_dtype, manual_cast)
    with torch.inference_mode(inference), _no_weight_warnings():
        model = config.get_model(sd, "")
        mp = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
        model.load_model_weights(sd, "")
    return mp


def _state_dict(fam):
    return {k: v.detach().clone() for k, v in fam.base.model.diffusion_model.state_dict().items()}


def _linear_names(dm):
    return [n for n, m in dm.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.ndim == 2 and hasattr(m, "in_features")]


def _scaled_fp8_state_dict(fam):
    """A "scaled fp8" checkpoint as ComfyUI's older quantizers write it: every Linear weight divided by its
    ``scale_weight`` (absmax / 448) and stored in float8_e4m3fn; the marker has 2 elements (full-precision matmul,
    no input scales)."""
    sd = _state_dict(fam)
    for name in _linear_names(fam.base.model.diffusion_model):
        w = sd[f"{name}.weight"]
        scale = w.abs().amax().float() / torch.finfo(torch.float8_e4m3fn).max
        sd[f"{name}.weight"] = (w / scale).to(torch.float8_e4m3fn)
        sd[f"{name}.scale_weight"] = scale
    sd["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return sd


def _fits(fmt, shape) -> bool:
    return fmt not in WIDE_ONLY or shape[1] % 256 == 0


def _layout_state_dict(fam, fmt):
    """A mixed-precision checkpoint (QUANTIZATION.md): each Linear whose shape the layout takes stored as the
    layout's tensors (``QuantizedTensor.state_dict``, as ComfyUI saves a quantized layer), the layer list in the
    ``_quantization_metadata`` of the file's metadata. Returns (state dict, metadata, quantized layer names)."""
    from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor
    layout = QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    sd, layers = _state_dict(fam), {}
    for name in _linear_names(fam.base.model.diffusion_model):
        w = sd[f"{name}.weight"]
        if not _fits(fmt, w.shape):
            continue
        kw = {"scale": "recalculate"} if fmt.startswith("float8") else {}
        del sd[f"{name}.weight"]
        sd.update(QuantizedTensor.from_float(w, layout, **kw).state_dict(f"{name}.weight"))
        layers[name] = {"format": fmt}
    return sd, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}, set(layers)


@pytest.fixture(scope="module")
def env(comfyui):
    rm = comfyui.mod("runner.random_weights.models")
    nasa_run = comfyui.mod("adapters.run")
    cache = {}

    def family(name):
        if name not in cache:
            cache[name] = _build(rm, name)
        return cache[name]

    return SimpleNamespace(family=family, adapters=comfyui.mod("adapters"), run_key=nasa_run.RUN_KEY,
                           version=comfyui.version)


def _has_quant_ops() -> bool:
    import importlib.util
    return importlib.util.find_spec("comfy.quant_ops") is not None


def _assert_no_quant_ops(env):
    """0.3.64 and older: no QuantizedTensor, no mixed-precision ops, no metadata conversion."""
    import comfy.ops
    import comfy.utils
    assert not _has_quant_ops(), f"ComfyUI {env.version} has comfy.quant_ops: this test must run its layouts"
    assert not hasattr(comfy.ops, "mixed_precision_ops") and not hasattr(comfy.utils, "detect_layer_quantization")


# ----------------------------------------------------------------------------- sampling and checks

def _sample(fam, model, steps=STEPS):
    with torch.inference_mode():      # as ComfyUI's executor runs KSampler
        return support.sample(model, fam.latent, fam.pos, fam.neg, steps=steps)


def _probe(fam, model):
    sigma = float(fam.base.model.model_sampling.percent_to_sigma(0.5))
    with torch.inference_mode():
        return support.probe(model, fam.latent, fam.pos, fam.neg, [sigma])[0]


def _recording(env, m, runs, reuse):
    """A clone of ``m`` whose model function wrapper records each step's NasaRun; ``reuse=False`` switches the run's
    projection reuse off before every step (the switch the sampler wrapper sets for multi-step runs)."""
    m = m.clone()

    def wrapper(apply_model, args):
        run = args["c"]["transformer_options"][env.run_key]
        if not reuse:
            run.projections.enabled = False
        if not runs or runs[-1] is not run:
            runs.append(run)
        return apply_model(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    return m


class _NegativeProjections:
    """Calls of the named modules on the negative (its NEG_LEN tokens), per module."""

    def __init__(self, dm, names):
        self.n = {name: 0 for name in names}
        self.handles = [dm.get_submodule(name).register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name):
        def hook(module, inputs, output):
            if inputs[0].shape[-2] == NEG_LEN:
                self.n[name] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _check_nasa(env, fam, q):
    """Checks 1-3 on the quantized model ``q`` (sampled latents of STEPS euler steps at cfg 1)."""
    plain = _sample(fam, q)
    zero = _sample(fam, support.apply_nasa(q, alpha=0.0))
    assert torch.equal(zero, plain), f"{fam.name}: NASA at alpha 0 changed the quantized model's output"

    nasa = support.apply_nasa(q, alpha=1.0)
    on_runs, off_runs = [], []
    counter = _NegativeProjections(q.model.diffusion_model, fam.kv)
    try:
        steered = _sample(fam, _recording(env, nasa, on_runs, reuse=True))
        once = dict(counter.n)
        without = _sample(fam, _recording(env, nasa, off_runs, reuse=False))
        per_step = {k: v - once[k] for k, v in counter.n.items()}
    finally:
        counter.close()
    assert torch.isfinite(steered).all(), f"{fam.name}: NASA on the quantized model gave non-finite values"
    moved = ((steered - plain).norm() / plain.norm()).item()
    assert moved > 1e-2, f"{fam.name}: NASA moved the quantized model's output by {moved:.2e} only"
    assert support.steered_layers(nasa) == support.all_layers(env.adapters.find_adapter(nasa), nasa), \
        f"{fam.name}: not every layer steered"

    assert len(on_runs) == 1 and on_runs[0].projections.enabled, "a multi-step run must reuse the projections"
    assert len(off_runs) == 1 and not len(off_runs[0].projections)
    assert torch.equal(steered, without), f"{fam.name}: reusing the negative's projections changed the result"
    if fam.kv:      # cross-attention families keep K-/V- (and Wan its embedding) for the run: hooks see it once
        assert once == {k: 1 for k in fam.kv}, once
        assert per_step == {k: STEPS for k in fam.kv}, per_step
        assert len(on_runs[0].projections) >= len(fam.kv) // 2


def _dequantized(fam, q):
    """The float32 model whose every weight is ``q``'s as ``q`` computes with it: QuantizedTensors dequantized, fp8
    tensors cast, 0.3.64's scale_weight applied."""
    dm = q.model.diffusion_model
    sd = {}
    for key in _state_dict(fam):
        module_name, _, attr = key.rpartition(".")
        module = dm.get_submodule(module_name) if module_name else dm
        w = getattr(module, attr)
        if _has_quant_ops():
            from comfy.quant_ops import QuantizedTensor
            if isinstance(w, QuantizedTensor):
                w = w.dequantize()
        w = w.detach().float()
        if attr == "weight" and getattr(module, "scale_weight", None) is not None:
            w = w * module.scale_weight.float()
        sd[key] = w.clone()
    return _load(fam, sd)


def _check_against_dequantized(fam, q, what):
    """Check 4a: NASA on ``q`` is NASA on the float32 model holding ``q``'s rounded weights (:func:`_dequantized`).

    Where ``q``'s layers compute with their dequantized weights (fp8 storage, the float8 / nvfp4 / mxfp8 layouts on
    CPU, newer ComfyUI's scaled fp8) the plain outputs are bit-identical and NASA's must be too; 0.3.64's scaled fp8
    layer multiplies the input by the scale instead (rounding order: 1e-7). The layouts whose kernels also quantize
    the activations (ACTIVATION_QUANTIZING) move the plain output by that rounding; NASA's output may move at most
    twice as far: its own work - the negative through the same quantized layers - adds no error of its own."""
    deq = _dequantized(fam, q)
    plain_q, nasa_q = _probe(fam, q), _probe(fam, support.apply_nasa(q))
    plain_d, nasa_d = _probe(fam, deq), _probe(fam, support.apply_nasa(deq))
    moved_plain = ((plain_q - plain_d).norm() / plain_d.norm()).item()
    moved_nasa = ((nasa_q - nasa_d).norm() / plain_d.norm()).item()
    print(f"{fam.name} {what} against its dequantized weights: plain moved {moved_plain:.2e}, NASA {moved_nasa:.2e}")
    if moved_plain == 0.0:
        assert torch.equal(nasa_q, nasa_d), f"{fam.name} {what}: NASA differs from NASA on the dequantized weights"
        return
    assert what in ACTIVATION_QUANTIZING or moved_plain < 1e-5, \
        f"{fam.name} {what}: the layers do not compute with their dequantized weights ({moved_plain:.2e})"
    assert moved_nasa <= 2 * moved_plain, (fam.name, what, moved_nasa, moved_plain)


def _check_close_to_fp32(fam, q, what):
    """Check 4b: NASA's effect (steered - plain, one model call at sigma 50%) survives the rounding of the weights.

    The quantized effect is a difference of two outputs of the same rounded network; measured on these models its
    relative error is 2-3.2 times the relative error the rounding causes in the plain output (fp8 e4m3 / e5m2 and
    scaled fp8, all three families), so the bound is 5 times that, and never above MAX_EFFECT_ERROR: an effect
    that vanished, or one computed from unscaled stored weights, is off by 100 % or more."""
    if not hasattr(fam, "fp32_probes"):
        fam.fp32_probes = _probe(fam, fam.base), _probe(fam, support.apply_nasa(fam.base))
    plain_f, nasa_f = fam.fp32_probes
    plain_q, nasa_q = _probe(fam, q), _probe(fam, support.apply_nasa(q))
    effect_f, effect_q = nasa_f - plain_f, nasa_q - plain_q
    rounding = ((plain_q - plain_f).norm() / plain_f.norm()).item()
    error = ((effect_q - effect_f).norm() / effect_f.norm()).item()
    size = (effect_f.norm() / plain_f.norm()).item()
    print(f"{fam.name} {what}: plain output rel. error {rounding:.4f}, NASA effect {size:.3f} of the output, "
          f"effect rel. error {error:.4f}")
    assert size > 0.05, f"NASA's effect ({size:.3f} of the output) is too small to test anything"
    assert rounding > 0, f"{what}: the quantized model equals the float32 one; nothing is quantized"
    assert error <= min(5 * rounding, MAX_EFFECT_ERROR), (fam.name, what, error, rounding)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("family", FAMILIES)
def test_loader_round_trip_is_exact(env, family):
    """The float32 state dict through :func:`_load` is the built model, bit for bit (the reference of check 4)."""
    fam = env.family(family)
    loaded = _load(fam, _state_dict(fam))
    assert type(loaded.model.diffusion_model) is type(fam.base.model.diffusion_model)
    assert torch.equal(_probe(fam, loaded), _probe(fam, fam.base))


@pytest.mark.parametrize("weight_dtype", sorted(FP8_WEIGHTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_weight_storage(env, family, weight_dtype):
    """UNETLoader weight_dtype fp8: stored fp8, cast at forward by comfy.ops.manual_cast; checks 1-4."""
    fam = env.family(family)
    q = _load(fam, _state_dict(fam), FP8_WEIGHTS[weight_dtype])
    dm = q.model.diffusion_model
    assert q.model.manual_cast_dtype == torch.float32
    for name in fam.text_path:
        layer = dm.get_submodule(name)
        assert layer.weight.dtype == FP8_WEIGHTS[weight_dtype] and layer.comfy_cast_weights, name
    _check_nasa(env, fam, q)
    _check_against_dequantized(fam, q, weight_dtype)
    _check_close_to_fp32(fam, q, weight_dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_scaled_fp8_checkpoint(env, family):
    """A scaled fp8 checkpoint: weights fp8 with a scale per layer, on either version's path; checks 1-4."""
    fam = env.family(family)
    q = _load(fam, _scaled_fp8_state_dict(fam))
    dm = q.model.diffusion_model
    for name in fam.text_path:
        layer = dm.get_submodule(name)
        if _has_quant_ops():        # converted to mixed-precision float8_e4m3fn layers
            from comfy.quant_ops import QuantizedTensor
            assert isinstance(layer.weight, QuantizedTensor) and layer.quant_format == "float8_e4m3fn", name
        else:                       # 0.3.64: scaled_fp8_ops
            assert layer.weight.dtype == torch.float8_e4m3fn and float(layer.scale_weight) != 1.0, name
    _check_nasa(env, fam, q)
    _check_against_dequantized(fam, q, "scaled fp8")
    _check_close_to_fp32(fam, q, "scaled fp8")


def test_quant_algos_are_all_tested(env):
    """Every layout ComfyUI offers is one LAYOUTS tests (a new one fails here until it is added)."""
    if not _has_quant_ops():
        _assert_no_quant_ops(env)
        return
    from comfy.quant_ops import QUANT_ALGOS
    assert set(QUANT_ALGOS) <= set(LAYOUTS), sorted(set(QUANT_ALGOS) - set(LAYOUTS))


def test_layout_shape_limits(env):
    """convrot_w4a4 / asym_w4a8_int8 refuse a Linear whose in_features is no multiple of 256 (the tiny SD1.5 and
    Wan layers): they are tested on the FLUX of width 256 only."""
    if not _has_quant_ops():
        _assert_no_quant_ops(env)
        return
    from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor
    w = torch.randn(64, 64)
    for fmt in WIDE_ONLY:
        if fmt not in QUANT_ALGOS:
            continue
        with pytest.raises(ValueError, match="256"):
            QuantizedTensor.from_float(w, QUANT_ALGOS[fmt]["comfy_tensor_layout"])
        QuantizedTensor.from_float(torch.randn(64, 256), QUANT_ALGOS[fmt]["comfy_tensor_layout"])


@pytest.mark.parametrize("family,fmt", [("flux_wide", f) for f in LAYOUTS] +
                         [(fam, f) for fam in ("sd15", "wan21_t2v") for f in LAYOUTS if f not in WIDE_ONLY])
def test_quantized_tensor_layout(env, family, fmt):
    """A mixed-precision checkpoint of one layout, loaded by ComfyUI's mixed-precision ops; checks 1-4."""
    if not _has_quant_ops():
        _assert_no_quant_ops(env)
        return
    from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor
    if fmt not in QUANT_ALGOS:
        pytest.fail(f"layout {fmt} is no longer in comfy.quant_ops.QUANT_ALGOS ({sorted(QUANT_ALGOS)}): update LAYOUTS")
    fam = env.family(family)
    sd, metadata, layers = _layout_state_dict(fam, fmt)
    q = _load(fam, sd, metadata=metadata)
    dm = q.model.diffusion_model
    assert set(fam.text_path) <= layers, sorted(set(fam.text_path) - layers)
    for name in layers:
        layer = dm.get_submodule(name)
        assert isinstance(layer.weight, QuantizedTensor) and layer.quant_format == fmt, name
        assert not isinstance(layer, torch.nn.Linear)       # what NASA's code must not assume
    _check_nasa(env, fam, q)
    _check_against_dequantized(fam, q, fmt)


@pytest.mark.parametrize("family", FAMILIES)
def test_flop_count_does_not_depend_on_weight_storage(env, family):
    """``adapters.nasa_flops`` (NASA's cost, counted from the model's layer shapes) is the float32 model's for every
    way the same model can be stored: fp8 weights, a scaled fp8 checkpoint, a mixed-precision layout (whose layers
    are no torch.nn.Linear)."""
    fam = env.family(family)
    latent = tuple(fam.latent.shape[1:])
    models = {"fp8_e4m3fn": _load(fam, _state_dict(fam), torch.float8_e4m3fn),
              "scaled fp8": _load(fam, _scaled_fp8_state_dict(fam))}
    if _has_quant_ops():
        sd, metadata, _ = _layout_state_dict(fam, "int8_tensorwise")
        models["int8_tensorwise layout"] = _load(fam, sd, metadata=metadata)
    for reused in (False, True):
        want = env.adapters.nasa_flops(fam.base, latent, NEG_LEN, reused=reused)
        assert want, f"{family}: no flop count to compare"
        got = {what: env.adapters.nasa_flops(q, latent, NEG_LEN, reused=reused) for what, q in models.items()}
        assert got == {what: want for what in models}, f"{family} (reused={reused}): float32 counts {want}, got {got}"


@pytest.mark.parametrize("family", FAMILIES + ("ltxv",))
def test_steers_with_autograd_on(env, family):
    """Weights that require grad under autograd - a model being trained (the NASA-T trainer, adapters/distill.py),
    or one ComfyUI 0.3.64's loader loaded outside inference mode (its load_state_dict leaves every Parameter
    requiring grad) - must be steered exactly as in inference mode: NASA may not write its result into a tensor
    autograd keeps and drop it."""
    fam = env.family(family)
    q = _load(fam, _state_dict(fam), inference=False)
    q.model.requires_grad_(True)
    nasa = support.apply_nasa(q, alpha=1.0)
    sigma = float(fam.base.model.model_sampling.percent_to_sigma(0.5))
    with torch.inference_mode():
        plain = support.probe(q, fam.latent, fam.pos, fam.neg, [sigma])[0]
        want = support.probe(nasa, fam.latent, fam.pos, fam.neg, [sigma])[0]
    with torch.enable_grad():
        got = support.probe(nasa, fam.latent, fam.pos, fam.neg, [sigma])[0]
    assert got.requires_grad, "autograd did not record the forward: the test shows nothing"
    assert support.steered_layers(nasa) == support.all_layers(env.adapters.find_adapter(nasa), nasa)
    assert not torch.equal(want, plain)
    assert torch.equal(got.detach(), want), \
        f"{family}: with autograd on NASA's output moved {((got.detach() - want).norm() / (want - plain).norm()).item():.3f} " \
        f"of its effect away from the inference-mode result"
