"""The examples in the report modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["_files", "_throttle", "data", "replay", "live"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"pbtune.report.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
