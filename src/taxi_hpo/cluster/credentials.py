"""Credentials for the tracking server and the Prefect API, from this process to the workers.

``taxi-hpo run`` reads them from its environment (:data:`ENV_NAMES`). The flow process and a
local cluster's workers (which inherit the environment) use them as they are; workers of a
cluster this process did not start get them from a Dask worker plugin the flow registers
before anything runs there: the values travel once over the scheduler connection (encrypted
with ``tls://``) and are set in each worker's ``os.environ``, also in workers that join later.
They are never task arguments (Prefect records those), command lines, MLflow params or tags,
log lines or part of the summary. Unregistering the plugin at the end of the search puts each
worker's environment back as it was (searches overlapping on one cluster stack their values).
"""

from __future__ import annotations

import os
import threading
import uuid

from distributed.diagnostics.plugin import WorkerPlugin

#: What MLflow's client and Prefect's client read for authentication.
ENV_NAMES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_KEY",
)
PLUGIN_PREFIX = "taxi-hpo-credentials"


def from_environment(environ: os._Environ | dict | None = None) -> dict[str, str]:
    """The credential variables set (non-empty) in ``environ`` (default: this process's)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in ENV_NAMES if env.get(name)}


class WorkerCredentials(WorkerPlugin):
    """Sets credential variables in a worker's environment while it is registered."""

    idempotent = False

    def __init__(self, values: dict[str, str]):
        self._values = dict(values)
        self.name = f"{PLUGIN_PREFIX}-{uuid.uuid4().hex[:12]}"

    def __repr__(self) -> str:  # never the values: Dask may log a plugin
        return f"WorkerCredentials({self.name}: {', '.join(sorted(self._values))})"

    def setup(self, worker=None) -> None:
        """On each worker, when the plugin is registered or the worker joins: set its values in
        ``os.environ`` (over those of plugins registered before)."""
        _push(self.name, self._values)

    def teardown(self, worker=None) -> None:
        """On each worker, when the plugin is unregistered: take its values back out of
        ``os.environ``, leaving those of the other plugins or what the worker had before."""
        _pop(self.name)


# -- worker side: the stack of registered credential sets ----------------------------------------

_LOCK = threading.Lock()
_ACTIVE: dict[str, dict[str, str]] = {}  # plugin name -> values, in registration order
_ORIGINAL: dict[str, str | None] = {}  # each variable as it was before the first plugin


def _push(name: str, values: dict[str, str]) -> None:
    with _LOCK:
        for var in values:
            _ORIGINAL.setdefault(var, os.environ.get(var))
        _ACTIVE.pop(name, None)
        _ACTIVE[name] = dict(values)
        _apply()


def _pop(name: str) -> None:
    with _LOCK:
        _ACTIVE.pop(name, None)
        _apply()


def _apply() -> None:
    """The environment as the registered plugins say, the latest winning; the rest as before."""
    current: dict[str, str] = {}
    for values in _ACTIVE.values():
        current.update(values)
    for var, original in list(_ORIGINAL.items()):
        if var in current:
            os.environ[var] = current[var]
        else:
            if original is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = original
            del _ORIGINAL[var]


# -- flow side -------------------------------------------------------------------------------------


def hand_to_workers(client, environ: os._Environ | dict | None = None) -> str | None:
    """Register the credentials of ``environ`` on the cluster of ``client``; returns the plugin's
    name (for :func:`withdraw`), or None when there are none to hand over."""
    values = from_environment(environ)
    if not values:
        return None
    from taxi_hpo.cluster import plugin_owner

    plugin = WorkerCredentials(values)
    plugin.name = plugin_owner.owned_name(PLUGIN_PREFIX + "-", client)  # dropped if this client dies
    plugin_owner.register(client, plugin)
    return plugin.name


def withdraw(client, name: str | None) -> None:
    """Unregister the plugin: the workers' environment goes back as it was. Best effort (a
    cluster that is already gone has nothing to withdraw)."""
    if not name:
        return
    try:
        client.unregister_worker_plugin(name)
    except Exception:  # noqa: BLE001 - a closed cluster or a worker that left
        pass
