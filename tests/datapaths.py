"""Where the tests' real data lives: the committed subset, and the optional ``../shared`` sets.

``from datapaths import WELD, shared`` works in any test module (pytest puts tests/ on sys.path).

- ``WELD``: the battery-weld subset committed under tests/data (every clone has it). Tests count
  its files by listing its folders; no counts are hard-coded here.
- ``shared(*parts)``: a path under ``../shared/datasets`` (beside the clone), or a skip that names
  the path when it is missing. With ``ADPS_REQUIRE_SHARED=1`` (set by .ci/run where ../shared
  exists) a missing path fails the test instead, so CI can never skip real-data tests silently.
- ``needs_shared(*parts)``: the same as a mark, for a test or a module that only needs the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
WELD = REPO / "tests" / "data" / "battery_weld" / "welding"
REQUIRE_SHARED_ENV = "ADPS_REQUIRE_SHARED"


def _reason(parts: tuple[str, ...], path: Path) -> str:
    return f"needs ../shared/datasets/{'/'.join(parts)} (not found at {path})"


def _required() -> bool:
    return os.environ.get(REQUIRE_SHARED_ENV) == "1"


def shared(*parts: str) -> Path:
    """``SHARED_DATASETS/<parts>`` if it exists; otherwise skip (or fail, when required)."""
    __tracebackhide__ = True  # report the calling test's line, not this one
    path = SHARED_DATASETS.joinpath(*parts)
    if path.exists():
        return path
    if _required():
        pytest.fail(_reason(parts, path), pytrace=False)
    pytest.skip(_reason(parts, path))


def needs_shared(*parts: str) -> pytest.MarkDecorator:
    """Mark form of ``shared`` for a test or a whole module (``pytestmark = needs_shared(...)``):
    skips with the same reason when the path is missing; with ADPS_REQUIRE_SHARED=1 a missing
    path is an error when the module is collected instead."""
    path = SHARED_DATASETS.joinpath(*parts)
    if not path.exists() and _required():
        pytest.fail(_reason(parts, path), pytrace=False)
    return pytest.mark.skipif(not path.exists(), reason=_reason(parts, path))
