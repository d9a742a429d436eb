"""The preprocessor: ``PU_DO`` one-hot plus ``trip_distance`` through a DictVectorizer (pure)."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer

from taxi_hpo.core import data as data_mod

#: Bump when the feature recipe changes, so cached preprocessing is not reused across recipes.
FEATURES_VERSION = 1
CATEGORICAL = ["PU_DO"]
NUMERICAL = ["trip_distance"]


def feature_dicts(df: pd.DataFrame) -> list[dict]:
    """Rows as the dicts the reference pipeline vectorises."""
    frame = pd.DataFrame(
        {
            "PU_DO": df["PULocationID"].astype(str) + "_" + df["DOLocationID"].astype(str),
            "trip_distance": df["trip_distance"].astype("float64"),
        }
    )
    return frame.to_dict("records")


@dataclass
class Preprocessor:
    """A DictVectorizer fitted on the training month only."""

    vectorizer: DictVectorizer

    @classmethod
    def fit(cls, train: pd.DataFrame) -> Preprocessor:
        """A preprocessor whose DictVectorizer is fitted on the rows of ``train``."""
        vectorizer = DictVectorizer()
        vectorizer.fit(feature_dicts(train))
        return cls(vectorizer)

    def transform(self, df: pd.DataFrame) -> sp.csr_matrix:
        """The sparse feature matrix of ``df``'s rows (``PULocationID``, ``DOLocationID``,
        ``trip_distance``); a pickup and drop-off pair not seen in training sets no column."""
        return self.vectorizer.transform(feature_dicts(df)).tocsr()

    def transform_raw(self, raw: pd.DataFrame) -> sp.csr_matrix:
        """Features from raw TLC rows (no filter: every row gets a prediction)."""
        frame = pd.DataFrame(
            {
                "PULocationID": data_mod.location_ids(raw["PULocationID"]),
                "DOLocationID": data_mod.location_ids(raw["DOLocationID"]),
                "trip_distance": pd.to_numeric(raw["trip_distance"], errors="coerce"),
            }
        )
        return self.transform(frame)

    @property
    def n_features(self) -> int:
        """The number of feature columns: one per ``PU_DO`` pair seen in training, plus
        ``trip_distance``."""
        return len(self.vectorizer.feature_names_)

    def to_bytes(self) -> bytes:
        """This preprocessor pickled (protocol 5); :meth:`from_bytes` reads it back."""
        return pickle.dumps(self, protocol=5)

    @staticmethod
    def from_bytes(blob: bytes) -> Preprocessor:
        """The preprocessor :meth:`to_bytes` pickled."""
        return pickle.loads(blob)


def preprocessor_sha256(pre: Preprocessor) -> str:
    """Content hash of the fitted preprocessor, the key child runs reference it by."""
    return hashlib.sha256(pre.to_bytes()).hexdigest()


@dataclass
class PreparedData:
    """What every trial needs, built once per search and shared with every worker."""

    X_train: sp.csr_matrix
    y_train: np.ndarray
    X_valid: sp.csr_matrix
    y_valid: np.ndarray
    preprocessor: Preprocessor
    train_sha256: str
    valid_sha256: str
    #: A row sample (:func:`row_sample`): how it was drawn ("" for the whole month) and the
    #: preprocessor's columns its matrices keep (None: all of them).
    sample: str = ""
    columns: np.ndarray | None = None

    @property
    def key(self) -> str:
        """Identifies the data by content: input files plus the feature recipe (and the sample)."""
        base = dataset_key(self.train_sha256, self.valid_sha256)
        if not self.sample:
            return base
        return hashlib.sha256(f"{base}:{self.sample}".encode()).hexdigest()[:16]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: both months' sparse matrices and targets."""
        total = self.y_train.nbytes + self.y_valid.nbytes
        for m in (self.X_train, self.X_valid):
            total += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        return total


def frame_sha256(frame: pd.DataFrame) -> str:
    """Content hash of a data frame's values and column names."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def dataset_key(train_sha256: str, valid_sha256: str) -> str:
    """A 16-hex-digit key from both files' hashes and :data:`FEATURES_VERSION`."""
    return hashlib.sha256(f"v{FEATURES_VERSION}:{train_sha256}:{valid_sha256}".encode()).hexdigest()[:16]


def prepare_data(
    train: pd.DataFrame, valid: pd.DataFrame, train_sha256: str = "", valid_sha256: str = ""
) -> PreparedData:
    """Fit on train only, transform both months.

    Without the files' hashes, the frames' own content names the data (the per-process matrix
    cache is keyed by it: two datasets must never share a key)."""
    train_sha256 = train_sha256 or frame_sha256(train)
    valid_sha256 = valid_sha256 or frame_sha256(valid)
    pre = Preprocessor.fit(train)
    return PreparedData(
        X_train=pre.transform(train),
        y_train=train["duration"].to_numpy(dtype="float64"),
        X_valid=pre.transform(valid),
        y_valid=valid["duration"].to_numpy(dtype="float64"),
        preprocessor=pre,
        train_sha256=train_sha256,
        valid_sha256=valid_sha256,
    )


def row_sample(data: PreparedData, rows: float, seed: int = 0) -> PreparedData:
    """A fixed uniform sample of ``rows`` (a share) of the training rows, for a cheaper fit that
    ranks configurations (a lower fidelity), validated on the whole validation month.

    Its matrices keep only the columns the sample has values in, on both months: a column
    without values offers no split, so the trees are the ones all columns would give, but
    XGBoost's cost per tree node grows with the columns (1/9 of 2021-01's rows: 49 % of a full
    fit's time with all 13,221 columns, 15 % with its 3,654; docs/benchmarks.md). A model fitted
    on it reads only its columns: it scores the sample's ``X_valid``, never raw rows through the
    preprocessor. The same data, share and seed always give the same sample.
    """
    if not 0.0 < rows <= 1.0:
        raise ValueError(f"rows is a share of the training rows in (0, 1], got {rows}")
    n = data.X_train.shape[0]
    picked = np.sort(np.random.default_rng(seed).choice(n, max(1, round(n * rows)), replace=False))
    return keep_rows(data, picked, f"rows={rows:.6g}:seed={seed}")


def keep_rows(data: PreparedData, picked: np.ndarray, sample: str) -> PreparedData:
    """The training rows ``picked`` of ``data`` (however drawn; ``sample`` names the draw),
    both months' matrices kept to the columns those rows have values in (see :func:`row_sample`)."""
    if data.sample:
        raise ValueError("a sample of a sample: sample the whole month")
    x_train = data.X_train[picked]
    columns = np.flatnonzero(np.diff(x_train.tocsc().indptr))
    return PreparedData(
        X_train=x_train[:, columns].tocsr(),
        y_train=data.y_train[picked],
        X_valid=data.X_valid[:, columns].tocsr(),
        y_valid=data.y_valid,
        preprocessor=data.preprocessor,
        train_sha256=data.train_sha256,
        valid_sha256=data.valid_sha256,
        sample=sample,
        columns=columns,
    )
