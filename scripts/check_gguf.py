#!/usr/bin/env python
"""Manual check: NASA on a UNet loaded by ComfyUI-GGUF (city96/ComfyUI-GGUF), on CPU, with random weights.

    python scripts/check_gguf.py --gguf-pack /path/to/ComfyUI-GGUF [--comfyui ~/ComfyUI] [--quants Q8_0,Q5_0,Q4_0]

Needs ComfyUI, a checkout of ComfyUI-GGUF (imported from --gguf-pack exactly as ComfyUI loads a custom-node folder;
nothing of it is copied here) and the ``gguf`` package in ComfyUI's Python (``pip install gguf``: ComfyUI-GGUF's own
requirement, not NASA's). Downloads nothing: the model is the pack's tiny random-weight SD1.5 UNet
(runner/random_weights), written to a GGUF file in a temporary folder.

What it does, per quantization type:

1. writes the UNet's state dict as ComfyUI-GGUF's tools/convert.py + llama-quantize lay out an SD1.5 file (arch
   ``sd1``, bare diffusion-model keys, tensors whose last dimension is not a multiple of 256 stored as rows of 256 with
   their shape in ``comfy.gguf.orig_shape.<key>``; 1-D and small tensors F32, the rest F16) with the 2-D weights of
   every attention layer (attn1/attn2 to_q, to_k, to_v, to_out.0) quantized to the requested type;
2. registers the folder under ComfyUI's "diffusion_models" and loads the file with ComfyUI-GGUF's UnetLoaderGGUF
   node (its gguf_sd_loader, GGMLOps layers and GGUFModelPatcher), inside inference mode as ComfyUI runs a node.
   ComfyUI's model detection only knows the published SD1.5 widths, so while loading, a subclass of ComfyUI's SD15
   config matching the tiny widths is put first in comfy.supported_models.models; every other step is the node's;
3. applies NASA (alpha 0.8, the sampler's negative: 21 tokens, positive 77) and checks, with euler at cfg 1:
   alpha 0 is bit-identical to no NASA; NASA moves the 1- and 3-step results and steers every attn2 layer; the
   negative's K/V projections run through GGUF's dequantizing forward (forward_ggml_cast_weights / get_weight of every
   attn2 to_k/to_v, counted on 21-token inputs): once per run (the 3-step run reuses step 1's); a 3-sigma run equals
   each sigma run alone (reuse exact); NASA on the GGUF model equals NASA on a float32 model holding the weights GGUF
   dequantizes to (bit for bit);
4. stale-projection check: a LoRA on every attn2 to_k/to_v, applied as LoraLoaderModelOnly does
   (comfy.sd.load_lora_for_models -> GGUFModelPatcher.add_patches; GGUF applies it at dequant time), sampled after a
   run without it on the same loaded model: the result equals the float32 reference with the same LoRA, differs
   from the LoRA-free run, the LoRA'd 3-sigma run equals its sigmas run alone, and the LoRA-free model sampled again
   afterwards gives its first result again.

One row is marked "info" (never a failure): the error of the quantization itself. The last check: NASA's reuse key
(adapters/reuse.py ``weights_key``) changes when GGUF swaps a parameter's ``.patches`` list (GGUF keeps the same
parameter object), so a swap inside a run is never served a stale projection. Prints a table; exit status 1 if any
check fails, 2 on a setup error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import _pack_entry

PACK = _pack_entry.ROOT
NEG_LEN = 21            # the negative's tokens; the positive has 77, so hooks can tell the negative apart
POS_LEN = 77
ALPHA = 0.8
PERCENTS = (0.1, 0.5, 0.9)
LORA_RANK = 4
ATTN_WEIGHTS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")
KV = ("attn2.to_k", "attn2.to_v")


# ----------------------------------------------------------------------------- setup

def _load_gguf_pack(nodes, gguf_dir: Path):
    """Import ComfyUI-GGUF as ComfyUI loads a custom-node folder; returns {"nodes": ..., "ops": ...} modules."""
    gguf_dir = gguf_dir.resolve()
    ok = nodes.load_custom_node(str(gguf_dir))
    if asyncio.iscoroutine(ok):
        ok = asyncio.run(ok)
    if not ok or "UnetLoaderGGUF" not in nodes.NODE_CLASS_MAPPINGS:
        raise RuntimeError(f"ComfyUI could not load ComfyUI-GGUF from {gguf_dir} (is `gguf` installed?)")
    found = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve().parent == gguf_dir and Path(f).stem in ("nodes", "ops", "dequant", "loader"):
            found[Path(f).stem] = mod
    if not {"nodes", "ops", "dequant"} <= set(found):
        raise RuntimeError(f"ComfyUI-GGUF's nodes/ops/dequant modules not found after loading {gguf_dir}")
    return found


def _gguf_commit(gguf_dir: Path) -> str:
    head = gguf_dir / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (gguf_dir / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return "unknown (no .git)"


@contextmanager
def _tiny_sd15_detectable(rm):
    """ComfyUI's detection matches SD1.5 by its published widths (context 768, 320 channels); while open, a
    subclass of ComfyUI's SD15 config with the tiny model's widths is tried first. Structure comes from ComfyUI's
    own detect_unet_config of the GGUF state dict."""
    import comfy.supported_models as sm
    tiny = rm.unet_config("sd15", "tiny")

    class TinySD15(sm.SD15):
        unet_config: ClassVar[dict] = {k: tiny[k] for k in ("context_dim", "model_channels", "adm_in_channels",
                                                            "use_linear_in_transformer", "use_temporal_attention")}
    sm.models.insert(0, TinySD15)
    try:
        yield
    finally:
        sm.models.remove(TinySD15)


def write_gguf(state_dict: dict, path: Path, qtype_name: str) -> dict:
    """The UNet ``state_dict`` (bare diffusion-model keys) as an SD1.5 GGUF file in ComfyUI-GGUF's layout; attention
    2-D weights quantized to ``qtype_name``. Returns {GGML type name: tensor count}."""
    import gguf
    import numpy as np
    import torch
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    writer = gguf.GGUFWriter(str(path), arch="sd1")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    counts = {}
    for key, tensor in state_dict.items():
        data = tensor.detach().to("cpu", dtype=torch.float32).numpy()
        n = int(np.prod(data.shape))
        if key.endswith(ATTN_WEIGHTS) and ".attn" in key and data.ndim == 2:
            t = qtype
        elif data.ndim == 1 or n <= 1024:
            t = gguf.GGMLQuantizationType.F32
        else:
            t = gguf.GGMLQuantizationType.F16
        if data.ndim > 1 and n >= 512 and n % 256 == 0 and data.shape[-1] % 256 != 0:
            writer.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in data.shape])
            data = data.reshape(n // 256, 256)
        writer.add_tensor(key, gguf.quants.quantize(np.ascontiguousarray(data), t), raw_dtype=t)
        counts[t.name] = counts.get(t.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


# ----------------------------------------------------------------------------- sampling

def sample(model, latent, pos, neg, steps, seed=1):
    import comfy.sample
    import torch
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():        # as ComfyUI's executor runs KSampler
        return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", pos, neg, latent,
                                   disable_pbar=True, seed=seed)


def probe(model, latent, pos, neg, sigmas, seed=1):
    """The denoised output at each of ``sigmas`` on one fixed input (runner/probe.py), as ComfyUI runs a node."""
    import torch
    with torch.inference_mode():
        return _pack_entry.runner("probe").denoised_at(model, latent, pos, neg, sigmas, seed=seed)


def apply_nasa(mp, alpha):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS["NASAApplyAttention"].execute(model=mp, alpha=alpha,
                                                                    use_sampler_negative=True).result[0]


def steered(model) -> frozenset:
    import comfy.patcher_extension as pe
    (wrapper,) = model.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, "nasa")
    return wrapper.last_steered


# ----------------------------------------------------------------------------- instrumentation

class DequantCounter:
    """Wraps ComfyUI-GGUF's dequantizing forward (``forward_ggml_cast_weights``) and ``get_weight`` on every attn2
    to_k/to_v of the GGUF model: per module, how often the negative (NEG_LEN tokens) went through them, how often its
    weight was a quantized GGML tensor being dequantized, and with how many LoRA patches attached."""

    def __init__(self, dm, is_quantized, weights_key):
        self.modules = {n: m for n, m in dm.named_modules() if n.endswith(KV)}
        self.is_quantized, self.weights_key = is_quantized, weights_key
        self._current = None
        self.first_layer = min(n.rsplit(".", 1)[0] for n in self.modules)
        self.reset()
        for name, m in self.modules.items():
            m.forward_ggml_cast_weights = self._forward(name, m.forward_ggml_cast_weights)
            m.get_weight = self._get_weight(name, m, m.get_weight)

    def reset(self):
        self.neg = {n: 0 for n in self.modules}          # negative inputs through the dequantizing forward
        self.dequant = {n: 0 for n in self.modules}      # ... whose weight was quantized (dequantized there)
        self.patched = {n: 0 for n in self.modules}      # ... with LoRA patches applied at dequant time
        self.keys = []                                   # weights_key of the first layer's K/V at its projections

    def _forward(self, name, fwd):
        def forward_ggml_cast_weights(input, *args, **kwargs):
            if input.shape[-2] != NEG_LEN:
                return fwd(input, *args, **kwargs)
            self.neg[name] += 1
            if name.startswith(self.first_layer) and name.endswith("to_k"):
                layer = self.modules[name.rsplit(".", 1)[0] + ".to_k"], self.modules[name.rsplit(".", 1)[0] + ".to_v"]
                self.keys.append(self.weights_key(layer))
            self._current = name
            try:
                return fwd(input, *args, **kwargs)
            finally:
                self._current = None
        return forward_ggml_cast_weights

    def _get_weight(self, name, module, get_weight):
        def wrapped(tensor, dtype):
            if self._current == name and tensor is not None and tensor is module.weight:
                if self.is_quantized(tensor):
                    self.dequant[name] += 1
                if getattr(tensor, "patches", None):
                    self.patched[name] += 1
            return get_weight(tensor, dtype)
        return wrapped

    def all_equal(self, table, value) -> bool:
        return set(table.values()) == {value}


def random_lora(dm, seed=7) -> dict:
    """A kohya-format LoRA (lora_up / lora_down / alpha) on every attn2 to_k and to_v."""
    import torch
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in dm.named_modules():
        if name.endswith(KV):
            out_f, in_f = m.weight.shape       # a GGMLTensor reports its logical shape
            base = "lora_unet_" + name.replace(".", "_")
            sd[f"{base}.lora_down.weight"] = torch.randn(LORA_RANK, in_f, generator=g) / in_f ** 0.5
            sd[f"{base}.lora_up.weight"] = torch.randn(out_f, LORA_RANK, generator=g) * 0.5 / LORA_RANK ** 0.5
            sd[f"{base}.alpha"] = torch.tensor(float(LORA_RANK))
    return sd


def reference_from_gguf(rm, gguf_dm, ggml_layer_cls):
    """A float32 ModelPatcher (the same random model class) whose every weight is what the GGUF model computes with:
    each GGML layer's own ``get_weight`` (dequantized; no patches are attached at this point)."""
    import torch
    ref = rm.build_unet_model("sd15", "tiny", seed=0)
    params = dict(ref.model.diffusion_model.named_parameters())
    done = set()
    with torch.inference_mode():
        values = {}
        for name, m in gguf_dm.named_modules():
            if not isinstance(m, ggml_layer_cls):
                continue
            for attr in ("weight", "bias"):
                t = getattr(m, attr, None)
                if t is None:
                    continue
                if getattr(t, "patches", None):
                    raise RuntimeError(f"{name}.{attr} carries patches; the reference needs the bare weights")
                values[f"{name}.{attr}"] = m.get_weight(t, torch.float32)
    with torch.no_grad():
        for key, v in values.items():
            params[key].copy_(v.clone().reshape(params[key].shape))
            done.add(key)
    missing = set(params) - done
    if missing:
        raise RuntimeError(f"reference: {len(missing)} parameters not held by GGML layers, e.g. {sorted(missing)[:3]}")
    return ref


def numpy_dequant_error(path, gguf_dm, qtype_name):
    """Max |ComfyUI-GGUF's torch dequant - the gguf package's numpy dequant| over the quantized tensors of the
    file (an independent reading of the file's layout)."""
    import gguf
    import numpy as np
    import torch
    reader = gguf.GGUFReader(str(path))
    worst, n = 0.0, 0
    mods = dict(gguf_dm.named_modules())
    with torch.inference_mode():
        for t in reader.tensors:
            if t.tensor_type.name != qtype_name:
                continue
            mod_name = t.name.rsplit(".", 1)[0]
            m = mods[mod_name]
            ours = m.get_weight(m.weight, torch.float32).reshape(-1).numpy()
            theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)
            worst = max(worst, float(np.abs(ours - theirs).max()))
            n += 1
    return worst, n


# ----------------------------------------------------------------------------- the checks

class Results:
    def __init__(self):
        self.rows = []

    def check(self, quant, name, ok, detail=""):
        self.rows.append((quant, name, "PASS" if ok else "FAIL", detail))
        return ok

    def info(self, quant, name, detail):
        self.rows.append((quant, name, "info", detail))

    def failed(self):
        return [r for r in self.rows if r[2] == "FAIL"]

    def table(self) -> str:
        w = [max(len(str(r[i])) for r in self.rows + [("quant", "check", "result", "detail")]) for i in range(3)]
        lines = [f"{'quant':<{w[0]}}  {'check':<{w[1]}}  {'result':<{w[2]}}  detail",
                 f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  ------"]
        lines += [f"{q:<{w[0]}}  {c:<{w[1]}}  {r:<{w[2]}}  {d}" for q, c, r, d in self.rows]
        return "\n".join(lines)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _maxdiff(a, b) -> float:
    return float((a - b).abs().max())


def check_quant(res: Results, quant: str, ctx) -> None:
    import comfy.sd
    import folder_paths
    import torch
    rm, gg, reuse = ctx["rm"], ctx["gguf"], ctx["reuse"]
    work = Path(tempfile.mkdtemp(prefix=f"nasa_gguf_{quant}_", dir=ctx["workdir"]))
    base = rm.build_unet_model("sd15", "tiny", seed=0)
    width = base.model.model_config.unet_config["context_dim"]
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, POS_LEN, width, generator=g), {}]]
    neg = [[torch.randn(1, NEG_LEN, width, generator=g), {}]]
    latent = torch.zeros(1, 4, 8, 8)

    # 1. the file
    fname = f"nasa_check_sd15_tiny-{quant}.gguf"
    counts = write_gguf({k: v for k, v in base.model.diffusion_model.state_dict().items()}, work / fname, quant)
    res.info(quant, "file written", f"{work / fname}: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))

    # 2. ComfyUI-GGUF's loader node finds and loads it
    folder_paths.add_model_folder_path("diffusion_models", str(work))
    loader_cls = gg["nodes"].UnetLoaderGGUF
    listed = fname in loader_cls.INPUT_TYPES()["required"]["unet_name"][0]
    with _tiny_sd15_detectable(rm), torch.inference_mode():
        (gmp,) = loader_cls().load_unet(fname)
    dm = gmp.model.diffusion_model
    kv = {n: m for n, m in dm.named_modules() if n.endswith(KV)}
    is_q = gg["dequant"].is_quantized
    quantized_kv = sum(isinstance(m, gg["ops"].GGMLLayer) and is_q(m.weight)
                       and m.weight.tensor_type.name == quant for m in kv.values())
    res.check(quant, "UnetLoaderGGUF loads the file", listed and type(gmp).__name__ == "GGUFModelPatcher"
              and quantized_kv == len(kv) == 32,
              f"listed={listed}, patcher={type(gmp).__name__}, attn2 K/V quantized {quantized_kv}/{len(kv)} "
              f"({type(next(iter(kv.values()))).__qualname__})")
    err, n = numpy_dequant_error(work / fname, dm, quant)
    res.check(quant, "GGUF dequant == gguf numpy dequant", err < 1e-2, f"max |diff| {err:.2e} over {n} tensors")
    w0 = base.model.diffusion_model.get_submodule(next(iter(kv))).weight
    with torch.inference_mode():
        m0 = next(iter(kv.values()))
        qerr = _maxdiff(m0.get_weight(m0.weight, torch.float32), w0) / float(w0.abs().max())
    res.info(quant, "quantization error", f"first attn2.to_k: max |w_q - w| / max |w| = {qerr:.3f}")

    counter = DequantCounter(dm, is_q, reuse.weights_key)
    ref = reference_from_gguf(rm, dm, gg["ops"].GGMLLayer)

    # 3. NASA on the GGUF model
    plain = {s: sample(gmp, latent, pos, neg, s) for s in (1, 3)}
    zero = {s: sample(apply_nasa(gmp, 0.0), latent, pos, neg, s) for s in (1, 3)}
    res.check(quant, "alpha 0 == no NASA (1 and 3 steps)", all(torch.equal(zero[s], plain[s]) for s in (1, 3)))
    nasa = apply_nasa(gmp, ALPHA)
    out, neg_calls = {}, {}
    for s in (1, 3):
        counter.reset()
        out[s] = sample(nasa, latent, pos, neg, s)
        neg_calls[s] = (dict(counter.neg), dict(counter.dequant))
        layers = steered(nasa)
        moved = _rel(out[s], plain[s])
        res.check(quant, f"NASA moves the {s}-step result", bool(torch.isfinite(out[s]).all()) and moved > 1e-2
                  and len(layers) == 16, f"|out - plain| / |plain| = {moved:.3f}, steered {len(layers)}/16 layers")
    for s in (1, 3):
        n_neg, n_deq = neg_calls[s]
        res.check(quant, f"neg K/V via GGUF dequant, {s}-step run", counter.all_equal(n_neg, 1)
                  and counter.all_equal(n_deq, 1),
                  f"per to_k/to_v: {sorted(set(n_neg.values()))} negative forwards, {sorted(set(n_deq.values()))} "
                  f"dequantized (32 modules; 1 = projected once per run)")

    ms = gmp.model.model_sampling
    sigmas = [float(ms.percent_to_sigma(p)) for p in PERCENTS]
    counter.reset()
    multi = probe(nasa, latent, pos, neg, sigmas)
    multi_neg = dict(counter.neg)
    singles = []
    for s in sigmas:
        singles.append(probe(nasa, latent, pos, neg, [s])[0])
    single_neg = dict(counter.neg)
    plain_p = probe(gmp, latent, pos, neg, sigmas)
    exact = all(torch.equal(multi[i], singles[i]) for i in range(3))
    acts = all(not torch.equal(multi[i], plain_p[i]) for i in range(3))
    res.check(quant, "reuse exact: 3 sigmas == each alone", exact and acts and counter.all_equal(multi_neg, 1)
              and counter.all_equal(single_neg, 4),
              f"bit-identical={exact}, NASA acts at each={acts}, neg projections per module: 3-sigma run "
              f"{sorted(set(multi_neg.values()))}, +3 single runs -> {sorted(set(single_neg.values()))}")

    ref_out = {s: sample(apply_nasa(ref, ALPHA), latent, pos, neg, s) for s in (1, 3)}
    diffs = {s: _maxdiff(out[s], ref_out[s]) for s in (1, 3)}
    effect = _maxdiff(out[3], plain[3])
    res.check(quant, "== float32 model with GGUF's weights", all(d <= 1e-5 * max(effect, 1e-6) for d in diffs.values()),
              f"max |diff| 1 step {diffs[1]:.1e}, 3 steps {diffs[3]:.1e} (NASA's effect {effect:.2e})"
              + (" bit-identical" if all(d == 0 for d in diffs.values()) else ""))

    # 4. a LoRA between two runs on the same loaded GGUF model: no stale projections
    counter.reset()
    run1 = sample(nasa, latent, pos, neg, 3)
    keys_run1 = list(counter.keys)
    lora = random_lora(dm)
    (gmp_lora, _) = comfy.sd.load_lora_for_models(gmp, None, lora, 1.0, 0)
    nasa_lora = apply_nasa(gmp_lora, ALPHA)
    counter.reset()
    run2 = sample(nasa_lora, latent, pos, neg, 3)
    n_neg, n_patched, keys_run2 = dict(counter.neg), dict(counter.patched), list(counter.keys)
    (ref_lora, _) = comfy.sd.load_lora_for_models(ref, None, lora, 1.0, 0)
    ref2 = sample(apply_nasa(ref_lora, ALPHA), latent, pos, neg, 3)
    plain2 = sample(gmp_lora, latent, pos, neg, 3)
    d2 = _maxdiff(run2, ref2)
    effect2 = _maxdiff(ref2, plain2)
    res.check(quant, "LoRA patches held by GGUF", len(gmp_lora.patches) == 32 and counter.all_equal(n_patched, 1)
              and counter.all_equal(n_neg, 1),
              f"{len(gmp_lora.patches)} patched keys; neg K/V dequantized with patches "
              f"{sorted(set(n_patched.values()))} per module, projected {sorted(set(n_neg.values()))} per module "
              f"in 3 steps")
    res.check(quant, "LoRA run after plain run == fresh ref", d2 <= 1e-5 * max(effect2, 1e-6)
              and _rel(run2, run1) > 1e-2 and torch.equal(run1, out[3]),
              f"max |run2 - float32+LoRA ref| {d2:.1e} (NASA's effect {effect2:.2e}); |run2 - run1| / |run1| = "
              f"{_rel(run2, run1):.3f}")
    multi2 = probe(nasa_lora, latent, pos, neg, sigmas)
    singles2 = [probe(nasa_lora, latent, pos, neg, [s])[0] for s in sigmas]
    ex2 = all(torch.equal(multi2[i], singles2[i]) for i in range(3))
    moved2 = all(not torch.equal(multi2[i], multi[i]) for i in range(3))
    res.check(quant, "LoRA: 3 sigmas == each alone", ex2 and moved2,
              f"bit-identical={ex2}, differs from LoRA-free={moved2}")
    run3 = sample(nasa, latent, pos, neg, 3)
    res.check(quant, "LoRA removed again: == first run", torch.equal(run3, run1),
              f"max |diff| {_maxdiff(run3, run1):.1e}")

    if not keys_run1 or not keys_run2:
        res.check(quant, "weights_key on GGUF layers", False, "layer 0 projected no negative in run 1 or 2")
        return
    if keys_run1[0] is None or keys_run2[0] is None:
        res.check(quant, "weights_key on GGUF layers", False, "no key: NASA's reuse is off on GGUF layers")
        return
    blind = keys_run1[0] == keys_run2[0]
    # within one run the cache would keep a stale projection if GGUF's patches changed (never happens in ComfyUI)
    name_k = min(kv)
    mk = kv[name_k]
    key = f"diffusion_model.{name_k}.weight"
    cache = reuse.ProjectionCache(True)
    x = neg[0][0]
    with torch.inference_mode():
        first = cache.get("k", (mk,), x, mk)
        saved = mk.weight.patches
        mk.weight.patches = [(gmp_lora.patches[key], key)]      # what GGUFModelPatcher.patch_weight_to_device sets
        try:
            again = cache.get("k", (mk,), x, mk)
            fresh = mk(x)
        finally:
            mk.weight.patches = saved
    stale = again is first and not torch.equal(fresh, first)
    res.check(quant, "reuse key sees GGUF's patches", not blind and not stale,
              f"key of layer 0 K/V {'equal' if blind else 'differs'} with/without LoRA (same GGMLTensor, only .patches "
              f"swapped); a patch swap inside one run is served {'STALE' if stale else 'fresh'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf-pack", required=True, type=Path, help="a checkout of city96/ComfyUI-GGUF")
    parser.add_argument("--comfyui", type=Path, default=None,
                        help="ComfyUI checkout (default: $COMFYUI_PATH, the custom_nodes location, or ~/ComfyUI)")
    parser.add_argument("--quants", default="Q8_0,Q5_0,Q4_0",
                        help="GGML types of the attention weights (gguf's numpy quantizer: Q8_0, Q5_0, Q5_1, Q4_0, "
                             "Q4_1)")
    parser.add_argument("--workdir", default=None, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    comfy_env = _pack_entry.runner("comfy_env")
    if args.comfyui is not None:
        comfy_dir = args.comfyui.expanduser().resolve()
    else:
        comfy_dir, how = comfy_env.find_comfyui(PACK)
        if comfy_dir is None:
            print(f"check_gguf: {how}", file=sys.stderr)
            return 2
    gguf_dir = args.gguf_pack.expanduser().resolve()
    if not (gguf_dir / "nodes.py").is_file() or not (gguf_dir / "ops.py").is_file():
        print(f"check_gguf: {gguf_dir} is not a ComfyUI-GGUF checkout (no nodes.py / ops.py)", file=sys.stderr)
        return 2
    try:
        import gguf  # noqa: F401
    except ImportError:
        print(f"check_gguf: the `gguf` package is missing in {sys.executable} (pip install gguf)", file=sys.stderr)
        return 2
    t0 = time.time()
    nodes = comfy_env.bootstrap(comfy_dir, cpu=True)
    comfy_env.quiet_comfy_logging()
    pack = comfy_env.load_pack(nodes, PACK)
    try:
        gg = _load_gguf_pack(nodes, gguf_dir)
    except Exception as e:      # noqa: BLE001
        print(f"check_gguf: {e}", file=sys.stderr)
        return 2
    import torch
    workdir = args.workdir or tempfile.mkdtemp(prefix="nasa_check_gguf_")
    ctx = {"rm": comfy_env.pack_submodule(pack, "runner.random_weights.models"), "gguf": gg,
           "reuse": comfy_env.pack_submodule(pack, "adapters.reuse"), "workdir": workdir}
    version = comfy_env.comfyui_version(comfy_dir)
    from importlib.metadata import version as _dist_version
    header = (f"NASA x ComfyUI-GGUF check: ComfyUI {version} at {comfy_dir}; ComfyUI-GGUF at {gguf_dir} "
              f"(commit {_gguf_commit(gguf_dir)}); gguf {_dist_version('gguf')}; torch {torch.__version__}"
              f"; CPU, tiny random SD1.5 UNet, alpha {ALPHA}, negative {NEG_LEN} tokens, positive {POS_LEN}")
    print(header, flush=True)
    res = Results()
    for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
        try:
            check_quant(res, quant, ctx)
        except Exception:       # noqa: BLE001  (a crash is a failed check, with its traceback)
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            res.check(quant, "ran without error", False, tb.strip().splitlines()[-1])
    print(res.table())
    failed = res.failed()
    print(f"{'FAILED: ' + str(len(failed)) + ' check(s)' if failed else 'ALL CHECKS PASSED'} "
          f"({sum(r[2] == 'PASS' for r in res.rows)} passed, {time.time() - t0:.0f} s)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": res.rows, "failed": len(failed)}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
