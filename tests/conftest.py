"""Shared test configuration.

Small fixtures live in tests/data (see tests/data/ATTRIBUTION.md). Tests that need more of
the real data beside the checkout (../shared/data) ask for it through ``shared_data``: the
test is skipped with a reason when it is absent, except when RISTRETTO_REQUIRE_SHARED=1
(set by .ci/run), where a missing file fails the test. RISTRETTO_NO_SKIPS=1 turns every
skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(relpath: str) -> Path:
    """Path of a file under ../shared/data; skip (or fail in CI) when it is not there."""
    path = SHARED_DATA / relpath
    if not path.exists():
        reason = f"needs {relpath} from the shared data folder ({SHARED_DATA})"
        if os.environ.get("RISTRETTO_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def test_data(relpath: str) -> Path:
    """Path of a bundled fixture under tests/data (always present)."""
    path = TEST_DATA / relpath
    assert path.exists(), f"missing bundled fixture tests/data/{relpath}"
    return path


test_data.__test__ = False  # not a test function


def small_work_units(monkeypatch, threads: int) -> None:
    """``threads`` engine threads, and convolution chunks, pooling blocks and element-wise
    blocks as small as they go: many units per layer, shared among the threads."""
    from ristretto_cli import parallel
    from ristretto_cli.layers import convolution, neuron, pooling
    monkeypatch.setattr(parallel, "_threads", threads)
    monkeypatch.setattr(convolution, "CACHE_COL_ELEMENTS", 1)
    monkeypatch.setattr(pooling, "ROUTE_BLOCK_BYTES", 1)
    monkeypatch.setattr(pooling, "PHASE_BLOCK_BYTES", 1)
    monkeypatch.setattr(pooling, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(neuron, "BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(neuron, "PARALLEL_MIN_ELEMENTS", 1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("RISTRETTO_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped test not allowed here: {reason}"
