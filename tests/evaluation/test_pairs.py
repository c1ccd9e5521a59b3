"""Prompt-pair files of the evaluation (evaluation/pairs.py): every format reads to the same pairs, NegOpt's columns
are understood, the built-in set is well formed, the random subset is reproducible, and every bad file is refused
with its name and line."""
from __future__ import annotations

import csv
import json

import pytest

from nasa_evaluation import pairs as P

ROWS = [
    {"id": "a", "positive": "a man on a bench", "negative": "glasses", "gone": "glasses",
     "keep": ["a man", "a bench"], "category": "content removal"},
    {"positive": "a cat", "negative": "blurry, ugly"},
]
EXPECTED = [P.Pair("a", "a man on a bench", "glasses", "glasses", ("a man", "a bench"), "content removal"),
            P.Pair("2", "a cat", "blurry, ugly", "blurry, ugly", (), "custom")]


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        names = sorted({k for r in rows for k in r})
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, names, delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writeheader()
            for r in rows:
                w.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_every_format_reads_the_same_pairs(tmp_path, suffix):
    assert P.load(_write(tmp_path / f"pairs{suffix}", ROWS)) == EXPECTED


def test_negopt_columns_are_positive_and_negative(tmp_path):
    rows = [{"id": "n1", "prompt": "portrait of a knight", "negative_prompt": "lowres, bad hands", "likes": 3,
             "sampler": "Euler a"}]
    (pair,) = P.load(_write(tmp_path / "negopt.jsonl", rows))
    assert pair == P.Pair("n1", "portrait of a knight", "lowres, bad hands", "lowres, bad hands", (), "custom")


def test_parquet_without_pyarrow_says_how(tmp_path):
    path = tmp_path / "negopt.parquet"
    path.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(P.PairFileError, match="needs pyarrow .* or export the file as CSV or JSON Lines"):
            P.load(path)
        return
    with pytest.raises(Exception):       # with pyarrow: a broken Parquet file is pyarrow's error
        P.load(path)


def test_builtin_set_in_the_papers_categories():
    ids = [p.id for p in P.BUILTIN]
    assert len(ids) == len(set(ids)) == 18
    assert {p.category for p in P.BUILTIN} == {"content removal", "quality"}
    for p in P.BUILTIN:
        assert p.positive and p.negative and p.gone and p.keep
        if p.category == "content removal":        # the feature must not be asked for by the positive prompt
            assert p.negative not in p.positive, p
    assert all(p.negative == P.QUALITY_NEGATIVE for p in P.BUILTIN if p.category == "quality")


def test_subset_is_reproducible_and_in_file_order():
    many = [P.Pair(str(i), f"p{i}", f"n{i}") for i in range(100)]
    a, b = P.subset(many, 10, seed=3), P.subset(many, 10, seed=3)
    assert a == b and len(a) == 10 and [int(p.id) for p in a] == sorted(int(p.id) for p in a)
    assert P.subset(many, 10, seed=4) != a
    assert P.subset(many, 500) == many
    with pytest.raises(ValueError, match="n must be positive"):
        P.subset(many, 0)


@pytest.mark.parametrize("name, content, message", [
    ("p.jsonl", '{"positive": "a"}\n', r"p.jsonl:1: needs the fields 'positive' and 'negative'"),
    ("p.jsonl", '{"positive": "a", "negative": "b"}\nnot json\n', r"p.jsonl:2: not JSON"),
    ("p.jsonl", '["a", "b"]\n', r"p.jsonl:1: expected an object"),
    ("p.jsonl", '{"positive": "a", "negative": " "}\n', r"'negative' is empty"),
    ("p.jsonl", '{"positive": "", "negative": "b"}\n', r"'positive' is empty"),
    ("p.jsonl", '{"positive": 3, "negative": "b"}\n', r"'positive' must be text"),
    ("p.jsonl", '{"positive": "a", "negative": "b", "keep": 5}\n', r"'keep' must be a list"),
    ("p.json", '{"positive": "a"}', r"expected a JSON list of objects"),
    ("p.csv", "positive,negative\n", r"holds no prompt pairs"),
    ("p.csv", "id,positive,negative\nx,a,b\nx,c,d\n", r"ids must be unique .* repeated: \['x'\]"),
    ("p.txt", "a\n", r"unknown pair file type '.txt'"),
])
def test_bad_files_are_refused_with_name_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(P.PairFileError, match=message):
        P.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(P.PairFileError, match="no such pair file"):
        P.load(tmp_path / "none.jsonl")
