"""Registers the adapter tests' case table (family_cases.py) as ``nasa_family_cases``, loaded by file path as
tests/conftest.py loads support.py (the tests run with --import-mode=importlib: no test folder is on sys.path)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "nasa_family_cases" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("nasa_family_cases", Path(__file__).parent / "family_cases.py")
    sys.modules["nasa_family_cases"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["nasa_family_cases"])
