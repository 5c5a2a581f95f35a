"""A study's fixed costs are timed from its process's start: read to the clock tick, not psutil's whole-second boot."""

import json
import subprocess
import sys

from study.clock import StudyClock, process_started

FIRST_STATEMENT = ("import time; first = time.time(); import json, psutil; from study.clock import process_started; "
                   "print(json.dumps([first, process_started(), psutil.Process().create_time()]))")


def test_process_start_is_just_before_the_first_statement():
    """The interpreter's start comes a few ms before its first statement: never after it, and not the up to 1 s
    early that psutil's create_time reads (0.28 s on the machine this was written on)."""
    first, started, psutil_started = json.loads(subprocess.run(
        [sys.executable, "-c", FIRST_STATEMENT], capture_output=True, text=True, check=True).stdout)
    assert 0 <= first - started < 0.2, (first, started)
    assert psutil_started - 0.02 <= started < psutil_started + 1.02  # the same start, psutil's boot time rounded down


def test_clock_line_measures_from_the_process_start():
    clock = StudyClock(process_started=100.0, first_trial=108.5, last_trial=200.0)
    assert clock.line(now=203.5).startswith("fixed cost: 8.5 s from the process's start to the first trial, "
                                            "3.5 s from the last trial's end to exit")
    assert abs(StudyClock().process_started - process_started()) < 0.01
