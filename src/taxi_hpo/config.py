"""Frozen run settings, validated once when built; every error names the flag and the fix."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taxi_hpo.errors import ConfigError
from taxi_hpo.search.scheduler import MODES
from taxi_hpo.search.space import DEFAULT_MAX_DEPTH, MIN_MAX_DEPTH

DEFAULT_EXPERIMENT = "nyc-taxi-hpo"


def default_data_dir() -> str:
    return os.environ.get("TAXI_HPO_DATA_DIR", "./data")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``taxi-hpo run`` was asked to do."""

    train: str = "2021-01"
    valid: str = "2021-02"
    data_dir: str = field(default_factory=default_data_dir)
    trials: int = 20
    workers: int = 2
    threads_per_worker: int = 1
    address: str | None = None
    mode: str = "async"
    batch_size: int | None = None
    seed: int = 42
    rounds: int = 100
    max_depth: int = DEFAULT_MAX_DEPTH
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    max_rmse: float = 6.5
    max_inference_time: float = 20e-6
    register: bool = True
    resume: str | None = None
    workdir: str = field(default_factory=os.getcwd)

    def __post_init__(self):
        positive = {"--trials": self.trials, "--workers": self.workers,
                    "--threads-per-worker": self.threads_per_worker, "--rounds": self.rounds}
        if self.batch_size is not None:
            positive["--batch-size"] = self.batch_size
        for flag, value in positive.items():
            if value is None or int(value) <= 0:
                raise ConfigError(f"{flag} must be a positive whole number, got {value}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_depth < MIN_MAX_DEPTH:
            raise ConfigError(
                f"--max-depth {self.max_depth} is below the space's lower bound {MIN_MAX_DEPTH}: "
                f"give {MIN_MAX_DEPTH} or more")
        if self.max_rmse <= 0 or self.max_inference_time <= 0:
            raise ConfigError("--max-rmse and --max-inference-time must be positive")
        if self.address is not None and "://" not in self.address and ":" not in self.address:
            raise ConfigError(f"--address {self.address!r} is not a scheduler address: give e.g. tcp://host:8786")

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path(self.workdir).resolve() / 'mlflow.db'}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        return cls(**values)
