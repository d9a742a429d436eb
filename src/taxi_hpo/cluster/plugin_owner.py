"""Worker plugins that leave with the client that registered them.

A search hands its workers two worker plugins (the prepared data, :mod:`taxi_hpo.cluster.worker_data`;
the services' credentials, :mod:`taxi_hpo.cluster.credentials`) and unregisters them when it ends. A flow
process that is SIGKILLed never gets there, and a long-lived scheduler kept both for good: the
data in every worker's memory, the credentials in every worker's environment, on workers that
join later too. So the plugin names carry the registering client's id (:func:`owned_name`), and
a scheduler plugin (:class:`DropWithClient`, registered once per scheduler) unregisters them when
the scheduler drops that client, however it went.

Self-contained (only ``distributed``) and pickled by value: the scheduler runs the class this
process sent, whatever taxi-hpo version it has installed (it needs one all the same: Dask
unpickles task graphs on the scheduler, so it must import what the trials are made of).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid

import cloudpickle
from distributed.diagnostics.plugin import SchedulerPlugin

OWNER = "--of-"
PREFIX = "taxi-hpo-"
_log = logging.getLogger(__name__)
_watched: set[str] = set()  # schedulers (their id) this process registered the watch on


def owned_name(prefix: str, client) -> str:
    """A unique name that says which client owns it: a plugin's name, or the part of it after
    its ``taxi-hpo-...`` prefix."""
    return f"{prefix}{uuid.uuid4().hex[:12]}{OWNER}{client.id}"


def register(client, plugin) -> None:
    """Register a worker plugin named by :func:`owned_name`, with the watch that drops it if
    ``client`` goes without unregistering it."""
    watch(client)
    client.register_plugin(plugin, name=plugin.name)


def owner_of(name: str) -> str | None:
    """The client id in a name made by :func:`owned_name`, else None."""
    if not name.startswith(PREFIX) or OWNER not in name:
        return None
    return name.rsplit(OWNER, 1)[1]


class DropWithClient(SchedulerPlugin):
    """On the scheduler: when a client goes, unregisters the taxi-hpo worker plugins it owned."""

    name = "taxi-hpo-drop-with-client"
    idempotent = True

    def __init__(self) -> None:
        self._tasks: set = set()

    def remove_client(self, scheduler, client: str) -> None:
        """Called by the scheduler when ``client`` (its id) goes: unregister the worker plugins
        named as owned by it (in the background)."""
        for plugin in [n for n in scheduler.worker_plugins if owner_of(n) == client]:
            task = asyncio.ensure_future(scheduler.unregister_worker_plugin(None, plugin))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def watch(client) -> bool:
    """Register :class:`DropWithClient` on ``client``'s scheduler (once; idempotent there too).
    Best effort: a scheduler that refuses pickled plugins keeps the old behaviour (the search
    still unregisters its plugins when it ends); returns whether the watch is on."""
    scheduler = client.scheduler_info().get("id") or client.scheduler.address  # a restarted scheduler: again
    if scheduler in _watched:
        return True
    try:
        client.register_plugin(DropWithClient(), name=DropWithClient.name)
    except Exception as exc:  # noqa: BLE001 - e.g. distributed.scheduler.pickle: false
        _log.warning(
            "the scheduler took no plugin to drop a killed search's data and credentials (%s: %s); "
            "they are dropped when a search ends normally",
            type(exc).__name__,
            exc,
        )
        return False
    _watched.add(scheduler)
    return True


cloudpickle.register_pickle_by_value(sys.modules[__name__])
