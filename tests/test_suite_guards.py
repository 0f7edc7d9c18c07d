"""The suite's own guards, run under its own configuration (pyproject.toml) through pytester:
a hanging test fails at the per-test timeout, naming itself, and the slowest tests are listed."""

from __future__ import annotations

from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

HANGING = """
import time


def test_that_hangs_forever():
    time.sleep(600)


def test_that_passes():
    pass
"""


def test_a_hanging_test_fails_at_the_timeout_with_its_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_guarded=HANGING)
    # The suite's configuration, with its limit cut to 2 s so the check takes seconds.
    result = pytester.runpytest_subprocess(
        "-c", str(PYPROJECT), "--rootdir", str(pytester.path), "-o", "timeout=2", "-p", "no:xdist"
    )
    result.assert_outcomes(failed=1, passed=1)
    output = result.stdout.str()
    assert "Timeout (>2.0s)" in output
    assert "FAILED test_guarded.py::test_that_hangs_forever" in output
    assert "slowest 25 durations" in output
