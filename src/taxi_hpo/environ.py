"""Environment variables set for a while and put back as they were."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def restored(names: Iterable[str]) -> Iterator[None]:
    """Put ``names`` back in ``os.environ`` as they were on entry (unset ones unset) on exit."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        restore(saved)


def restore(saved: dict[str, str | None]) -> None:
    """Set each variable of ``saved`` to its value, or unset it where the value is None."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
