"""The command's timeline: named steps in seconds since the process started, in their order."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from taxi_hpo import timeline


def test_marks_come_back_in_the_order_they_happened_and_the_first_mark_of_a_name_is_kept():
    timeline.reset()
    now = time.time()
    timeline.mark("b", now + 2)
    timeline.mark("a", now + 1)
    timeline.mark("a", now + 5)  # a step happens once: its first time counts
    marks = timeline.timeline()
    assert list(marks) == ["a", "b"]
    assert marks["b"] - marks["a"] == pytest.approx(1.0, abs=0.002)  # each rounded to 1 ms
    timeline.reset()
    assert timeline.timeline() == {}


def test_the_clock_starts_with_the_process_not_with_the_import():
    # A child that sleeps before importing: its marks count the sleep (the process's start comes
    # from /proc, as an interpreter's start-up and imports must count in a command's timeline).
    code = (
        "import time; time.sleep(0.5); from taxi_hpo import timeline; timeline.mark('x'); "
        "print(timeline.timeline()['x'])"
    )
    seconds = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert seconds >= 0.5
