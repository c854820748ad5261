"""What a trial stores in the study (``trial.user_attrs``), named once.

The loop writes a trial's record in three moments (started: spec and descriptions; finished: metrics and
notes; failed: the reason); outputs, export, the API and the report read it back with
:meth:`TrialRecord.from_trial` instead of string keys of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from compress.search.study import WORKER_ATTR as WORKER  # host and pid of the process that ran it

SPEC, ARCH, POLICIES, VERSIONS = "spec", "arch", "policies", "versions"
METRICS, NOTES, FAIL_REASON = "metrics", "notes", "fail_reason"
PRUNE_REASON = "prune_reason"  # a trial pruned as surplus (the study already had enough)
BASELINE = "compress.baseline"  # set when the trial was queued as a named baseline
DEVICE_FAILURE = "compress.device_failure"  # why its device server was unavailable (the trial is queued again)
# What the predictor sampler expected of the trial before it was measured (set by the sampler, not the loop):
# {"objectives": {metric: value}, "constraints": {constraint: value}, "how": ..., "fitted_on": trials,
#  "regressors": {metric: regressor kind}}
PREDICTED = "compress.predicted"
# The artifact id of the weights the trial trained (recovery distillation), kept so that export does not train
# them again (compress.search.trial_weights)
WEIGHTS = "compress.trial_weights"


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # Optuna's state name: COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    spec: dict[str, Any] | None = None  # CandidateSpec.to_dict(): what rebuilds the candidate
    arch: str = ""
    policies: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # CandidateMetrics.to_dict()
    notes: dict[str, str] = field(default_factory=dict)  # why a policy step was skipped or changed
    fail_reason: str = ""
    device_failure: str = ""  # set when the trial failed because its device was unavailable, not the candidate
    baseline: str = ""
    worker: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    values: tuple[float, ...] | None = None  # the objective values Optuna holds
    predicted: dict[str, Any] = field(default_factory=dict)  # PREDICTED, when the predictor sampler chose it
    weights: str = ""  # WEIGHTS: the artifact id of its kept trained weights, if any

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> "TrialRecord":
        attrs = trial.user_attrs
        return cls(number=trial.number, state=trial.state.name, spec=attrs.get(SPEC), arch=attrs.get(ARCH, ""),
                   policies=attrs.get(POLICIES, ""), metrics=dict(attrs.get(METRICS, {})),
                   notes=dict(attrs.get(NOTES, {})), fail_reason=attrs.get(FAIL_REASON, attrs.get(PRUNE_REASON, "")),
                   device_failure=attrs.get(DEVICE_FAILURE, "") or "", baseline=attrs.get(BASELINE, "") or "", worker=dict(attrs.get(WORKER, {})),
                   versions=dict(attrs.get(VERSIONS, {})),
                   values=tuple(trial.values) if trial.values is not None else None,
                   predicted=dict(attrs.get(PREDICTED, {})), weights=attrs.get(WEIGHTS, "") or "")

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name

    @property
    def exportable(self) -> bool:
        return self.complete and self.spec is not None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "spec": self.spec, "arch": self.arch,
                "policies": self.policies, "metrics": self.metrics, "notes": self.notes,
                "fail_reason": self.fail_reason, "device_failure": self.device_failure, "baseline": self.baseline, "worker": self.worker,
                "versions": self.versions, "values": list(self.values) if self.values is not None else None,
                "predicted": self.predicted, "weights": self.weights}


def record_start(trial: optuna.Trial, spec, versions: dict[str, str]) -> None:
    """What is known when a trial starts: the candidate it builds (so a crash still says what it was)."""
    trial.set_user_attr(SPEC, spec.to_dict())
    trial.set_user_attr(ARCH, spec.arch.describe())
    trial.set_user_attr(POLICIES, spec.policies.describe())
    trial.set_user_attr(VERSIONS, versions)


def record_result(trial: optuna.Trial, metrics: dict[str, Any], notes: dict[str, str]) -> None:
    trial.set_user_attr(METRICS, metrics)
    trial.set_user_attr(NOTES, notes)


def record_weights(trial: optuna.Trial, artifact_id: str) -> None:
    trial.set_user_attr(WEIGHTS, artifact_id)


def record_failure(trial: optuna.Trial, reason: str, device_failure: str | None = None) -> None:
    """``device_failure``: the kind of device failure (unreachable, timed out, refused) when the device server,
    not the candidate, failed the trial."""
    trial.set_user_attr(FAIL_REASON, reason[:2000])
    if device_failure:
        trial.set_user_attr(DEVICE_FAILURE, device_failure)
