"""Ctrl-C during a search (``taxi_hpo.flows.signals``): a real SIGINT to this process."""

from __future__ import annotations

import signal
import time

import pytest

from taxi_hpo.flows.signals import interrupted, watching_sigint


class _SignalledWhileCollected:
    """Its finalizer receives the SIGINT, as distributed's ``Future.__del__`` did in CI."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the handler runs in this frame
        for _ in range(1000):
            pass


def _sleep_until_interrupted(s: float = 5.0) -> None:
    end = time.monotonic() + s
    while time.monotonic() < end:
        time.sleep(0.01)


def test_ctrl_c_inside_a_finalizer_is_not_lost():
    with watching_sigint():
        with pytest.raises(KeyboardInterrupt):  # delivered again, within the sleep
            obj = _SignalledWhileCollected()
            del obj  # the interrupt lands in __del__, where Python would drop it
            _sleep_until_interrupted()
        assert interrupted()


def test_ctrl_c_elsewhere_raises_at_once_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGINT)
    with watching_sigint():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            _sleep_until_interrupted()
        assert interrupted()
    assert signal.getsignal(signal.SIGINT) is before
    with watching_sigint():
        assert not interrupted()  # each search starts uninterrupted
