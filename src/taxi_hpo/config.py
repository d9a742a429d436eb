"""Frozen run settings, validated once when built; every error names the flag and the fix."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taxi_hpo.core.machine import usable_cores
from taxi_hpo.errors import ConfigError
from taxi_hpo.search.multifidelity import MODELS as FIDELITY_MODELS
from taxi_hpo.search.promotion import FIDELITIES
from taxi_hpo.search.pruning import RULES as PRUNE_RULES
from taxi_hpo.search.scheduler import MODES
from taxi_hpo.search.space import DEFAULT_MAX_DEPTH, MIN_MAX_DEPTH

DEFAULT_EXPERIMENT = "nyc-taxi-hpo"


def default_data_dir() -> str:
    """The folder of the month files: ``$TAXI_HPO_DATA_DIR``, default ``./data``."""
    return os.environ.get("TAXI_HPO_DATA_DIR", "./data")


def parse_adapt(text: str) -> tuple[int, int]:
    """``MIN:MAX`` -> (MIN, MAX) workers; ConfigError (one line) otherwise."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--adapt {text!r}: give MIN:MAX workers, e.g. 1:8") from None
    return low, high


def parse_cluster_kwargs(text: str) -> dict:
    """``--cluster-kwargs``: a JSON object, or a ``.json``/``.yaml``/``.yml`` file holding one."""
    import json

    source = text
    if text.endswith((".json", ".yaml", ".yml")):
        try:
            source = Path(text).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"--cluster-kwargs {text}: cannot read it ({exc.strerror})") from None
    try:
        if text.endswith((".yaml", ".yml")):
            import yaml

            value = yaml.safe_load(source)
        else:
            value = json.loads(source)
    except Exception as exc:  # noqa: BLE001 - json and yaml errors alike
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--cluster-kwargs {text[:60]!r} is not valid JSON/YAML ({first})") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--cluster-kwargs must be a mapping of keyword arguments, got {type(value).__name__}"
        )
    return value


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1.5h`` -> seconds; ConfigError (one line) otherwise."""
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text and text[-1].lower() in units else (text, "s")
    try:
        seconds = float(value) * units[unit.lower()]
    except ValueError:
        raise ConfigError(f"--timeout {text!r} is not a duration: give e.g. 90s, 30m or 2h") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"--timeout {text!r} must be positive")
    return seconds


def default_workers(threads_per_worker: int) -> int:
    """One worker process per ``threads_per_worker`` usable cores: every core runs a trial."""
    return max(1, usable_cores() // max(1, threads_per_worker))


_WXT = re.compile(r"^(\d+)x(\d+)(-fixed)?$")


def parse_wxt(item: str) -> tuple[int, int, bool] | None:
    """A layout ``WxT`` (elastic) or ``WxT-fixed`` -> (W workers, T threads, elastic); None if not one.

    ``bench --layouts`` and ``plan --layouts`` name layouts so; W and T are >= 1.
    """
    match = _WXT.match(item.strip().lower())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        return None
    return int(match.group(1)), int(match.group(2)), not match.group(3)


def is_local_uri(uri: str) -> bool:
    """True for stores only this machine can open (a sqlite file, a folder)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


#: The stores MLflow opens (a database scheme may carry its driver: postgresql+psycopg2://).
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
#: Those MLflow opens through its SQLAlchemy store.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_scheme(uri: str) -> str:
    """A tracking URI's scheme, lower case, without its driver (``postgresql+psycopg2`` ->
    ``postgresql``)."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower()


#: How long, in all, a tracking call waits for a store that is busy or unreachable before it
#: fails (``tracking.store.retrying``: 0.5, 1, 2, 4, 8, 8, 8 s between 8 attempts), and the
#: variable that sets another total for this process and the local workers it starts.
PATIENCE_S = 31.5
PATIENCE_ENV = "TAXI_HPO_TRACKING_PATIENCE_S"


def check_patience(raw: str) -> None:
    """:data:`PATIENCE_ENV`: seconds (0 or more) a tracking call waits for the store."""
    try:
        value = float(raw) if raw.strip() else 0.0
    except ValueError:
        value = float("nan")
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(
            f"{PATIENCE_ENV}={raw!r} is not a number of seconds: give e.g. 120, or unset it "
            f"(default {PATIENCE_S:g})"
        )


def check_tracking_uri(uri: str) -> None:
    """One line for a tracking URI MLflow would reject deep in the run with a traceback."""
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return  # a folder: MLflow's file store
    scheme = tracking_scheme(uri)
    if scheme not in TRACKING_SCHEMES and len(scheme) > 1:  # one letter: a Windows drive
        raise ConfigError(
            f"--tracking-uri {uri}: unknown scheme '{scheme}'; give sqlite:///PATH.db, "
            f"http(s)://HOST:PORT of an MLflow server, a database URI (postgresql://...) or a folder"
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything ``taxi-hpo run`` was asked to do."""

    train: str = "2021-01"
    valid: str = "2021-02"
    data_dir: str = field(default_factory=default_data_dir)
    trials: int = 20
    workers: int | None = None  # None: default_workers(threads_per_worker)
    threads_per_worker: int = 1
    elastic_threads: bool = True
    address: str | None = None
    cluster_class: str | None = None  # a Dask cluster manager by dotted path (prefect-dask's convention)
    cluster_kwargs: dict = field(default_factory=dict)
    adapt: tuple[int, int] | None = None  # (minimum, maximum) workers for cluster.adapt
    mode: str = "async"
    batch_size: int | None = None
    seed: int = 42
    rounds: int = 100
    max_depth: int = DEFAULT_MAX_DEPTH
    prune: str = "none"
    fidelity: str = "none"  # a ladder of cheaper fits with promotion (search.multifidelity)
    # what TPE models on a ladder (search.multifidelity.MODELS); a resumed search keeps its own
    fidelity_model: str = "merged"
    timeout_s: float | None = None  # no trial starts after this many seconds of search
    timeout_kill: bool = False  # ... and the running ones are stopped
    warm_start: str | None = None  # a search's parent run id, or "latest" of the experiment
    warm_start_trials: int = 5  # how many of its best points run first
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    max_rmse: float = 6.5
    max_inference_time: float = 20e-6
    register: bool = True
    report: bool = True  # the search's report (pictures, HTML) on its parent run
    resume: str | None = None
    workdir: str = field(default_factory=os.getcwd)
    default_layout: bool = False  # set when --workers was left to default_workers()

    def __post_init__(self):
        if self.workers is None and isinstance(self.threads_per_worker, int):
            object.__setattr__(self, "workers", default_workers(self.threads_per_worker))
            object.__setattr__(self, "default_layout", self.address is None and self.cluster_class is None)
        if self.adapt is not None:
            object.__setattr__(self, "adapt", tuple(self.adapt))
        positive = {
            "--trials": self.trials,
            "--workers": self.workers,
            "--threads-per-worker": self.threads_per_worker,
            "--rounds": self.rounds,
            "--warm-start-trials": self.warm_start_trials,
        }
        if self.batch_size is not None:
            positive["--batch-size"] = self.batch_size
        for flag, value in positive.items():
            if value is None or int(value) <= 0:
                raise ConfigError(f"{flag} must be a positive whole number, got {value}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.timeout_s is not None and not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(
                f"--timeout must be a positive duration (e.g. 90s, 30m, 2h), got {self.timeout_s}"
            )
        if self.timeout_kill and self.timeout_s is None:
            raise ConfigError(
                "--timeout-kill needs --timeout: give the budget, e.g. --timeout 30m --timeout-kill"
            )
        if self.prune not in PRUNE_RULES:
            raise ConfigError(f"--prune must be one of {', '.join(PRUNE_RULES)}, got {self.prune!r}")
        if self.fidelity not in FIDELITIES:
            raise ConfigError(f"--fidelity must be one of {', '.join(FIDELITIES)}, got {self.fidelity!r}")
        if self.fidelity_model not in FIDELITY_MODELS:
            raise ConfigError(
                f"the fidelity model must be one of {', '.join(FIDELITY_MODELS)}, got {self.fidelity_model!r}"
            )
        if self.fidelity != "none" and self.prune != "none":
            raise ConfigError(
                f"--fidelity {self.fidelity} and --prune {self.prune} both screen trials: give one "
                f"(--fidelity promotes the best of cheap fits; --prune stops trials early)"
            )
        if self.max_depth < MIN_MAX_DEPTH:
            raise ConfigError(
                f"--max-depth {self.max_depth} is below the space's lower bound {MIN_MAX_DEPTH}: "
                f"give {MIN_MAX_DEPTH} or more"
            )
        for flag, value in (("--max-rmse", self.max_rmse), ("--max-inference-time", self.max_inference_time)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"{flag} must be a positive number (a registration threshold), got {value:g}"
                )
        if self.tracking_uri:
            check_tracking_uri(self.tracking_uri)
        check_patience(os.environ.get(PATIENCE_ENV, ""))
        if self.address and self.cluster_class:
            raise ConfigError("--address and --cluster-class both say where trials run: give one of them")
        if self.cluster_kwargs and not self.cluster_class:
            raise ConfigError("--cluster-kwargs needs --cluster-class (the class they are passed to)")
        if not isinstance(self.cluster_kwargs, dict):
            raise ConfigError("--cluster-kwargs must be a JSON or YAML mapping, e.g. '{\"n_workers\": 2}'")
        if self.adapt is not None:
            if not self.cluster_class:
                raise ConfigError(
                    "--adapt needs --cluster-class (e.g. distributed.LocalCluster): it is passed to "
                    "that cluster's adapt()"
                )
            low, high = self.adapt
            if low < 0 or high < 1 or low > high:
                raise ConfigError(
                    f"--adapt {low}:{high}: give MIN:MAX workers with 0 <= MIN <= MAX and MAX >= 1"
                )
            if self.mode == "batch":
                raise ConfigError(
                    "--adapt needs --mode async: a batch keeps its size, so the cluster could not grow"
                )
        if self.address is not None and "://" not in self.address and ":" not in self.address:
            raise ConfigError(
                f"--address {self.address!r} is not a scheduler address: give e.g. tcp://host:8786"
            )

    @property
    def local_cluster(self) -> bool:
        """Trials run on a LocalCluster this process starts (no ``address``, no ``cluster_class``)."""
        return self.address is None and self.cluster_class is None

    @property
    def local_worker_processes(self) -> bool:
        """Trials run in worker processes this process starts: its LocalCluster, or a created
        cluster of Dask's own managers (``distributed.LocalCluster`` with processes, or
        ``distributed.SpecCluster``), whose nannies start their workers on this host. Other
        managers (dask-jobqueue's, Kubernetes') start theirs elsewhere."""
        if self.local_cluster:
            return True
        module, _, name = (self.cluster_class or "").rpartition(".")
        if module.split(".")[0] != "distributed" or name not in ("LocalCluster", "SpecCluster"):
            return False
        return name == "SpecCluster" or self.cluster_kwargs.get("processes", True) is not False

    @property
    def artifact_root(self) -> Path:
        """Where a new local store keeps its artifacts: ``mlartifacts`` beside the working folder."""
        return Path(self.workdir) / "mlartifacts"

    @property
    def resolved_tracking_uri(self) -> str:
        """The tracking URI the run uses: ``tracking_uri``, else a sqlite store ``mlflow.db`` in
        ``workdir``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path(self.workdir).resolve() / 'mlflow.db'}"

    def to_dict(self) -> dict:
        """The settings as a plain dict (:meth:`from_dict` rebuilds them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """The settings :meth:`to_dict` gave, validated again."""
        return cls(**values)
