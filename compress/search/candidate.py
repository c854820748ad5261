"""A candidate: an architecture plus policies, built by ONE function that search and export share.

``build_candidate(context, spec)`` is deterministic given the supernet weights, the spec (arch, policies,
seed) and the data, so an exported artifact is the model its trial measured. The order of steps is fixed,
the same in search and export:

    extract subnet -> recalibrate BatchNorm
      -> prune (torch-pruning) -> recalibrate BatchNorm
      -> merge tokens (ToMe, last attention stage)
      -> recovery distillation from the teacher -> recalibrate BatchNorm
      -> fold BatchNorm -> export -> quantize (always last: it works on the recovered float model)

A policy that cannot apply to a candidate (merging without attention, distillation without a teacher) is
skipped, and the reason is recorded in ``Candidate.notes`` (and on the trial).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch

from compress.data import DatasetSplits, Split, reference_batches
from compress.deploy import Deployable, lower
from compress.measure.accuracy import accuracy
from compress.measure.latency import (
    Latency,
    Reference,
    RelativeLatency,
    example_input,
)
from compress.measure.timer import LatencyTimer, LocalTimer, device_timers, make_timer
from compress.measure.macs import count_macs
from compress.nn.net import HybridNet
from compress.policies import Policies, QuantPolicy
from compress.policies.prune import prune
from compress.policies.tome import apply_merge, merge_skip_reason
from compress.recipe import AugmentConfig, TargetConfig
from compress.space import Arch
from compress.supernet.hybrid import HybridSupernet
from compress.supernet.subnet import calibrated_subnet
from compress.nn.bn import recalibrate_bn
from compress.policies.finetune import finetune
from compress.weights import load_into


@dataclass(frozen=True)
class CandidateSpec:
    arch: Arch
    policies: Policies
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "policies": self.policies.to_dict(), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CandidateSpec":
        return cls(Arch.from_dict(d["arch"]), Policies.from_dict(d["policies"]), int(d.get("seed", 0)))


@dataclass
class BuildContext:
    """What every candidate of a run is built from."""

    supernet: HybridSupernet
    data: DatasetSplits
    target: TargetConfig
    bn_batches: list[torch.Tensor]
    calibration: list[torch.Tensor]
    labeled_batch: tuple[torch.Tensor, torch.Tensor]  # for data-driven pruning criteria
    eval_batch_size: int = 256
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    teacher_factory: Callable[[], torch.nn.Module] | None = None
    reference_ms: float | None = None  # the reference's anchored latency (from the study, or measured once)
    timer: LatencyTimer = field(default_factory=LocalTimer)  # where latency is measured (here, or a device server)
    device_timers: dict[str, LatencyTimer] = field(default_factory=dict)  # target.devices: latency_ms@NAME
    device_reference_ms: dict[str, float] = field(default_factory=dict)
    _teacher: torch.nn.Module | None = None
    _reference: Reference | None = None
    _reference_deployable: Deployable | None = None
    _device_references: dict[str, Reference] = field(default_factory=dict)

    @classmethod
    def create(cls, supernet: HybridSupernet, data: DatasetSplits, target: TargetConfig, *, seed: int,
               bn_batches: int, calibration_batches_n: int, eval_batch_size: int = 256,
               augment: AugmentConfig | None = None,
               teacher_factory: Callable[[], torch.nn.Module] | None = None) -> "BuildContext":
        batches = reference_batches(data.train, seed, bn=bn_batches, calibration=calibration_batches_n)
        bn = batches.bn
        if teacher_factory is None:
            # Default teacher: the supernet's largest subnet (what the supernet was distilled from).
            teacher_factory = lambda: calibrated_subnet(supernet, supernet.space.largest(), bn)  # noqa: E731
        return cls(
            supernet=supernet.eval(),
            data=data,
            target=target,
            bn_batches=bn,
            calibration=batches.calibration,
            labeled_batch=_labeled_batch(data.train, 64, seed),
            eval_batch_size=eval_batch_size,
            augment=augment or AugmentConfig(),
            teacher_factory=teacher_factory,
            timer=make_timer(target),
            device_timers=device_timers(target),
        )

    def teacher(self) -> torch.nn.Module:
        """The distillation teacher, built once per context."""
        if self._teacher is None:
            self._teacher = self.teacher_factory().eval()
            for p in self._teacher.parameters():
                p.requires_grad_(False)
        return self._teacher

    def reference(self) -> Reference:
        """The model candidates are timed against: the largest subnet in fp32 on the target runtime.

        Its anchored latency is ``reference_ms`` if set (a search shares one value across workers and
        sessions), else measured now, once, over many rounds.
        """
        if self._reference is None:
            self._reference = self._anchored(self.timer, self.reference_ms)
            self.reference_ms = self._reference.latency_ms
        return self._reference

    def device_reference(self, name: str) -> Reference:
        """The reference on a further device of ``target.devices`` (its own anchored latency)."""
        if name not in self._device_references:
            reference = self._anchored(self.device_timers[name], self.device_reference_ms.get(name))
            self._device_references[name], self.device_reference_ms[name] = reference, reference.latency_ms
        return self._device_references[name]

    def _anchored(self, timer: LatencyTimer, anchored_ms: float | None) -> Reference:
        if self._reference_deployable is None:
            model = calibrated_subnet(self.supernet, self.supernet.space.largest(), self.bn_batches)
            self._reference_deployable = lower(model, self.target.runtime, QuantPolicy(), [], self.input_shape,
                                               device=self.target.local_device)
        runner = timer.runner(self._reference_deployable, self.target.threads)
        if anchored_ms is None:
            anchored_ms = timer.latency(runner, example_input(self.input_shape), warmup=self.target.warmup,
                                        repeats=max(300, 3 * self.target.repeats), rounds=15).median_ms
        return Reference(runner, anchored_ms)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.target.batch_size, self.data.in_channels, self.data.image_size, self.data.image_size)


@dataclass
class Candidate:
    spec: CandidateSpec
    model: HybridNet  # the float model before folding and quantization
    deployable: Deployable
    notes: dict[str, str] = field(default_factory=dict)  # policy -> why it was skipped or adjusted


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    latency_ms: float
    latency_p90_ms: float
    size_mb: float
    params: int
    macs: int
    latency: Latency | RelativeLatency
    per_device: dict[str, float] = field(default_factory=dict)  # latency_ms@NAME, latency_p90_ms@NAME
    device_latency: dict[str, RelativeLatency] = field(default_factory=dict)  # NAME -> the full record

    def objectives(self) -> dict[str, float]:
        """The values objectives and constraints may name (see ``compress.recipe.METRICS``)."""
        return {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "latency_p90_ms": self.latency_p90_ms,
                "size_mb": self.size_mb, "params": float(self.params), "macs": float(self.macs), **self.per_device}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = self.latency.to_dict()
        d["device_latency"] = {name: rel.to_dict() for name, rel in self.device_latency.items()}
        return d


def _labeled_batch(split: Split, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 2))[:n]
    return split.images[idx].float().div_(255.0), split.labels[idx]


def build_candidate(context: BuildContext, spec: CandidateSpec,
                    trained: dict[str, torch.Tensor] | None = None) -> Candidate:
    """The candidate ``spec`` describes. ``trained``: the tensors this same build produced before (its trial's,
    kept by :mod:`compress.search.trial_weights`), loaded in place of recovery distillation's training, the
    one step that costs seconds; every other step runs as always."""
    torch.manual_seed(spec.seed)
    policies = spec.policies
    model = calibrated_subnet(context.supernet, spec.arch, context.bn_batches)
    notes: dict[str, str] = {}
    if policies.prune.enabled:
        prune(model, policies.prune, *context.labeled_batch)
        recalibrate_bn(model, context.bn_batches)
    if policies.merge.enabled:
        reason = merge_skip_reason(model)
        if reason:
            notes["merge"] = f"skipped: {reason}"
        else:
            apply_merge(model, policies.merge)
    if policies.distill.enabled and trained is not None:
        load_into(model, trained, "the trial's kept weights")
    elif policies.distill.enabled:
        d, aug = policies.distill, context.augment
        finetune(model, context.data.train, steps=d.steps, lr=d.lr, batch_size=d.batch_size, seed=spec.seed,
                 teacher=context.teacher(), policy=d, crop_padding=aug.crop_padding, hflip=aug.hflip)
        recalibrate_bn(model, context.bn_batches)
    deployable = lower(model, context.target.runtime, spec.policies.quant, context.calibration,
                       context.input_shape, device=context.target.local_device)
    if spec.policies.quant.enabled and not deployable.quantization_record()["int8_layers"]:
        notes["quant"] = "no layer of the chosen units can be quantized by this backend; the model stays fp32"
    return Candidate(spec, model, deployable, notes)


def measure(model: torch.nn.Module, deployable: Deployable, data: DatasetSplits, target: TargetConfig,
            eval_batch_size: int = 256, reference: Reference | None = None,
            timer: LatencyTimer | None = None) -> Metrics:
    """Accuracy on the val split, latency on the target, size of the deployed file (of any deployable).

    With a ``reference``, latency is drift-corrected (see :mod:`compress.measure.latency`); without, raw.
    """
    shape = deployable.input_shape
    # Accuracy does not depend on thread count; measure it with all cores, latency with the target's.
    acc = accuracy(deployable.runner(threads=max(1, torch.get_num_threads())), data.val, eval_batch_size)
    timer = timer or make_timer(target)
    runner, example = timer.runner(deployable, target.threads), example_input(shape)
    if reference is None:
        latency = timer.latency(runner, example, warmup=target.warmup, repeats=target.repeats)
        median, p90 = latency.median_ms, latency.p90_ms
    else:
        latency = timer.latency_against(runner, reference, example, warmup=target.warmup, repeats=target.repeats)
        scale = reference.latency_ms / latency.reference_median_ms  # the drift of this measurement, undone
        median, p90 = latency.anchored_ms, latency.latency.p90_ms * scale
    return Metrics(
        accuracy=acc,
        latency_ms=median,
        latency_p90_ms=p90,
        size_mb=len(deployable.deployed_bytes()) / 1e6,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, example_input(shape)),
        latency=latency,
    )


def measure_candidate(candidate: Candidate, context: BuildContext) -> Metrics:
    metrics = measure(candidate.model, candidate.deployable, context.data, context.target, context.eval_batch_size,
                      reference=context.reference(), timer=context.timer)
    if not context.device_timers:
        return metrics
    target, per_device, records = context.target, {}, {}
    for name, timer in context.device_timers.items():
        reference = context.device_reference(name)
        rel = timer.latency_against(timer.runner(candidate.deployable, target.threads), reference,
                                    example_input(candidate.deployable.input_shape), warmup=target.warmup,
                                    repeats=target.repeats)
        per_device[f"latency_ms@{name}"] = rel.anchored_ms
        per_device[f"latency_p90_ms@{name}"] = rel.latency.p90_ms * reference.latency_ms / rel.reference_median_ms
        records[name] = rel
    return replace(metrics, per_device=per_device, device_latency=records)
