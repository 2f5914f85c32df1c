"""The test tiers themselves (tests/conftest.py): which tests are fast, and the end-of-session list of fast-tier tests
that took too long, serially and under pytest-xdist (whose summary is written by a process that collected nothing)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.worker  # each test starts pytest sessions of its own

TESTS = """
import pytest

def test_unit():
    pass

@pytest.mark.train
def test_trains():
    pass

@pytest.mark.worker
@pytest.mark.fast
def test_the_tiers_one_run():
    pass
"""


@pytest.mark.parametrize("workers", [None, "2"])
def test_slow_fast_tier_tests_are_named_at_the_end(pytester, monkeypatch, workers):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BENCH_FAST_SECONDS", "0")  # every test is over the limit
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems, pytest_terminal_summary\n")
    pytester.makepyfile(test_tiny=TESTS)
    args = ["-p", "no:cacheprovider", *(["-n", workers] if workers else [])]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)
    named = sorted(line.split()[-1] for line in result.outlines if "s  test_tiny.py::" in line)
    # The tier's one run is fast by its own mark and may take long; a fast test by the rule may not.
    assert named == ["test_tiny.py::test_unit"], result.outlines[-20:]
    assert any(line.startswith("=") and "fast-tier tests over 0 s" in line for line in result.outlines)
    fast = pytester.runpytest_subprocess(*args, "-m", "fast")
    fast.assert_outcomes(passed=2)  # test_trains left out (xdist does not report deselections)
