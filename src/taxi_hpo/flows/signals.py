"""Ctrl-C during a search: remembered, so that a KeyboardInterrupt a library wrapped in another
exception (pydantic does, when it lands inside a serializer) still ends the search as KILLED."""

from __future__ import annotations

import signal
import sys
import threading

_SIGINT = threading.Event()


def _on_sigint(signum, frame):
    _SIGINT.set()
    raise KeyboardInterrupt


def interrupted() -> bool:
    """True once Ctrl-C reached the search (see :func:`watching_sigint`), or while a
    KeyboardInterrupt is being handled."""
    return _SIGINT.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt)


class watching_sigint:  # noqa: N801 - used as a context manager, named like one
    """For the block: Ctrl-C raises KeyboardInterrupt and is remembered (from the main thread
    only: elsewhere Python delivers no signal)."""

    def __enter__(self):
        _SIGINT.clear()
        self._main = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGINT, _on_sigint) if self._main else None
        return self

    def __exit__(self, *exc):
        if self._main:
            signal.signal(signal.SIGINT, self._previous)
        return False
