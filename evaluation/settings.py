"""The settings an evaluation compares, written as the command line takes them: ``none`` (no negative), ``cfg:K``
(classifier-free guidance at scale K with the negative as the unconditional prompt), ``nasa:A`` (NASA at alpha A),
``nag:S`` (NAG at scale S, its other inputs at their defaults) and ``vsf:S`` (VSF at scale S)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List

KINDS = ("none", "cfg", "nasa", "nag", "vsf")
_NAMES = {"none": "no negative", "cfg": "CFG", "nasa": "NASA α", "nag": "NAG scale", "vsf": "VSF scale"}
_RANGES = {"cfg": (1.0, 100.0), "nasa": (0.0, 2.0), "nag": (1.0, 50.0), "vsf": (0.0, 20.0)}   # the nodes' ranges


@dataclass(frozen=True)
class Setting:
    kind: str
    value: float = 0.0

    @property
    def label(self) -> str:
        return _NAMES["none"] if self.kind == "none" else f"{_NAMES[self.kind]} {self.value:g}"

    @property
    def key(self) -> str:
        """The setting as written on the command line (and in result files)."""
        return "none" if self.kind == "none" else f"{self.kind}:{self.value:g}"


def parse(text: str) -> Setting:
    """One setting (``none``, ``cfg:4``, ``nasa:0.5``, ``nag:5``, ``vsf:2``); a clear error for anything else."""
    kind, sep, value = text.strip().partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"--settings: unknown setting {text!r}; use none, cfg:K, nasa:A, nag:S or vsf:S")
    if kind == "none":
        if sep:
            raise ValueError(f"--settings: 'none' takes no value (got {text!r})")
        return Setting("none")
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"--settings: {text!r} needs a number after '{kind}:' (e.g. {kind}:"
                         f"{ {'cfg': 4, 'nasa': 0.5, 'nag': 5, 'vsf': 2}[kind]})") from None
    lo, hi = _RANGES[kind]
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"--settings: {text!r} is outside {kind}'s range {lo:g}-{hi:g} (the node's own limits)")
    return Setting(kind, v)


def parse_all(texts: Iterable[str]) -> List[Setting]:
    """Several settings, in order, each once."""
    out: List[Setting] = []
    for t in texts:
        s = parse(t)
        if s in out:
            raise ValueError(f"--settings: {s.key} is given twice")
        out.append(s)
    if not out:
        raise ValueError("--settings: give at least one setting (e.g. none nasa:0.5 cfg:4)")
    return out
