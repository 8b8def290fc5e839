"""The plugin's contract: simulated by default (never silently skipped), board-only tests skip with a reason
that says how to name a board, and the options are accepted."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BODY = """
import pytest
pytestmark = pytest.mark.hil

async def test_simulated(dfu_target):
    assert dfu_target.simulated
    assert int(await dfu_target.firmware_revision()) == 1

@pytest.mark.hil(requires_board=True)
async def test_board_only(dfu_target):
    raise AssertionError("must not run without a board")
"""


def test_without_a_board_hil_tests_run_on_the_simulator_and_board_tests_skip(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_bench=BODY)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs a real board: pass --hil-address*--hil-profile*"])


def test_the_options_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--hil-address*", "*--hil-profile*", "*--hil-key*"])
