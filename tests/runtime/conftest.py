"""The runtime layer: fashsdk alone, with torch made unimportable inside every test.

Session fixtures (bundles exported with torch) are built before this per-test guard, so a
test here fails if anything on the runtime path imports torch.
"""
from __future__ import annotations

import sys
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def torch_unimportable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` (and torch.*) now raises ImportError
    yield
