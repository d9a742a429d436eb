"""The reference search space and its decoding into XGBoost parameters (pure)."""

from __future__ import annotations

import math

from taxi_hpo.errors import ConfigError

MIN_MAX_DEPTH = 4
DEFAULT_MAX_DEPTH = 100
OBJECTIVE = "reg:squarederror"
SEED = 42


def reference_space(max_depth: int = DEFAULT_MAX_DEPTH) -> dict:
    """The MLOps-Zoomcamp space; ``max_depth`` caps the depth range (4..max_depth)."""
    from hyperopt import hp  # here: importing the constants above must stay light
    from hyperopt.pyll import scope

    if max_depth < MIN_MAX_DEPTH:
        raise ConfigError(
            f"--max-depth {max_depth} is below the space's lower bound {MIN_MAX_DEPTH}: "
            f"give {MIN_MAX_DEPTH} or more"
        )
    # hyperopt needs low < high: a range of one depth is drawn from [4, 4.49), rounded to 4
    high = max_depth if max_depth > MIN_MAX_DEPTH else MIN_MAX_DEPTH + 0.49
    return {
        "max_depth": scope.int(hp.quniform("max_depth", MIN_MAX_DEPTH, high, 1)),
        "learning_rate": hp.loguniform("learning_rate", -3, 0),
        "reg_alpha": hp.loguniform("reg_alpha", -5, -1),
        "reg_lambda": hp.loguniform("reg_lambda", -6, -1),
        "min_child_weight": hp.loguniform("min_child_weight", -1, 3),
        "objective": OBJECTIVE,
        "seed": SEED,
    }


def xgb_params(sample: dict, nthread: int) -> dict:
    """A point of the space as ``xgb.train`` parameters, with the thread count of its slot."""
    params = dict(sample)
    params["max_depth"] = int(params["max_depth"])
    params["nthread"] = int(nthread)
    return params


def predicted_cost(sample: dict) -> float:
    """Relative cost of a trial, for longest-first ordering within a batch.

    Deep trees cost more per round and small learning rates use more rounds before early
    stopping; the product ranks the heavy tail first. Only the order matters.
    """
    depth = float(sample.get("max_depth", MIN_MAX_DEPTH))
    rate = float(sample.get("learning_rate", 1.0))
    return depth * (1.0 + math.log1p(1.0 / max(rate, 1e-6)))


#: How each logged (string) parameter of a trial decodes back to the space's value.
_DECODERS = {
    "max_depth": int,
    "learning_rate": float,
    "reg_alpha": float,
    "reg_lambda": float,
    "min_child_weight": float,
    "objective": str,
    "seed": int,
}


def decode_logged(params: dict[str, str]) -> dict:
    """A trial's parameters as MLflow stored them (strings) back to a point of the space."""
    return {k: decode(params[k]) for k, decode in _DECODERS.items() if k in params}
