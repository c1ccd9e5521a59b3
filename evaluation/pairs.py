"""Prompt pairs for the evaluation: a positive prompt, a negative prompt, what must be gone and what must stay.

Files the harness reads (:func:`load`), one pair per line or row:

* **JSON Lines** (``.jsonl``) or a JSON list (``.json``) of objects, or **CSV / TSV** (``.csv``, ``.tsv``) with a
  header row. Fields: ``positive`` and ``negative`` (required); ``gone`` (the feature the negative should remove,
  as a short caption: "glasses"; default: the negative prompt); ``keep`` (what must stay: a list, or one string
  with ``;`` between items; default: nothing); ``category`` (default ``"custom"``); ``id`` (default: the line or
  row number).
* **NegOpt** (the paper's source of prompt pairs, Ogezi et al. 2024): its columns ``prompt`` and
  ``negative_prompt`` are read as ``positive`` and ``negative``, in any of the formats above or as the published
  Parquet file (``.parquet``; needs ``pyarrow``, which the pack does not install). NegOpt's negatives are generic
  lists ("ugly, blurry, ..."), so ``gone`` is the negative itself; :func:`subset` draws the paper's random subset.

:data:`BUILTIN` is a small set of our own in the paper's two categories (content removal: an object or attribute the
positive prompt would bring; quality negatives: the artefact list of section 6), usable with no download.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

FIELDS = ("id", "positive", "negative", "gone", "keep", "category")
NEGOPT_COLUMNS = {"prompt": "positive", "negative_prompt": "negative"}
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Pair:
    id: str
    positive: str
    negative: str
    gone: str = ""                       # the feature the negative should remove ("" -> the negative)
    keep: Tuple[str, ...] = field(default_factory=tuple)
    category: str = "custom"

    def __post_init__(self):
        if not self.gone:
            object.__setattr__(self, "gone", self.negative)


QUALITY_NEGATIVE = ("worst quality, low quality, ugly, duplicate, out of frame, deformed, blurry, bad anatomy, "
                    "watermark")
"""The generic negative of the paper's section 6 (Quantitative Results)."""

_CONTENT = [
    # (positive, negative, gone, keep)
    ("a man reading a newspaper on a park bench", "glasses", "glasses", "a man; a park bench"),
    ("a bowl of fruit on a wooden table", "bananas", "bananas", "a bowl of fruit; a wooden table"),
    ("a city street at night with cars", "people", "people", "a city street; cars"),
    ("a cozy living room with a sofa and a lamp", "a television", "a television", "a sofa; a lamp"),
    ("a mountain lake at sunrise", "snow", "snow on the mountains", "a lake; mountains"),
    ("a dog running on a beach", "a leash", "a dog leash", "a dog; a beach"),
    ("a woman with a red umbrella in the rain", "a hat", "a hat", "a woman; a red umbrella"),
    ("a kitchen counter with bread and cheese", "a knife", "a knife", "bread; cheese"),
    ("a garden full of flowers", "red flowers", "red flowers", "a garden; flowers"),
    ("a sailboat on the open sea", "clouds", "clouds in the sky", "a sailboat; the sea"),
    ("a cat sleeping on a windowsill", "a plant", "a potted plant", "a cat; a windowsill"),
    ("a plate of pasta with tomato sauce", "cheese", "grated cheese", "pasta; tomato sauce"),
]
_QUALITY = [
    "a portrait photo of an old fisherman",
    "a watercolor painting of a village in the hills",
    "an anime illustration of a girl on a train platform",
    "a product photo of a leather backpack",
    "a photo of two children playing football",
    "a digital painting of a dragon over a castle",
]
BUILTIN: Tuple[Pair, ...] = tuple(
    [Pair(f"content-{i:02d}", p, n, g, tuple(k.split("; ")), "content removal")
     for i, (p, n, g, k) in enumerate(_CONTENT, 1)]
    + [Pair(f"quality-{i:02d}", p, QUALITY_NEGATIVE, "a blurry, deformed, low quality image", (p,), "quality")
       for i, p in enumerate(_QUALITY, 1)])


class PairFileError(ValueError):
    pass


def _pair(source: str, default_id: str, row: Dict[str, object]) -> Pair:
    row = {NEGOPT_COLUMNS.get(k, k): v for k, v in row.items()}
    if "positive" not in row or "negative" not in row:
        raise PairFileError(f"{source}: needs the fields 'positive' and 'negative' (or NegOpt's 'prompt' and "
                            f"'negative_prompt'); found {sorted(row)}")

    def text(name: str) -> str:
        value = row.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise PairFileError(f"{source}: '{name}' must be text, got {type(value).__name__}")
        return value.strip()
    if not text("positive"):
        raise PairFileError(f"{source}: 'positive' is empty")
    if not text("negative"):
        raise PairFileError(f"{source}: 'negative' is empty: a pair without a negative measures nothing here")
    keep = row.get("keep") or ()
    if isinstance(keep, str):
        keep = keep.split(";")
    if not isinstance(keep, (list, tuple)) or not all(isinstance(k, str) for k in keep):
        raise PairFileError(f"{source}: 'keep' must be a list of texts or one text with ';' between items")
    pid = row.get("id")
    return Pair(str(pid).strip() if pid not in (None, "") else default_id, text("positive"), text("negative"),
                text("gone"), tuple(k.strip() for k in keep if k.strip()), text("category") or "custom")


def _rows(path: Path) -> Iterable[Tuple[str, Dict[str, object]]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise PairFileError(f"{path}:{n}: not JSON ({e.msg})") from None
                    if not isinstance(obj, dict):
                        raise PairFileError(f"{path}:{n}: expected an object with 'positive' and 'negative'")
                    yield f"{path}:{n}", obj
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PairFileError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
            raise PairFileError(f"{path}: expected a JSON list of objects with 'positive' and 'negative'")
        for n, obj in enumerate(data, 1):
            yield f"{path}[{n}]", obj
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), 2):
                yield f"{path}:{n}", {k: v for k, v in row.items() if k is not None}
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise PairFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or export the file "
                                f"as CSV or JSON Lines") from None
        table = pq.read_table(path, columns=[c for c in ("id", *NEGOPT_COLUMNS, *FIELDS[1:])
                                             if c in pq.read_schema(path).names])
        for n, row in enumerate(table.to_pylist(), 1):
            yield f"{path} row {n}", row
    else:
        raise PairFileError(f"{path}: unknown pair file type {suffix!r}; expected one of {', '.join(FORMATS)}")


def load(path) -> List[Pair]:
    """Every pair of a pair file (see the module's docstring), ids unique; a clear error naming the file and line
    for anything it cannot read."""
    path = Path(path)
    if not path.is_file():
        raise PairFileError(f"{path}: no such pair file")
    pairs = [_pair(source, str(n), row) for n, (source, row) in enumerate(_rows(path), 1)]
    if not pairs:
        raise PairFileError(f"{path}: holds no prompt pairs")
    seen: Dict[str, int] = {}
    for p in pairs:
        seen[p.id] = seen.get(p.id, 0) + 1
    dup = sorted(k for k, v in seen.items() if v > 1)
    if dup:
        raise PairFileError(f"{path}: ids must be unique (results are stored by id); repeated: {dup[:5]}")
    return pairs


def subset(pairs: Sequence[Pair], n: int, seed: int = 0) -> List[Pair]:
    """``n`` pairs drawn at random with ``seed`` (the paper evaluates a random 30K subset of NegOpt), in file order;
    all of them if there are no more than ``n``."""
    if n <= 0:
        raise ValueError(f"subset: n must be positive, got {n}")
    if n >= len(pairs):
        return list(pairs)
    keep = set(random.Random(seed).sample(range(len(pairs)), n))
    return [p for i, p in enumerate(pairs) if i in keep]
