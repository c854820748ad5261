"""A predictor-guided Optuna sampler: after a warm-up, each trial measures the candidate that predictors,
fitted on every trial measured so far, expect to improve the front the most (DyNAS-T's LINAS, SimQ-NAS).

It is an ordinary :class:`optuna.samplers.BaseSampler`, so storage, resume, several workers, constraints and
the dashboard work as with any sampler. Every decision is made from the study's storage, never from state
kept in the process: a worker that resumes a study it did not start, or one of several workers on one
PostgreSQL study, fits on all completed trials of the study.

For each new trial (:meth:`PredictorSampler.infer_relative_search_space`, which Optuna calls once, before
the trial's first parameter):

1. **Warm-up.** Until ``n_warmup`` trials have finished (completed or failed), and for trials queued with
   their parameters (baselines), the warm-up sampler (random by default) decides: predictors need a
   spread of measured points, which random draws give.
2. **Fit.** One regressor per objective and per constraint (:mod:`compress.search.predictors`) on the
   features of every completed trial: for latency, a non-negative sum of per-layer costs, for the rest a
   Gaussian process (:func:`~compress.search.predictors.default_kind`). Too few completed trials, or a fit
   that fails, fall back to the warm-up sampler for this trial with a log note (once per reason); the study
   never stops for it.
3. **Candidates.** ``n_candidates`` parameter sets: half drawn at random from the parameters' distributions,
   half bred from the measured front (uniform crossover of two front trials, then mutation of each
   parameter with probability 1.5 / number of parameters). Candidates whose features equal those of a
   trial already in the study (any state, so other workers' running trials count) or of an earlier
   candidate are dropped: parameters that only differ where they change nothing (layers beyond the depth)
   are the same candidate.
4. **Constraints.** Candidates whose predicted constraint values violate a constraint are dropped while any
   candidate is predicted feasible; if none is, the one predicted least infeasible is measured.
5. **Choice.** With probability ``explore``, a random candidate of the randomly drawn half (it keeps the
   predictors honest where they have seen nothing). Otherwise the candidate whose predicted objectives add
   the most hypervolume to the front of the measured feasible trials, both sides predicted (the measured
   trials as the predictors see them, so the predictors' shrinkage towards the mean cancels; objectives
   scaled by that range; reference point 10% beyond its worst value; hypervolume estimated on shared random
   points, so any number of objectives works); when every candidate is predicted dominated, the one
   predicted closest to the front (smallest additive epsilon).

The trial records what the predictors expected (``compress.predicted``: objectives by metric name,
constraint values, whether it was chosen or explored, how many trials the predictors were fitted on, and
which regressor predicted each objective),
so ``compress report`` can set predictions against measurements.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from compress.search.predictors import MIN_TRAIN, default_kind, fit_predictors
from compress.search.record import PREDICTED

logger = logging.getLogger(__name__)

Featurizer = Callable[[dict[str, Any]], np.ndarray]
HV_SAMPLES = 20_000  # shared random points of the hypervolume estimate


class CannotFit(Exception):
    """Why the predictors cannot steer this trial (the warm-up sampler does)."""


class ParamFeatures:
    """Features of any Optuna study: each parameter as numbers. A categorical parameter of numbers is its
    value, any other categorical one column per choice; int and float parameters their value (log10 on a
    log scale). A parameter a trial lacks reads as its distribution's first choice or lower bound."""

    def __init__(self, space: dict[str, BaseDistribution]):
        self.space = dict(sorted(space.items()))
        self.names: list[str] = []
        for name, d in self.space.items():
            if isinstance(d, CategoricalDistribution) and not _numeric(d.choices):
                self.names += [f"{name}={c}" for c in d.choices]
            else:
                self.names.append(name)

    def __call__(self, params: dict[str, Any]) -> np.ndarray:
        out: list[float] = []
        for name, d in self.space.items():
            if isinstance(d, CategoricalDistribution):
                value = params.get(name, d.choices[0])
                out += [float(value)] if _numeric(d.choices) else [float(value == c) for c in d.choices]
            else:
                value = float(params.get(name, d.low))
                out.append(math.log10(value) if d.log else value)
        return np.asarray(out, dtype=float)


def _numeric(choices: Sequence) -> bool:
    return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)


@dataclass(frozen=True)
class _Plan:
    """What the predictors chose for one trial."""

    search_space: dict[str, BaseDistribution]
    params: dict[str, Any]


class PredictorSampler(BaseSampler):
    """See the module doc. ``features(study)`` returns the featurizer of the study's candidates (default:
    :class:`ParamFeatures` of the parameters' distributions); ``kind`` is the regressor of every target
    (:data:`compress.search.predictors.KINDS`), by default each metric's own
    (:func:`~compress.search.predictors.default_kind`: additive for latency, when the featurizer has
    ``cost_terms``)."""

    def __init__(self, *, warmup_sampler: BaseSampler | None = None, n_warmup: int = 16, n_candidates: int = 2000,
                 explore: float = 0.1, seed: int | None = None,
                 features: Callable[[Study], Featurizer] | None = None, kind: str | None = None):
        if n_warmup < 1 or n_candidates < 1 or not 0 <= explore <= 1:
            raise ValueError(f"n_warmup {n_warmup} and n_candidates {n_candidates} must be >= 1, "
                             f"explore {explore} in [0, 1]")
        self._warmup = warmup_sampler or RandomSampler(seed=seed)
        self.n_warmup, self.n_candidates, self.explore = n_warmup, n_candidates, explore
        self._seed, self._rng = seed, np.random.default_rng(seed)
        self._features, self._kind = features, kind
        self._featurizers: dict[tuple, Featurizer] = {}
        self._fits: dict[tuple, dict] = {}  # (study, completed trial numbers) -> fitted predictors
        self._plans: dict[int, _Plan] = {}  # trial id -> the chosen candidate
        self._noted: set[str] = set()
        self._lock = threading.Lock()

    # -- Optuna's sampler interface ---------------------------------------------------------------

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        plan = None
        if not trial.system_attrs.get("fixed_params"):  # a queued trial (a baseline) is what was queued
            trials = study.get_trials(deepcopy=False)  # one read of the storage serves the whole decision
            finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
            if len(finished) >= self.n_warmup:
                with self._lock:
                    plan = self._plan(study, trial, trials)
        if plan is None:
            return self._warmup.infer_relative_search_space(study, trial)
        self._plans[trial._trial_id] = plan
        return plan.search_space

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        plan = self._plans.get(trial._trial_id)
        if plan is None:
            return self._warmup.sample_relative(study, trial, search_space)
        return {name: value for name, value in plan.params.items() if name in search_space}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # Parameters outside the relative search space (conditional ones, or any parameter of a warm-up trial).
        return self._warmup.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._warmup.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial._trial_id, None)
        self._warmup.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._warmup.reseed_rng()

    # -- the choice --------------------------------------------------------------------------------

    def _note(self, reason: str, key: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            logger.info("predictor sampler: %s; the warm-up sampler decides until it can fit", reason)

    def _plan(self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial]) -> _Plan | None:
        try:
            plan, record = self._propose(study, trials)
        except CannotFit as exc:
            self._note(str(exc), type(exc).__name__ + str(exc).split(":")[0])
            return None
        except Exception as exc:  # noqa: BLE001 - a predictor must never stop the study
            self._note(f"fitting failed ({type(exc).__name__}: {exc})", type(exc).__name__)
            return None
        study._storage.set_trial_user_attr(trial._trial_id, PREDICTED, record)
        return plan

    def _propose(self, study: Study, trials: list[FrozenTrial]) -> tuple[_Plan, dict]:
        completed = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                     and all(math.isfinite(v) for v in t.values)]
        if len(completed) < MIN_TRAIN:
            raise CannotFit(f"too few completed trials: {len(completed)}, fitting needs {MIN_TRAIN}")
        space = _common_space(completed)
        if not space:
            raise CannotFit("no parameter is shared by the completed trials")
        featurize = self._featurizer(study, space)
        X = np.stack([featurize(t.params) for t in completed])
        names = _objective_names(study)
        targets = {name: np.array([t.values[k] for t in completed]) for k, name in enumerate(names)}
        constraint_names = sorted(set.intersection(*(set(t.constraints) for t in completed)))
        constraints = {name: np.array([t.constraints[name] for t in completed]) for name in constraint_names}
        key = (id(study._storage), study._study_id, tuple(t.number for t in completed))
        if key not in self._fits:
            all_targets = {**{f"o:{n}": y for n, y in targets.items()}, **{f"c:{n}": y for n, y in constraints.items()}}
            terms = getattr(featurize, "cost_terms", None)
            # A target's metric: the objective's name, or a constraint's first word ("latency_ms <= 2").
            kinds = {t: self._kind or default_kind(t[2:].split()[0], bool(terms)) for t in all_targets}
            fitted = fit_predictors(X, all_targets, seed=self._seed or 0, kinds=kinds, terms=terms)
            self._fits = {key: fitted}  # only the latest fit is kept: the next trial reuses it if nothing finished
        fitted = self._fits[key]

        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
        feasible = np.array([all(v <= 0 for v in t.constraints.values()) for t in completed])
        measured = np.array([t.values for t in completed]) * signs
        on_front = np.zeros(len(completed), dtype=bool)
        on_front[np.flatnonzero(feasible)[_nondominated(measured[feasible])]] = True
        pool, randomly_drawn = self._pool(space, [t.params for t, on in zip(completed, on_front) if on])
        # Candidates are compared with the measured trials *as the predictors see them*: predictions regress
        # towards the mean, so against the measured values nearly every candidate looks dominated (measured on
        # the synthetic test study: all of 400); the same shrinkage on both sides cancels.
        seen = np.stack([fitted[f"o:{n}"].predict(X) for n in names], axis=1) * signs
        front = seen[feasible][_nondominated(seen[feasible])]

        tried = {featurize(t.params).tobytes() for t in trials if t.params}
        rows, keep = [], []
        for i, params in enumerate(pool):
            x = featurize(params)
            if x.tobytes() not in tried:
                tried.add(x.tobytes())
                rows.append(x)
                keep.append(i)
        if not rows:
            raise CannotFit("every candidate drawn was already tried")
        Xp = np.stack(rows)
        pool = [pool[i] for i in keep]
        randomly_drawn = np.array([randomly_drawn[i] for i in keep])
        predicted = {n: fitted[f"o:{n}"].predict(Xp) for n in names}
        violation = {n: fitted[f"c:{n}"].predict(Xp) for n in constraint_names}
        losses = np.stack([predicted[n] for n in names], axis=1) * signs

        ok = np.ones(len(pool), dtype=bool)
        for v in violation.values():
            ok &= v <= 0
        if ok.any():
            explore = self._rng.random() < self.explore and (ok & randomly_drawn).any()
            if explore:
                choice = int(self._rng.choice(np.flatnonzero(ok & randomly_drawn)))
            else:
                # A candidate dominated by another adds no more hypervolume and is no nearer the front than
                # that one: only the predicted non-dominated ones need scoring.
                candidates = np.flatnonzero(ok)
                candidates = candidates[_nondominated(losses[candidates])]
                choice = int(candidates[np.argmax(self._gains(losses[candidates], front, seen))])
            how = "explore" if explore else "predicted"
        else:
            total = sum(np.maximum(v, 0) for v in violation.values())
            choice, how = int(np.argmin(total)), "least infeasible"
        record = {"objectives": {n: float(predicted[n][choice]) for n in names},
                  "constraints": {n: float(violation[n][choice]) for n in constraint_names},
                  "how": how, "fitted_on": len(completed),
                  "regressors": {n: fitted[f"o:{n}"].kind for n in names}}
        return _Plan(space, pool[choice]), record

    def _featurizer(self, study: Study, space: dict[str, BaseDistribution]) -> Featurizer:
        if self._features is None:
            return ParamFeatures(space)
        key = (id(study._storage), study._study_id)
        if key not in self._featurizers:
            self._featurizers[key] = self._features(study)
        return self._featurizers[key]

    def _pool(self, space: dict[str, BaseDistribution],
              parents: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bool]]:
        """``n_candidates`` parameter sets: half random, half bred from ``parents`` (all random without)."""
        rng, names = self._rng, list(space)
        n_bred = self.n_candidates // 2 if parents else 0
        pool = [{n: _draw(space[n], rng) for n in names} for _ in range(self.n_candidates - n_bred)]
        rate = min(1.0, 1.5 / len(names))
        for _ in range(n_bred):
            a = parents[rng.integers(len(parents))]
            b = parents[rng.integers(len(parents))]
            child = {n: (a if rng.random() < 0.5 else b).get(n, None) for n in names}
            mutate = rng.random(len(names)) < rate
            mutate[rng.integers(len(names))] = True  # at least one parameter changes
            for n, m in zip(names, mutate):
                if m or child[n] is None or not space[n]._contains(space[n].to_internal_repr(child[n])):
                    child[n] = _draw(space[n], rng)
            pool.append(child)
        return pool, [True] * (self.n_candidates - n_bred) + [False] * n_bred

    def _gains(self, losses: np.ndarray, front: np.ndarray, scale_from: np.ndarray) -> np.ndarray:
        """Predicted hypervolume each candidate adds to ``front``; when none adds any, minus the additive
        epsilon that would take it onto the front (so the nearest is chosen)."""
        lo, hi = scale_from.min(axis=0), scale_from.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        z = (losses - lo) / span
        f = (front - lo) / span if len(front) else np.empty((0, losses.shape[1]))
        ref = np.ones(losses.shape[1]) * 1.1  # 10% beyond the worst value of scale_from
        low = np.minimum(z.min(axis=0), f.min(axis=0) if len(f) else ref)
        points = low + self._rng.random((HV_SAMPLES, losses.shape[1])) * (ref - low)
        covered = np.zeros(HV_SAMPLES, dtype=bool)
        for p in f:
            covered |= np.all(points >= p, axis=1)
        free = points[~covered]
        gains = np.empty(len(z))
        for start in range(0, len(z), 256):  # chunks bound the (candidates x points) comparison's memory
            chunk = z[start:start + 256]
            gains[start:start + 256] = np.all(free[None, :, :] >= chunk[:, None, :], axis=2).sum(axis=1)
        if gains.max() > 0 or not len(f):
            return gains
        # additive epsilon: how far a candidate must move to be dominated by no front point
        eps = np.max(np.min(z[:, None, :] - f[None, :, :], axis=2), axis=1)
        return -eps


def _draw(d: BaseDistribution, rng: np.random.Generator) -> Any:
    if isinstance(d, CategoricalDistribution):
        return d.choices[rng.integers(len(d.choices))]
    if isinstance(d, IntDistribution):
        if d.log:
            return int(min(d.high, max(d.low, round(math.exp(rng.uniform(math.log(d.low), math.log(d.high + 1)) - 0.5)))))
        return int(d.low + d.step * rng.integers((d.high - d.low) // d.step + 1))
    if isinstance(d, FloatDistribution):
        if d.log:
            return float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        if d.step is not None:
            return float(min(d.high, d.low + d.step * rng.integers(round((d.high - d.low) / d.step) + 1)))
        return float(rng.uniform(d.low, d.high))
    raise TypeError(f"unsupported distribution {d!r}")


def _common_space(trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Parameters every trial has, with one distribution (a parameter with one possible value is none)."""
    space = dict(trials[0].distributions)
    for t in trials[1:]:
        space = {n: d for n, d in space.items() if t.distributions.get(n) == d}
    return {n: d for n, d in space.items() if not d.single()}


def _objective_names(study: Study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"objective {k}" for k in range(len(study.directions))]


def _nondominated(losses: np.ndarray) -> np.ndarray:
    """Mask of the rows no other row dominates (all objectives minimized)."""
    if not len(losses):
        return np.zeros(0, dtype=bool)
    le = np.all(losses[:, None, :] <= losses[None, :, :], axis=2)
    lt = np.any(losses[:, None, :] < losses[None, :, :], axis=2)
    dominated = np.any(le & lt, axis=0)  # [i, j]: i dominates j
    return ~dominated
