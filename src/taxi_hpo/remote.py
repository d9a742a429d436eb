"""Checks before a search runs on an existing scheduler: what remote workers need."""

from __future__ import annotations

from taxi_hpo import cluster
from taxi_hpo.config import RunConfig


def check(cfg: RunConfig) -> dict:
    """Fail early, with one line, when remote workers could not run the search."""
    return cluster.probe_scheduler(cfg.address)
