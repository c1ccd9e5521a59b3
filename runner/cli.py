"""The headless runner: execute a ComfyUI workflow (UI or API format) without the web server.

    python scripts/nasa_run.py WORKFLOW.json [--set NODE.INPUT=VALUE]... [--out DIR]
                               [--random-weights FAMILY[:SIZE]] [--comfyui PATH] [--cpu|--gpu]
                               [--quiet|--verbose]

The workflow goes through ComfyUI's own code path: ``execution.validate_prompt`` and then
``execution.PromptExecutor.execute`` with a small stand-in for the server object, exactly as the
server's prompt worker does it, so nodes, caching, validation messages and the PNG metadata of
SaveImage are ComfyUI's own.

Exit codes: 0 success; 1 a node failed while executing; 2 bad usage, unreadable workflow,
ComfyUI not found, or validation errors.

Library use (in-process, e.g. tests): :func:`run_workflow` returns a :class:`RunResult`.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from . import comfy_env
from .workflow import (AUDIO_VAE_LOADERS, CHECKPOINT_LOADERS, CLIP_LOADERS, LORA_LOADERS, MODEL_LOADERS, VAE_LOADERS,
                       WorkflowError, apply_sets, check_clip_loader_types, load_workflow, loaded_files,
                       parse_random_weights, swap_nodes, to_api)

EXIT_OK, EXIT_EXECUTION, EXIT_USAGE = 0, 1, 2
CLIENT_ID = "nasa-headless-runner"


@dataclass
class RunResult:
    ok: bool
    images: list = field(default_factory=list)       # list[Path] of the files the output nodes wrote
    prompt: dict = field(default_factory=dict)       # the API prompt that was validated / executed
    error: Optional[str] = None                      # what went wrong, as printed by the CLI
    exit_code: int = EXIT_OK                         # 0 ok, 1 execution error, 2 usage/workflow/validation
    node_errors: dict = field(default_factory=dict)  # validate_prompt's per-node errors
    failed_node: Optional[str] = None                # the node that raised while executing
    outputs: dict = field(default_factory=dict)      # the executor's history "outputs" (ui per node)
    notes: list = field(default_factory=list)        # --set / --random-weights changes applied
    elapsed: float = 0.0


class Report:
    """Progress output on stderr; silent when quiet (warnings still show)."""

    def __init__(self, quiet: bool, stream=None):
        self.quiet = quiet
        self.stream = stream

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream or sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        print(msg, file=self.stream or sys.stderr, flush=True)


class HeadlessServer:
    """What the executor needs of ComfyUI's PromptServer: the attributes it reads and ``send_sync``,
    which here turns the executor's events into progress lines instead of websocket messages."""

    def __init__(self, report: Report, prompt: dict):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.report = report
        self.prompt = prompt
        self.errors: list = []          # (event, data) of execution_error / execution_interrupted
        self.node_times: dict = {}      # node id -> seconds, for the nodes that ran
        self._running: dict = {}
        self._done: set = set()
        self._last_step_print: dict = {}

    def queue_updated(self) -> None:
        pass

    def _label(self, node_id) -> str:
        node = self.prompt.get(str(node_id))
        return f"node {node_id} ({node['class_type']})" if node else f"node {node_id}"

    def send_sync(self, event, data, sid=None) -> None:
        try:
            self._handle(event, data)
        except Exception as e:  # the display must never break a run
            logging.debug("progress display failed on %s: %s", event, e)

    def _handle(self, event, data) -> None:
        now = time.perf_counter()
        if event in ("execution_error", "execution_interrupted"):
            self.errors.append((event, data))
        elif event == "progress_state":
            for node_id, st in (data.get("nodes") or {}).items():
                state = st.get("state")
                if state == "running" and node_id not in self._running and node_id not in self._done:
                    self._running[node_id] = now
                elif state == "finished" and node_id not in self._done:
                    self._done.add(node_id)
                    start = self._running.pop(node_id, None)
                    if start is None:
                        self.report.info(f"  {self._label(node_id)}: cached")
                    else:
                        self.node_times[node_id] = now - start
                        self.report.info(f"  {self._label(node_id)}: done in {now - start:.2f}s")
        elif event == "progress":
            node_id, value, total = data.get("node"), data.get("value"), data.get("max")
            last = self._last_step_print.get(node_id, 0.0)
            if value == total or value == 1 or now - last >= 1.0:
                self._last_step_print[node_id] = now
                self.report.info(f"  {self._label(node_id)}: step {value}/{total}")


# --- ComfyUI ---------------------------------------------------------------------------------------

class SetupError(WorkflowError):
    """ComfyUI could not be found or brought up (exit 2)."""


def _ensure_comfy(comfyui=None, cpu: Optional[bool] = None, report: Optional[Report] = None,
                  quiet_imports: bool = True):
    """Boot ComfyUI in this process (once), load its extra nodes and this pack; returns ``nodes``."""
    report = report or Report(True)
    if comfyui is not None:
        comfy_dir = Path(comfyui).expanduser().resolve()
        if not comfy_env.is_comfyui_dir(comfy_dir):
            raise SetupError(f"--comfyui {comfyui}: no ComfyUI checkout there (expected comfy/, nodes.py, "
                             f"execution.py)")
    elif comfy_env.booted_dir() is not None:
        comfy_dir = comfy_env.booted_dir()
    else:
        comfy_dir, how = comfy_env.find_comfyui()
        if comfy_dir is None:
            raise SetupError(f"{how}.\nPoint the runner at ComfyUI with --comfyui /path/to/ComfyUI or "
                             f"COMFYUI_PATH=/path/to/ComfyUI, or install this pack in ComfyUI/custom_nodes/.")
    if comfy_env.booted_dir() is None:
        if cpu is False:
            import torch
            if not torch.cuda.is_available():
                raise SetupError("--gpu: torch sees no CUDA device here (use --cpu, or a CUDA build of torch)")
        report.info(f"ComfyUI {comfy_env.comfyui_version(comfy_dir)} at {comfy_dir}")
    try:
        nodes = comfy_env.bootstrap(comfy_dir, cpu=cpu)     # returns the loaded one, or refuses another dir
    except (RuntimeError, FileNotFoundError, ImportError) as e:
        raise SetupError(f"could not import ComfyUI from {comfy_dir}: {e}") from None
    if not comfy_env.builtin_nodes_loaded():
        root = logging.getLogger()
        old = root.level
        if quiet_imports:
            root.setLevel(logging.ERROR)  # the "IMPORT FAILED" lines of optional modules: summarised below
        try:
            failed = comfy_env.init_builtin_nodes(nodes)
        finally:
            root.setLevel(old)
        if failed:
            report.info(f"note: {len(failed)} optional ComfyUI node modules did not import here "
                        f"(missing packages): {', '.join(failed)}")
    try:
        comfy_env.load_pack(nodes)
    except RuntimeError as e:
        raise SetupError(str(e)) from None
    return nodes


def _set_progress_hook(server: HeadlessServer):
    """ComfyUI's global progress-bar hook, as main.py installs it, feeding our server stand-in."""
    import comfy.model_management
    import comfy.utils
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if ctx is not None:
            prompt_id = prompt_id if prompt_id is not None else ctx.prompt_id
            node_id = node_id if node_id is not None else ctx.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        prompt_id = prompt_id if prompt_id is not None else server.last_prompt_id
        node_id = node_id if node_id is not None else server.last_node_id
        get_progress_state().update_progress(node_id, value, total, None)  # no previews headless
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
                         server.client_id)

    previous = (comfy.utils.PROGRESS_BAR_HOOK, comfy.utils.PROGRESS_BAR_ENABLED)
    comfy.utils.set_progress_bar_global_hook(hook)
    comfy.utils.PROGRESS_BAR_ENABLED = False  # our step lines replace the samplers' tqdm bars

    def restore():
        comfy.utils.set_progress_bar_global_hook(previous[0])
        comfy.utils.PROGRESS_BAR_ENABLED = previous[1]
    return restore


def _format_validation(error: Optional[dict], node_errors: dict, prompt: dict) -> str:
    lines = []
    if error:
        msg = error.get("message", "validation failed")
        details = error.get("details") or ""
        if error.get("type") != "prompt_outputs_failed_validation" and details:
            msg += f" ({details})"
        lines.append(f"the workflow failed validation: {msg}")
    else:
        lines.append("the workflow failed validation")
    for node_id, info in node_errors.items():
        node = prompt.get(node_id, {})
        title = (node.get("_meta") or {}).get("title")
        label = f"node {node_id} ({info.get('class_type') or node.get('class_type')}"
        label += f", '{title}')" if title and title != node.get("class_type") else ")"
        for reason in info.get("errors", []):
            text = reason.get("message", "")
            if reason.get("details"):
                text += f": {reason['details']}"
            lines.append(f"  {label}: {text}")
    return "\n".join(lines)


def collect_texts(outputs: dict) -> list:
    """The text an output node shows in the UI (``ui={"text": [...]}``), e.g. NASA Toy Judge's report."""
    texts = []
    for ui in outputs.values():
        if isinstance(ui, dict) and isinstance(ui.get("text"), list):
            texts += [t for t in ui["text"] if isinstance(t, str)]
    return texts


def _collect_files(outputs: dict) -> list:
    import folder_paths
    bases = {"output": folder_paths.get_output_directory(), "temp": folder_paths.get_temp_directory(),
             "input": folder_paths.get_input_directory()}
    files = []
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    base = bases.get(item.get("type", "output"), bases["output"])
                    files.append(Path(base) / (item.get("subfolder") or "") / item["filename"])
    return files


def _register(nodes, node_cls) -> str:
    """Register a random-weight stand-in node in this process (not part of the pack); returns its id."""
    schema = node_cls.GET_SCHEMA()
    if nodes.NODE_CLASS_MAPPINGS.get(schema.node_id) is not node_cls:
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        node_cls.RELATIVE_PYTHON_MODULE = "custom_nodes.nasa_headless_runner"
        if schema.display_name:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
    return schema.node_id


def apply_random_weights(nodes, prompt: dict, spec: str, report: Report) -> list:
    """Swap the workflow's loaders for random-weight stand-ins of FAMILY (see --help).

    SD families: CheckpointLoaderSimple. DiT families: CheckpointLoaderSimple, UNETLoader, the CLIP
    loaders (whose ``type`` must be the family's) and VAELoader (LTX-2: also LTXAVTextEncoderLoader and
    LTXVAudioVAELoader). Both: LoraLoaderModelOnly."""
    from .random_weights import dit as random_dit, models as random_models
    family, size = parse_random_weights(spec, random_models.FAMILIES + random_dit.FAMILIES, random_models.SIZES)
    dit = family in random_dit.FAMILIES
    if dit and size != "tiny":
        raise WorkflowError(f"--random-weights {spec!r}: the DiT families have the tiny size only")
    originals = {nid: loaded_files(n) for nid, n in prompt.items()}
    stand_ins = random_dit.node_classes()

    def lora_inputs(node):   # the LoRA's input model stays linked; its file becomes a random LoRA
        return {"model": node["inputs"].get("model"), "strength_model": node["inputs"].get("strength_model", 1.0),
                "seed": 0}
    plan = [(LORA_LOADERS, stand_ins["lora"], lora_inputs)]
    if dit:
        try:
            pipe = random_dit._pipeline(family)   # refuses a family this ComfyUI lacks (exit 2, before running)
        except ValueError as e:
            raise WorkflowError(str(e)) from None
        check_clip_loader_types(prompt, pipe.clip_loaders, spec, pipe.what)
        inputs = {"family": family, "seed": 0, "dtype": "float32"}
        plan += [(CHECKPOINT_LOADERS, stand_ins["checkpoint"], inputs), (MODEL_LOADERS, stand_ins["model"], inputs),
                 (CLIP_LOADERS, stand_ins["clip"], inputs), (VAE_LOADERS, stand_ins["vae"], inputs),
                 (AUDIO_VAE_LOADERS, stand_ins["audio_vae"], inputs)]
    else:
        plan.append((CHECKPOINT_LOADERS, random_models.random_checkpoint_node_class(),
                     {"family": family, "size": size, "seed": 0, "dtype": "float32"}))
    swapped = [nid for types, node_cls, inputs in plan
               for nid in swap_nodes(prompt, types, _register(nodes, node_cls), inputs)]
    if not swapped:
        report.warn(f"WARNING: --random-weights {spec}: the workflow has no loader to swap; nothing swapped")
        return []
    which = ", ".join(f"node {nid} ({', '.join(map(repr, originals[nid])) or prompt[nid]['class_type']})"
                      for nid in swapped)
    report.warn(f"!!! RANDOM WEIGHTS ({family}:{size}): {which} replaced by random-weight {family} parts. "
                f"The images will be NOISE; this run only checks the plumbing. !!!")
    return [f"random weights {family}:{size} for node(s) {', '.join(swapped)}"]


# --- running ----------------------------------------------------------------------------------------

def _prompt_executor(execution, server):
    """ComfyUI's PromptExecutor with the classic cache, built as main.py builds it for ``--cache-classic``:
    bound by parameter name (0.3.7x added ``cache_args``, which its execute step then reads)."""
    params = inspect.signature(execution.PromptExecutor).parameters
    kwargs = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in params:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(server, **kwargs)


class WorkflowSession:
    """ComfyUI brought up in this process once, and one executor kept across runs: a graph run many times with other
    inputs (the evaluation harness) loads its models once, as ComfyUI's server keeps its node cache between queued
    prompts. ``close()`` unloads the models (ComfyUI then restores weights that LoRAs patched in place)."""

    def __init__(self, comfyui=None, cpu: Optional[bool] = None, quiet: bool = True):
        self.report = Report(quiet)
        self.nodes = _ensure_comfy(comfyui, cpu, self.report)       # SetupError (a WorkflowError) if it cannot
        self._executor = None

    def to_api(self, workflow: Union[dict, str, Path], sets: Iterable[str] = ()) -> tuple:
        """(API prompt, format, notes of the ``--set`` changes, the loaded data) of a workflow file, dict or JSON."""
        data = load_workflow(workflow)
        prompt, fmt = to_api(data, self.nodes.NODE_CLASS_MAPPINGS,
                             getattr(self.nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}))
        return prompt, fmt, apply_sets(prompt, sets, self.nodes.NODE_CLASS_MAPPINGS), data

    def random_weights(self, prompt: dict, spec: str) -> list:
        """Swap the prompt's loaders for random weights of ``spec`` (``FAMILY[:SIZE]``) in place; the changes made."""
        return apply_random_weights(self.nodes, prompt, spec, self.report)

    def execute(self, prompt: dict, out_dir=None, extra_data: Optional[dict] = None, notes=(),
                verbose_errors: bool = False, t0: Optional[float] = None) -> RunResult:
        """Validate and execute an API ``prompt``; never raises for a workflow that fails. ``out_dir``: where its
        output nodes write; an output node the executor cached in an earlier run (same id, same inputs) keeps the
        folder it was made with, so a caller that changes folders gives its output nodes new ids."""
        import execution
        import folder_paths

        t0 = time.perf_counter() if t0 is None else t0
        notes = list(notes)
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        ok, error, good_outputs, node_errors = valid[0], valid[1], valid[2], valid[3]
        if not ok or node_errors:
            return RunResult(False, prompt=prompt, error=_format_validation(error, node_errors, prompt),
                             exit_code=EXIT_USAGE, node_errors=node_errors, notes=notes,
                             elapsed=time.perf_counter() - t0)
        previous_out = folder_paths.get_output_directory()
        if out_dir is not None:
            out = Path(out_dir).expanduser().resolve()
            out.mkdir(parents=True, exist_ok=True)
            folder_paths.set_output_directory(str(out))
        server = HeadlessServer(self.report, prompt)
        server.last_prompt_id = prompt_id
        restore_hook = _set_progress_hook(server)
        self.report.info(f"executing {len(good_outputs)} output node(s): "
                         + ", ".join(f"{o} ({prompt[o]['class_type']})" for o in sorted(good_outputs)))
        try:
            if self._executor is None:
                self._executor = _prompt_executor(execution, server)
            executor = self._executor
            executor.server = server        # PromptExecutor reads its server from this attribute (0.3.64 - 0.33)
            executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID, **(extra_data or {})}, list(good_outputs))
            outputs = (getattr(executor, "history_result", None) or {}).get("outputs", {})
            files = _collect_files(outputs)
        finally:
            restore_hook()
            folder_paths.set_output_directory(previous_out)

        elapsed = time.perf_counter() - t0
        errors = server.errors or [(ev, d) for ev, d in executor.status_messages
                                   if ev in ("execution_error", "execution_interrupted")]
        if errors or not executor.success:
            event, d = errors[0] if errors else ("execution_error", {})
            node_id, node_type = d.get("node_id"), d.get("node_type")
            if event == "execution_interrupted":
                msg = f"execution interrupted at node {node_id} ({node_type})"
            else:
                exc = (d.get("exception_message") or "").strip()
                etype = (d.get("exception_type") or "").rsplit(".", 1)[-1]
                msg = f"node {node_id} ({node_type}) failed: {etype + ': ' if etype else ''}{exc}"
                if verbose_errors and d.get("traceback"):
                    msg += "\n" + "".join(d["traceback"]).rstrip()
            return RunResult(False, images=files, prompt=prompt, error=msg, exit_code=EXIT_EXECUTION,
                             failed_node=str(node_id) if node_id is not None else None, outputs=outputs,
                             notes=notes, elapsed=elapsed)
        return RunResult(True, images=files, prompt=prompt, outputs=outputs, notes=notes, elapsed=elapsed)

    def close(self) -> None:
        """Unload while this session's model patchers are alive: ComfyUI then restores the weights that LoRAs
        patched in place. A patcher that dies loaded leaves its patches in a model a later run may share."""
        import comfy.model_management
        comfy.model_management.unload_all_models()
        self._executor = None


def run_workflow(workflow: Union[dict, str, Path], sets: Iterable[str] = (), out_dir=None,
                 random_weights: Optional[str] = None, quiet: bool = True, *, comfyui=None,
                 cpu: Optional[bool] = None, verbose_errors: bool = False) -> RunResult:
    """Validate and execute ``workflow`` in this process; never raises for user errors.

    ``workflow``: a UI- or API-format dict, a path, or a JSON string. ``sets``: ``NODE.INPUT=VALUE``
    strings. ``out_dir``: where SaveImage writes (default: ComfyUI's output directory).
    ``random_weights``: ``FAMILY[:SIZE]`` to swap the workflow's loaders for random weights.
    Boots ComfyUI (``comfyui`` / ``cpu`` as for the CLI) unless this process already did.
    """
    t0 = time.perf_counter()
    prompt: dict = {}
    try:
        session = WorkflowSession(comfyui, cpu, quiet)
        prompt, fmt, notes, data = session.to_api(workflow, sets)
        session.report.info(f"workflow: {fmt} format, {len(prompt)} nodes")
        for n in notes:
            session.report.info(f"  set {n}")
        if random_weights:
            notes += session.random_weights(prompt, random_weights)
    except WorkflowError as e:
        return RunResult(False, prompt=prompt, error=str(e), exit_code=EXIT_USAGE,
                         elapsed=time.perf_counter() - t0)
    extra_data = {}
    if fmt == "ui":
        extra_data["extra_pnginfo"] = {"workflow": data}  # SaveImage embeds it, as the frontend does
    elif fmt == "api-request" and isinstance((data.get("extra_data") or {}).get("extra_pnginfo"), dict):
        extra_data["extra_pnginfo"] = data["extra_data"]["extra_pnginfo"]  # a /prompt body carries its own
    try:
        return session.execute(prompt, out_dir, extra_data, notes, verbose_errors, t0)
    finally:
        session.close()


def pack_command(submodule: str, argv: Sequence[str]) -> int:
    """A pack command line that drives workflows (``scripts/nasa_eval.py``): ComfyUI brought up as the runner
    brings it up (``--comfyui``, ``--cpu``/``--gpu``, ``--verbose`` read from ``argv``), then the pack's
    ``<submodule>.main(argv, session)`` with the :class:`WorkflowSession`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--comfyui", default=None)
    pre.add_argument("--cpu", dest="cpu", action="store_true", default=None)
    pre.add_argument("--gpu", dest="cpu", action="store_false")
    pre.add_argument("--verbose", action="store_true")
    known, _ = pre.parse_known_args(argv)
    _setup_logging(False)
    comfy_env.pin_local_rank_gpu()
    try:
        session = WorkflowSession(known.comfyui, known.cpu, quiet=not known.verbose)
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return comfy_env.pack_submodule(comfy_env.load_pack(session.nodes), submodule).main(list(argv), session)
    finally:
        session.close()


# --- command line ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nasa_run.py",
        description="Run a ComfyUI workflow (UI or API format) headless, through ComfyUI's own executor.",
        epilog="Exit codes: 0 success, 1 a node failed while executing, 2 bad usage / workflow / validation. "
               "Written image paths are printed on stdout, one per line; progress goes to stderr.")
    p.add_argument("workflow", help="workflow JSON, as saved by ComfyUI (UI format) or exported as API format")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input; NODE is a node id, a node title or a class_type used by one node; "
                        "VALUE is parsed as JSON when it can be (7, 1.5, true, \"text\"), else taken as a string. "
                        "Repeatable.")
    p.add_argument("--out", metavar="DIR", help="output directory for SaveImage (default: ComfyUI's output dir)")
    p.add_argument("--random-weights", metavar="FAMILY[:SIZE]",
                   help="smoke test without model files: replace the workflow's loaders by random-weight "
                        "models of FAMILY built from ComfyUI's own classes. sd15, sd21, sd21v, sdxl (SIZE tiny, "
                        "the default, or full): CheckpointLoaderSimple. flux, chroma, sd35, pixart, wan21, "
                        "qwen_image, lumina2, anima, hidream, ... (tiny only): CheckpointLoaderSimple, UNETLoader, "
                        "CLIPLoader/DualCLIPLoader/TripleCLIPLoader (their type must be the family's), "
                        "QuadrupleCLIPLoader and VAELoader (ltx2 also LTXAVTextEncoderLoader and "
                        "LTXVAudioVAELoader). "
                        "LoraLoaderModelOnly becomes a random LoRA. The images are noise.")
    p.add_argument("--comfyui", metavar="PATH", help="ComfyUI checkout (default: $COMFYUI_PATH, the "
                                                    "ComfyUI/custom_nodes/<pack> location, ~/ComfyUI)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--cpu", action="store_true", help="run on the CPU")
    dev.add_argument("--gpu", action="store_true", help="run on the GPU (error if torch sees none)")
    verb = p.add_mutually_exclusive_group()
    verb.add_argument("--quiet", "-q", action="store_true", help="only errors, warnings and the written paths")
    verb.add_argument("--verbose", "-v", action="store_true",
                      help="show ComfyUI's own log (INFO) and the traceback of a failing node")
    return p


class _DropReported(logging.Filter):
    """Hide the executor's own error log (with traceback) and validation log: the runner reports
    those itself, without a traceback. --verbose shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and os.path.basename(record.pathname or "") == "execution.py")


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(message)s"))
    if not verbose:
        handler.addFilter(_DropReported())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    cpu = True if args.cpu else (False if args.gpu else None)
    report = Report(args.quiet)
    try:
        try:
            _ensure_comfy(args.comfyui, cpu, report, quiet_imports=not args.verbose)
        except WorkflowError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        result = run_workflow(args.workflow, args.sets, args.out, args.random_weights, quiet=args.quiet,
                              verbose_errors=args.verbose)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not result.ok:
        print(f"error: {result.error}", file=sys.stderr)
        if result.exit_code == EXIT_EXECUTION and not args.verbose:
            print("(run with --verbose for ComfyUI's log and the traceback)", file=sys.stderr)
        for f in result.images:
            print(str(f))
        return result.exit_code
    report.info(f"done in {result.elapsed:.1f}s: {len(result.images)} file(s) written")
    for text in collect_texts(result.outputs):
        print(text)
    for f in result.images:
        print(str(f))
    if not result.images:
        report.warn("note: the workflow wrote no files (no SaveImage / preview output ran)")
    return EXIT_OK
