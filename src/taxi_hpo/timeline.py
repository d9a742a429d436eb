"""Where a command's wall time goes: named moments, in seconds since the process started.

A search marks its steps as they happen (``mark("cluster_ready")``); the summary (``--json``
``timeline``) and the bench report them, so that start-up and shut-down are measured, not
guessed. The process's own start comes from the kernel (``/proc``), so the interpreter's start
and the imports before this module count too; elsewhere the clock starts at this import.
"""

from __future__ import annotations

import os
import threading
import time

_LOCK = threading.Lock()
_MARKS: dict[str, float] = {}


def _process_start() -> float:
    """The wall-clock time this process started (Linux: /proc; else this module's import)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # stat(5) field 22: since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # since boot, to 10 ms (btime is whole seconds)
        return time.time() - (uptime - started)
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_START = _process_start()


def mark(name: str, when: float | None = None) -> None:
    """Remember that ``name`` happened now (or at ``when``, a ``time.time()`` value); the first
    mark of a name is kept."""
    with _LOCK:
        _MARKS.setdefault(name, time.time() if when is None else when)


def since_start(when: float) -> float:
    """Seconds from the process's start to ``when`` (a ``time.time()`` value)."""
    return round(when - PROCESS_START, 3)


def timeline() -> dict[str, float]:
    """Every mark so far, as seconds since the process started, in the order they happened."""
    with _LOCK:
        marks = sorted(_MARKS.items(), key=lambda item: item[1])
    return {name: since_start(when) for name, when in marks}


def reset() -> None:
    """Forget the marks (a process that runs several searches, as the bench does)."""
    with _LOCK:
        _MARKS.clear()
