"""The reference pipeline's own sequential search, as a standalone script: the yardstick.

What the MLOps-Zoomcamp duration-prediction script does, with tracking left out: read both
months, keep 1-60 minute trips, one-hot ``PU_DO`` + ``trip_distance`` through a DictVectorizer
fitted on the training month, a LinearRegression baseline, then hyperopt ``fmin`` (TPE, the
reference space, ``rstate=default_rng(seed)``) over XGBoost on every core of one process, with
early stopping. It imports nothing of taxi_hpo (run it by path, ``python reference_script.py``),
so timing it as a whole command times the reference, not our package.

It prints one JSON line: the search's wall time, the best validation RMSE, every trial's
parameters, loss and fit seconds. ``taxi-hpo bench --layouts script,...`` runs it between the
other layouts; for the same seed its first 20 trials are the same points as any taxi-hpo search.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def read_dataframe(path: str):
    """One month's parquet file at ``path`` as the reference reads it: ``duration`` in minutes, 1-60
    minute trips only, and the ``PU_DO`` column (pickup and drop-off location ids)."""
    import pandas as pd

    df = pd.read_parquet(path)
    df["lpep_dropoff_datetime"] = pd.to_datetime(df["lpep_dropoff_datetime"])
    df["lpep_pickup_datetime"] = pd.to_datetime(df["lpep_pickup_datetime"])
    df["duration"] = (df["lpep_dropoff_datetime"] - df["lpep_pickup_datetime"]).dt.total_seconds() / 60
    df = df[(df["duration"] >= 1) & (df["duration"] <= 60)].copy()
    for column in ("PULocationID", "DOLocationID"):  # float-typed ids in some months: "12.0" -> "12"
        df[column] = pd.to_numeric(df[column]).astype("Int64").astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


def main(argv: list[str] | None = None) -> int:
    """Run the reference search with the command line ``argv`` (default: ``sys.argv[1:]``) and print
    its JSON line; exit status 0."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training month's parquet file")
    p.add_argument("--valid", required=True, help="validation month's parquet file")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--max-depth", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--nthread", type=int, default=0, help="XGBoost threads (default 0: every usable core)")
    args = p.parse_args(argv)
    started = time.time()

    import numpy as np
    import xgboost as xgb
    from hyperopt import STATUS_OK, Trials, fmin, hp, tpe
    from hyperopt.pyll import scope
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LinearRegression

    df_train, df_valid = read_dataframe(args.train), read_dataframe(args.valid)
    columns = ["PU_DO", "trip_distance"]
    dv = DictVectorizer()
    X_train = dv.fit_transform(df_train[columns].to_dict(orient="records"))
    X_valid = dv.transform(df_valid[columns].to_dict(orient="records"))
    y_train, y_valid = df_train["duration"].values, df_valid["duration"].values

    lr = LinearRegression().fit(X_train, y_train)
    lr_rmse = float(np.sqrt(np.mean((lr.predict(X_valid) - y_valid) ** 2)))

    train, valid = xgb.DMatrix(X_train, label=y_train), xgb.DMatrix(X_valid, label=y_valid)
    nthread = args.nthread or len(os.sched_getaffinity(0))
    trials_out: list[dict] = []

    def objective(params: dict) -> dict:
        params = {**params, "max_depth": int(params["max_depth"]), "nthread": nthread}
        started, t0 = time.time(), time.perf_counter()
        booster = xgb.train(
            params=params,
            dtrain=train,
            num_boost_round=args.rounds,
            evals=[(valid, "validation")],
            early_stopping_rounds=5,
            verbose_eval=False,
        )
        rmse = float(np.sqrt(np.mean((booster.predict(valid) - y_valid) ** 2)))
        trials_out.append(
            {
                "trial_id": len(trials_out),
                "params": params,
                "loss": rmse,
                "fit_s": time.perf_counter() - t0,
                "started": started,
                "finished": time.time(),
            }
        )
        return {"loss": rmse, "status": STATUS_OK}

    space = {
        "max_depth": scope.int(hp.quniform("max_depth", 4, max(args.max_depth, 4.49), 1)),
        "learning_rate": hp.loguniform("learning_rate", -3, 0),
        "reg_alpha": hp.loguniform("reg_alpha", -5, -1),
        "reg_lambda": hp.loguniform("reg_lambda", -6, -1),
        "min_child_weight": hp.loguniform("min_child_weight", -1, 3),
        "objective": "reg:squarederror",
        "seed": 42,
    }
    search_started = time.time()
    fmin(
        fn=objective,
        space=space,
        algo=tpe.suggest,
        max_evals=args.trials,
        trials=Trials(),
        rstate=np.random.default_rng(args.seed),
        show_progressbar=False,
    )
    search_wall = time.time() - search_started
    print(
        json.dumps(
            {
                "lr_rmse": lr_rmse,
                "best_rmse": min(t["loss"] for t in trials_out),
                "nthread": nthread,
                "search_started": search_started,
                "search_wall_s": search_wall,
                "setup_s": search_started - started,
                "trials": trials_out,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
