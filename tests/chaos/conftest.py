"""The chaos suite prints every checker verdict of the run as one table at the end,
after the figures of the abuse tests."""

from __future__ import annotations

import pytest

from duplex.testing.chaos import NOTES, REPORTS, format_table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the checker's table (one row per chaos run) after the test summary."""
    if NOTES:
        terminalreporter.section("abuse figures")
        for test, figure in NOTES:
            terminalreporter.write_line(f"{test}: {figure}")
    if not REPORTS:
        return
    terminalreporter.section("chaos checker")
    terminalreporter.write_line(format_table(REPORTS))
    total = sum(r.messages for r in REPORTS)
    faults = sum(r.faults for r in REPORTS)
    lost = sum(r.lost for r in REPORTS)
    dup = sum(r.duplicated for r in REPORTS)
    reord = sum(r.reordered for r in REPORTS)
    terminalreporter.write_line(
        f"total: {total} messages, {faults} faults, lost {lost}, duplicated {dup}, "
        f"reordered {reord}"
    )
