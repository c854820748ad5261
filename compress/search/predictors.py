"""Predictors of what a candidate will measure, fitted on the trials measured so far.

One regressor per target (each objective, each constraint), on the features of
:mod:`compress.search.features` (or any fixed-length vectors). The default is a Gaussian process
(scikit-learn; an RBF kernel plus a noise term, on standardized features, targets normalized), chosen by
measurement with :func:`evaluate_predictors`: on the 40 trials of a quickstart study (85 features; fit on
30, predict 10, 20 random splits) it was best in every column but one:

=============  ===================  ===============================  ===============================
regressor      accuracy: Kendall    latency: Kendall, MAPE, +-10%    size: Kendall, MAPE, +-10%
=============  ===================  ===============================  ===============================
gp             0.56                 0.69, 18.2%, 36%                 0.86, 13.9%, 52%
ridge          0.44                 0.67, 18.7%, 40%                 0.85, 15.1%, 45%
extra_trees    0.55                 0.63, 22.6%, 26%                 0.79, 19.3%, 37%
forest         0.49                 0.61, 22.7%, 32%                 0.80, 20.0%, 31%
=============  ===================  ===============================  ===============================

and it fits in a fraction of a second at these sizes (0.1 s per target on one shared core; the random
forest 0.4 s). 40 trials are few: ``scripts/bench_search.py`` measures the same on the trials of its studies.

Latency is the exception: it is close to a sum of per-layer costs, and a sum is what a few dozen trials can
pin down. The ``additive`` regressor (:class:`AdditiveRegressor`) fits it on the cost terms of the features
alone (MACs and layers per family and precision, fp32/INT8 boundaries), with non-negative costs. On 306
distinct mosaic candidates of six studies (``bench_search.py``, fitted on one study's 60 trials, 5 random
splits): 67% within +-10% and MAPE 8.2%, against 56% and 10.6% for the GP on every feature (Kendall 0.86
against 0.83); on 304 photo-task candidates 64% and 9.3% against 53% and 11.4%. With 75% of the candidates to
fit on the two meet (74% against 73%, 70% against 71%). So the sampler fits
latency with it (:func:`default_kind`) and everything else with the GP.
(A latency re-measured three times moves by ~11% between runs, bench_results/search_digits.md, so +-10% is near
what any predictor can reach.)

Positive targets spanning more than a factor of two (latency, size, MACs) are fitted on their logarithm:
their errors are relative, and a few slow outliers do not dominate the fit. Quality is reported the way a
search uses it: Kendall's tau (does it rank candidates as the measurement does; what matters for accuracy),
the mean absolute percentage error and the share of predictions within +-10% of the measurement (what
matters for latency and size, which constraints bound).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_TRAIN = 8  # fewer measured trials than this: nothing is fitted (the sampler keeps its warm-up sampler)
KINDS = ("gp", "ridge", "extra_trees", "forest", "additive")
DEFAULT_KIND = "gp"
# Metrics a sum of per-layer costs models (latency, on any device): the additive regressor, when the features
# have cost terms. See the module doc for the measurement that chose it.
ADDITIVE_METRICS = ("latency_ms", "latency_p90_ms")


def default_kind(metric: str, has_cost_terms: bool) -> str:
    """The regressor a target gets unless one is asked for: ``additive`` for latency (``latency_ms@board``
    included) when the features carry cost terms, else :data:`DEFAULT_KIND`."""
    return "additive" if has_cost_terms and metric.split("@")[0] in ADDITIVE_METRICS else DEFAULT_KIND


class AdditiveRegressor:
    """``y ~ c0 + sum_j c_j x_j`` over the cost-term columns ``terms`` of the features, every ``c_j >= 0``
    (scipy's bounded least squares): a cost, in time per MAC or per layer, is never negative, and the bound
    keeps a few dozen trials from fitting noise with cancelling terms. The intercept is free, so a constraint's
    violation (the metric minus its limit) fits as well as the metric. The rows are weighted by ``1 / y``
    when every target is positive, so what is minimized is the relative error (what +-10% counts)."""

    def __init__(self, terms: Sequence[int]):
        self.terms = np.asarray(terms, dtype=int)
        self.coef: np.ndarray | None = None

    def _design(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([X[:, self.terms], np.ones((len(X), 1))])

    def fit(self, X: np.ndarray, y: np.ndarray) -> "AdditiveRegressor":
        from scipy.optimize import lsq_linear

        A = self._design(X)
        w = 1.0 / y if np.all(y > 0) else np.ones_like(y)
        low = np.zeros(A.shape[1])
        low[-1] = -np.inf
        self.coef = lsq_linear(A * w[:, None], y * w, bounds=(low, np.full(A.shape[1], np.inf))).x
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._design(X) @ self.coef


def make_regressor(kind: str, seed: int = 0, terms: Sequence[int] | None = None):
    """An unfitted regressor of ``kind`` (one of :data:`KINDS`); ``additive`` needs the cost-term columns."""
    if kind == "additive":
        if not terms:
            raise ValueError("the additive regressor needs features with cost terms (CandidateFeatures)")
        return AdditiveRegressor(terms)
    if kind == "forest":
        from sklearn.ensemble import RandomForestRegressor

        # Each split looks at half the features (decorrelated trees when a few features dominate); leaves of
        # two trials at least, so one noisy measurement is not a prediction of its own.
        return RandomForestRegressor(n_estimators=60, max_features=0.5, min_samples_leaf=2, random_state=seed,
                                     n_jobs=1)
    if kind == "extra_trees":
        from sklearn.ensemble import ExtraTreesRegressor

        return ExtraTreesRegressor(n_estimators=60, max_features=0.5, min_samples_leaf=2, random_state=seed,
                                   n_jobs=1)
    if kind == "ridge":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        kernel = ConstantKernel() * RBF(length_scale=10.0, length_scale_bounds=(1e-1, 1e3)) + WhiteKernel(0.1)
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed))
    raise ValueError(f"unknown regressor kind {kind!r}; expected one of {KINDS}")


def wants_log(y: np.ndarray) -> bool:
    """Positive values spanning more than a factor of two: fitted on their logarithm (see the module doc)."""
    return bool(len(y) and np.all(y > 0) and y.max() > 2 * y.min())


class Predictor:
    """One target's regressor; ``log`` is decided from the training values (:func:`wants_log`), except for
    the additive one, a sum in the target's own units. ``terms``: the cost-term columns of the features."""

    def __init__(self, kind: str = DEFAULT_KIND, seed: int = 0, terms: Sequence[int] | None = None):
        self.kind, self.seed, self.terms = kind, seed, terms
        self.log = False
        self.model = None
        self.constant: float | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Predictor":
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if len(y) < MIN_TRAIN:
            raise ValueError(f"{len(y)} measured trials, at least {MIN_TRAIN} are needed to fit a predictor")
        if not np.all(np.isfinite(y)):
            raise ValueError("non-finite target values")
        if np.ptp(y) == 0:  # every trial measured the same: nothing to learn, and nothing to rank
            self.constant = float(y[0])
            return self
        self.log = self.kind != "additive" and wants_log(y)
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # The GP's kernel fit reports length scales at their bounds (a feature that does not matter) as
            # convergence warnings: expected with many constant or irrelevant features, and harmless.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = make_regressor(self.kind, self.seed, self.terms).fit(X, np.log(y) if self.log else y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if self.constant is not None:
            return np.full(len(X), self.constant)
        out = self.model.predict(X)
        return np.exp(out) if self.log else out


def fit_predictors(X: np.ndarray, targets: dict[str, np.ndarray], *, seed: int = 0,
                   kinds: dict[str, str] | None = None, terms: Sequence[int] | None = None) -> dict[str, Predictor]:
    """A fitted :class:`Predictor` per target; raises ``ValueError`` when one cannot be fitted."""
    kinds = kinds or {}
    return {name: Predictor(kinds.get(name, DEFAULT_KIND), seed, terms).fit(X, y) for name, y in targets.items()}


# --------------------------------------------------------------------------------------------------
# Quality


def kendall_tau(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Kendall's tau-b (nan for fewer than two points or a constant side)."""
    from scipy import stats

    if len(predicted) < 2 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return math.nan
    return float(stats.kendalltau(predicted, measured).statistic)


@dataclass(frozen=True)
class Quality:
    """How predictions of one metric compare with its measurements."""

    n: int
    kendall: float
    mape: float  # mean |predicted - measured| / |measured|, as a fraction
    within_10: float  # share of predictions within +-10% of the measurement

    def to_dict(self) -> dict:
        return {"n": self.n, "kendall": self.kendall, "mape": self.mape, "within_10": self.within_10}


def quality(predicted: Sequence[float], measured: Sequence[float]) -> Quality:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    nonzero = m != 0
    rel = np.abs(p[nonzero] - m[nonzero]) / np.abs(m[nonzero])
    return Quality(n=len(m), kendall=kendall_tau(p, m),
                   mape=float(rel.mean()) if len(rel) else math.nan,
                   within_10=float((rel <= 0.10).mean()) if len(rel) else math.nan)


def evaluate_predictors(X: np.ndarray, targets: dict[str, np.ndarray], *, holdout: float = 0.25, splits: int = 20,
                        seed: int = 0, kind: str = DEFAULT_KIND,
                        terms: Sequence[int] | None = None) -> dict[str, Quality]:
    """Quality on held-out trials: ``splits`` random splits, each fitting on ``1 - holdout`` of the trials
    and predicting the rest; the held-out predictions of all splits are pooled per split into one
    :class:`Quality`, and the splits' figures averaged (Kendall over each split's held-out set, so it says
    how well one fit ranks candidates it has not seen)."""
    X = np.asarray(X, dtype=float)
    n = len(X)
    n_test = max(2, int(round(holdout * n)))
    if n - n_test < MIN_TRAIN:
        raise ValueError(f"{n} trials: too few to hold out {n_test} and fit on at least {MIN_TRAIN}")
    rng = np.random.default_rng(seed)
    per: dict[str, list[Quality]] = {name: [] for name in targets}
    for s in range(splits):
        order = rng.permutation(n)
        test, train = order[:n_test], order[n_test:]
        for name, y in targets.items():
            y = np.asarray(y, dtype=float)
            model = Predictor(kind, seed + s, terms).fit(X[train], y[train])
            per[name].append(quality(model.predict(X[test]), y[test]))
    return {name: Quality(n=n_test, kendall=float(np.nanmean([q.kendall for q in qs])) if any(
                np.isfinite(q.kendall) for q in qs) else math.nan,
                          mape=float(np.mean([q.mape for q in qs])), within_10=float(np.mean([q.within_10 for q in qs])))
            for name, qs in per.items()}
