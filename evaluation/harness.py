"""The evaluation loop: every prompt pair x seed x setting through the user's workflow, each image scored.

One job per (pair, seed, setting) is made by :func:`.graph.evaluation_prompt` and executed in one ComfyUI session
(its models load once); it makes the workflow's latent batch of images (B images from the one seed, as ComfyUI
makes them). Its images are written to ``<out>/images/`` and its scores appended to ``<out>/records.jsonl`` as soon
as it is done, so an interrupted run resumes where it stopped (a job already recorded is not made again; its
images are scored again only when they were made without a CLIP model or scored by other models).
:func:`summarize` turns the records into the table per setting.

Scores per image (``nasa_core.metrics``), with the CLIP model the user points at:
* ``clip_plus`` / ``clip_minus``: cosine similarity with the positive prompt and with the negative prompt;
* ``p_present``: the zero-shot probability that the feature the negative names is in the image - the caption
  "<positive>, with <gone>" against the positive alone, at CLIP's logit scale; ``removed``: below one half;
* ``hps`` (with ``--hps``): HPSv2, the cosine of the image and the positive prompt in HPSv2's fine-tuned CLIP;
* ``det_gone`` / ``det_removed`` / ``det_kept`` (with ``--detector``, pairs not of the quality category): the
  detector's best-box confidence for ``gone``, below its threshold, and every ``keep`` found.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from ..nasa_core import metrics
from . import graph
from .pairs import Pair
from .settings import Setting

RECORDS = "records.jsonl"          # one process; with several, records-<rank>.jsonl each (all read back)
IMAGES = "images"
MADE = ("key", "pair", "category", "seed", "setting", "images")     # a record's fields that are not scores


@dataclass(frozen=True)
class Job:
    pair: Pair
    seed: int
    setting: Setting

    @property
    def key(self) -> str:
        return f"{self.pair.id}|{self.seed}|{self.setting.key}"

    def filename(self, index: int) -> str:
        """The job's ``index``-th image (a workflow whose latent has a batch of B makes B images per job)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.pair.id)
        return f"{safe}_s{self.seed}_{self.setting.key.replace(':', '-')}_{index}.png"


def jobs(pairs: Sequence[Pair], seeds: Sequence[int], settings: Sequence[Setting]) -> List[Job]:
    """Every image of the evaluation, pair by pair, seed by seed, setting by setting."""
    return [Job(p, int(s), st) for p in pairs for s in seeds for st in settings]


def present_caption(pair: Pair) -> str:
    return f"{pair.positive}, with {pair.gone}"


class Scorer:
    """The scores of a run's images for their pair: CLIP's; HPSv2's with ``hps`` (an HPSv2 model as a
    :class:`~.clip.ClipScorer`, :func:`.hps.load_hps`); the detector's with ``detector``
    (:class:`~.detector.Detector`). Text embeddings are cached: each text is embedded once per model."""

    def __init__(self, clip, hps=None, detector=None):
        self.clip, self.hps, self.detector = clip, hps, detector
        self._texts: Dict[tuple, torch.Tensor] = {}

    def _text(self, text: str, model=None) -> torch.Tensor:
        model = model or self.clip
        if (id(model), text) not in self._texts:
            self._texts[id(model), text] = model.embed_texts([text])[0]
        return self._texts[id(model), text]

    @property
    def source(self) -> str:
        """Which models scored: a record scored by others (or without HPSv2, now given) is scored again."""
        names = [str(getattr(m, "source", "CLIP model")) for m in (self.clip, self.hps, self.detector)
                 if m is not None]
        return " + ".join(names)

    def score(self, image: torch.Tensor, pair: Pair) -> dict:
        """One image's scores (a row (H, W, 3))."""
        return {k: v[0] for k, v in self.score_batch(image[None], pair).items()}

    def score_batch(self, images: torch.Tensor, pair: Pair) -> Dict[str, list]:
        """The scores of a batch of images (B, H, W, 3) of one pair: one list per score, one CLIP call per model."""
        emb = self.clip.embed_images(images)
        plus, minus = metrics.clip_scores(emb, self._text(pair.positive), self._text(pair.negative))
        p = metrics.present_probability(emb, self._text(present_caption(pair)), self._text(pair.positive),
                                        self.clip.logit_scale)
        out = {"clip_plus": plus.tolist(), "clip_minus": minus.tolist(), "p_present": p.tolist(),
               "removed": metrics.removed(p).tolist()}
        if self.hps is not None:     # HPSv2: the cosine of the image and the positive prompt in its own model
            out["hps"] = metrics.cosine(self.hps.embed_images(images), self._text(pair.positive, self.hps)).tolist()
        if self.detector is not None and pair.category != "quality":    # objects, not "blurry": none to box
            found = [self.detector.max_scores(image, [pair.gone, *pair.keep]) for image in images]
            out["det_gone"] = [float(f[0]) for f in found]
            out["det_removed"] = [bool(f[0] < self.detector.threshold) for f in found]
            if pair.keep:               # every thing the pair must keep is found
                out["det_kept"] = [bool((f[1:] >= self.detector.threshold).all()) for f in found]
        return out

    def scores(self, out: Path, names: Sequence[str], pair: Pair) -> dict:
        """A record's score fields for its saved images ``names``: one list per score, and the models that made
        them."""
        return {"clip": self.source,
                **self.score_batch(torch.stack([load_image(out / IMAGES / name) for name in names]), pair)}


def records_file(out: Path, rank: int = 0, world: int = 1) -> Path:
    """Where a process appends its records: ``records.jsonl`` alone, ``records-<rank>.jsonl`` among several."""
    return out / (RECORDS if world == 1 else f"records-{rank}.jsonl")


def load_records(out: Path) -> Dict[str, dict]:
    """The records of earlier runs, by any number of processes, whose images are still there (a torn last line,
    from a kill, is dropped)."""
    done: Dict[str, dict] = {}
    for path in sorted(Path(out).glob("records*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "key" in rec and rec.get("images") and \
                    all((Path(out) / IMAGES / name).is_file() for name in rec["images"]) and \
                    rec.get("written", 0) >= done.get(rec["key"], {}).get("written", 0):   # the newest wins
                done[rec["key"]] = rec
    return done


def load_image(path: Path) -> torch.Tensor:
    """A saved PNG as a ComfyUI IMAGE row (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def run(session, prompt: dict, todo: Sequence[Job], out, scorer: Optional[Scorer],
        log: Callable[[str], None] = print, rank: int = 0, world: int = 1) -> Dict[str, dict]:
    """Make and score every job of ``todo`` not yet recorded in ``out``; returns every record of ``todo``.
    ``session``: the runner's WorkflowSession (``nodes``, ``execute``); ``prompt``: the workflow in API format;
    ``rank`` of ``world`` processes: which records file this one appends to (the caller shares out the jobs)."""
    out = Path(out)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    classes = session.nodes.NODE_CLASS_MAPPINGS
    roles = graph.find_roles(prompt, classes)
    for what, where in graph.describe(prompt, roles).items():
        log(f"evaluation: {what}: {where}")
    done = load_records(out)
    left = [j for j in todo if j.key not in done]
    rescore = [j for j in todo if j.key in done and scorer is not None and done[j.key].get("clip") != scorer.source]
    log(f"evaluation: {len(todo)} runs (pair x seed x setting), {len(todo) - len(left)} already done, "
        f"{len(left)} to make" + (f", {len(rescore)} made earlier to score with {scorer.source}" if rescore else ""))
    t0 = time.perf_counter()
    with records_file(out, rank, world).open("a", encoding="utf-8") as records, \
            tempfile.TemporaryDirectory() as tmp:
        for job in rescore:                    # made before without --clip, or scored by another CLIP model
            made = {k: v for k, v in done[job.key].items() if k in MADE}     # the earlier scores all go
            rec = {**made, **scorer.scores(out, made["images"], job.pair), "written": time.time()}
            records.write(json.dumps(rec) + "\n")
            done[job.key] = rec
        for i, job in enumerate(left, 1):
            # a save node of its own per run: ComfyUI's node cache would otherwise skip saving an image it made
            # before, or reuse a save node object that still writes where an earlier run's output folder was
            p = graph.evaluation_prompt(prompt, roles, job.pair.positive, job.pair.negative, job.seed, job.setting,
                                        classes, save_id=f"{graph.OUTPUT_PREFIX}_{uuid.uuid4().hex[:12]}")
            result = session.execute(p, out_dir=tmp)
            if not result.ok:
                raise RuntimeError(f"evaluation: {job.key}: the workflow failed: {result.error}")
            if not result.images:
                raise RuntimeError(f"evaluation: {job.key}: the workflow saved no image")
            names = [job.filename(b) for b in range(len(result.images))]
            for src, name in zip(sorted(result.images), names):      # SaveImage numbers a batch in order
                shutil.move(str(src), out / IMAGES / name)
            rec = {"key": job.key, "pair": job.pair.id, "category": job.pair.category, "seed": job.seed,
                   "setting": job.setting.key, "images": names}
            if scorer is not None:
                rec.update(scorer.scores(out, names, job.pair))
            rec["written"] = time.time()
            records.write(json.dumps(rec) + "\n")
            records.flush()
            done[job.key] = rec
            rate = (time.perf_counter() - t0) / i
            log(f"evaluation: {i}/{len(left)} {job.key} ({rate:.1f} s per run, about "
                f"{rate * (len(left) - i) / 60:.1f} min left)")
    return {j.key: done[j.key] for j in todo}


def summarize(records: Iterable[dict], settings: Sequence[Setting]) -> List[dict]:
    """Per setting, in the order given: images, mean CLIP+ / CLIP- with their 95% intervals, removal success."""
    by: Dict[str, List[dict]] = {s.key: [] for s in settings}
    for r in records:
        if r["setting"] in by:
            by[r["setting"]].append(r)
    rows = []
    for s in settings:
        recs = by[s.key]
        row = {"setting": s.key, "label": s.label, "images": sum(len(r["images"]) for r in recs)}
        if recs and all("clip_plus" in r for r in recs):
            for name in ("clip_plus", "clip_minus", "p_present"):
                m = metrics.summarize(v for r in recs for v in r[name])
                row[name], row[name + "_ci95"] = m.mean, m.ci95
            row["removal"] = metrics.summarize(float(v) for r in recs for v in r["removed"]).mean
        if recs and all("hps" in r for r in recs):
            m = metrics.summarize(v for r in recs for v in r["hps"])
            row["hps"], row["hps_ci95"] = m.mean, m.ci95
        for name, key in (("det_removed", "removal_detector"), ("det_kept", "kept_detector")):
            judged = [float(v) for r in recs for v in r.get(name, [])]      # the pairs the detector can judge
            if judged:
                row[key], row[key + "_images"] = metrics.summarize(judged).mean, len(judged)
        rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`summarize`'s rows (an HPSv2 column where every row has it)."""
    hps = bool(rows) and all("hps" in r for r in rows)
    detector = [(key, head) for key, head in (("removal_detector", "removal, detector ↑"),
                                              ("kept_detector", "kept, detector ↑")) if any(key in r for r in rows)]
    extra = ["HPSv2 ↑"] * hps + [head for _, head in detector]
    out = ["| setting | images | CLIP+ ↑ | CLIP− ↓ | removal success ↑ | P(feature present) ↓ |"
           + "".join(f" {h} |" for h in extra), "|---|---|---|---|---|---|" + "---|" * len(extra)]

    def share(r, key):
        return f" {100 * r[key]:.1f}% ({r[key + '_images']}) |" if key in r else " n/a |"
    for r in rows:
        if "clip_plus" in r:
            out.append(f"| {r['label']} | {r['images']} | {r['clip_plus']:.4f} ± {r['clip_plus_ci95']:.4f} | "
                       f"{r['clip_minus']:.4f} ± {r['clip_minus_ci95']:.4f} | {100 * r['removal']:.1f}% | "
                       f"{r['p_present']:.3f} |" + (f" {r['hps']:.4f} ± {r['hps_ci95']:.4f} |" if hps else "")
                       + "".join(share(r, key) for key, _ in detector))
        else:
            out.append(f"| {r['label']} | {r['images']} |" + " not scored |" * (4 + len(extra)))
    return "\n".join(out)


def not_measured(rows: Sequence[dict], detector_given: bool = False) -> List[str]:
    """What the table does not show, and why: said under it, never left for the reader to guess."""
    out = []
    if not rows or not all("clip_plus" in r for r in rows):
        out.append("CLIP+, CLIP-, removal: not measured for every setting (no --clip given when its images were "
                   "made; run again with --clip to score them from the saved images)")
    if not rows or not all("hps" in r for r in rows):
        out.append("HPSv2: not measured (give --hps with a local HPS_v2_compressed.pt or HPS_v2.1_compressed.pt)")
    out.append("ImageReward: not measured (this pack does not read ImageReward's BLIP model)")
    if not any("removal_detector" in r for r in rows):
        out.append("removal and keep by a detector: not measured (" + (
            "every pair is of the quality category, which a detector cannot judge)" if detector_given else
            "give --detector with a local OWL-ViT or OWLv2 folder; it judges the pairs that name objects, not the "
            "quality ones)"))
    out.append("VQA judgement: not measured (this pack reads no VQA model)")
    return out
