"""``python -m taxi_hpo.cli``: the ``taxi-hpo`` command."""

from taxi_hpo.cli import entry

entry()
