"""The prepared data on every worker, sent once: a worker plugin, not a key in Dask's memory.

Scattered with ``broadcast=True``, the data was a Dask key like any other, and the scheduler's
Active Memory Manager (on by default) drops the copies that no queued task needs at that moment:
the next trial placed on such a worker fetched all 6.4 MB again from a peer. A 20-trial search on
two workers did so on one of them (counted in the workers' own transition logs); and Dask sized
the object at 56 bytes, so neither its memory accounting nor its transfer figures showed it.

A worker plugin is kept by the scheduler and set up on every worker, those present and those that
join or restart later, and nothing in Dask's memory management touches it. Trials carry a
:class:`DataRef` of a few dozen bytes and :func:`resolve` it on the worker.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from distributed.diagnostics.plugin import WorkerPlugin

PREFIX = "taxi-hpo-data-"
_STASH: dict[str, object] = {}
#: How often each key was set up in this process: what the data's journeys to it were.
ARRIVALS: collections.Counter = collections.Counter()


@dataclass(frozen=True)
class DataRef:
    """What a trial task carries instead of the data."""

    key: str
    nbytes: int

    @property
    def plugin_name(self) -> str:
        """The name of the worker plugin that holds the data."""
        return PREFIX + self.key


class WorkerData(WorkerPlugin):
    """Holds one search's prepared data in each worker process, for as long as it is registered."""

    def __init__(self, key: str, data) -> None:
        self.key, self.data = key, data
        self.name = PREFIX + key

    def setup(self, worker=None) -> None:
        """On each worker, when it gets the plugin: keep the data in this process (counted in
        :data:`ARRIVALS`)."""
        _STASH[self.key] = self.data
        ARRIVALS[self.key] += 1
        from taxi_hpo.cluster.watchdog import quiet_closing_heartbeat

        quiet_closing_heartbeat(worker)

    def teardown(self, worker=None) -> None:
        """On each worker, when the plugin is unregistered: drop this process's copy."""
        _STASH.pop(self.key, None)


def share(client, data) -> DataRef:
    """Send ``data`` to every worker of ``client``'s cluster, now and when one joins later."""
    from taxi_hpo.cluster import plugin_owner

    # the name says which client owns it: the scheduler drops it if that client dies (a SIGKILLed flow)
    ref = DataRef(plugin_owner.owned_name("", client), int(getattr(data, "nbytes", 0)))
    plugin_owner.register(client, WorkerData(ref.key, data))
    return ref


def unshare(client, ref: DataRef | None) -> None:
    """Free the workers' copies (a long-lived remote cluster keeps nothing of a finished search)."""
    if ref is None or client is None:
        return
    try:
        client.unregister_worker_plugin(ref.plugin_name)
    except Exception:  # noqa: BLE001 - a cluster already gone: nothing is left to free
        pass


#: What :class:`DataMissing` says first: the flow recognises the failure by it in the task's state.
MISSING = "this worker holds no copy of the search's data"


class DataMissing(RuntimeError):
    """The worker a trial landed on holds no copy of the data: it is closing (Dask's ``Adaptive``
    retired it just after the trial was placed there, and its plugins are torn down as it
    closes), the search has ended, or the plugin failed to set up. Not the trial's fault: the
    trial is not retried there, and the flow submits it again (see ``cluster.runner``)."""


def failed_for_missing_data(state) -> bool:
    """Whether a trial task's Prefect ``state`` is a failure by :class:`DataMissing`."""
    return state.is_failed() and MISSING in (state.message or "")


def resolve(data):
    """On a worker: the data a :class:`DataRef` names (anything else is returned as it is)."""
    if not isinstance(data, DataRef):
        return data
    try:
        return _STASH[data.key]
    except KeyError:
        raise DataMissing(
            f"{MISSING} ({data.key}): the worker is closing, the search that shared it has "
            f"ended, or the worker plugin failed to set up"
        ) from None
