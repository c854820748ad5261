"""A candidate: an architecture plus policies, built by ONE function that search and export share.

``build_candidate(context, spec)`` is deterministic given the supernet weights, the spec (arch, policies,
seed) and the data, so an exported artifact is the model its trial measured. The order of steps is fixed:

    extract subnet -> recalibrate BatchNorm -> fold BatchNorm -> export -> quantize

(pruning, token merging and distillation recovery slot in before the fold; quantization always comes last).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compress.data import DatasetSplits, calibration_batches
from compress.deploy import Deployable, lower
from compress.measure.accuracy import accuracy
from compress.measure.latency import Latency, example_input, measure_latency
from compress.measure.macs import count_macs
from compress.nn.net import HybridNet
from compress.policies import Policies
from compress.recipe import TargetConfig
from compress.space import Arch
from compress.supernet.hybrid import HybridSupernet
from compress.supernet.subnet import calibrated_subnet


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
    eval_batch_size: int = 256

    @classmethod
    def create(cls, supernet: HybridSupernet, data: DatasetSplits, target: TargetConfig, *, seed: int,
               bn_batches: int, calibration_batches_n: int, eval_batch_size: int = 256) -> "BuildContext":
        return cls(
            supernet=supernet.eval(),
            data=data,
            target=target,
            bn_batches=calibration_batches(data.train, bn_batches, batch_size=64, seed=seed),
            calibration=calibration_batches(data.train, calibration_batches_n, batch_size=32, seed=seed + 1),
            eval_batch_size=eval_batch_size,
        )

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
    latency: Latency

    def objectives(self) -> dict[str, float]:
        """The values objectives and constraints may name (see ``compress.recipe.METRICS``)."""
        return {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "latency_p90_ms": self.latency_p90_ms,
                "size_mb": self.size_mb, "params": float(self.params), "macs": float(self.macs)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = self.latency.to_dict()
        return d


def build_candidate(context: BuildContext, spec: CandidateSpec) -> Candidate:
    torch.manual_seed(spec.seed)
    model = calibrated_subnet(context.supernet, spec.arch, context.bn_batches)
    notes: dict[str, str] = {}
    deployable = lower(model, context.target.runtime, spec.policies.quant, context.calibration,
                       context.input_shape, device=context.target.device)
    if spec.policies.quant.enabled and not deployable.quantization_record()["int8_layers"]:
        notes["quant"] = "no layer of the chosen units can be quantized by this backend; the model stays fp32"
    return Candidate(spec, model, deployable, notes)


def measure_candidate(candidate: Candidate, context: BuildContext) -> Metrics:
    """Accuracy on the val split, latency on the target, size of the deployed file."""
    target = context.target
    deployable = candidate.deployable
    # Accuracy does not depend on thread count; measure it with all cores, latency with the target's.
    acc = accuracy(deployable.runner(threads=max(1, torch.get_num_threads())), context.data.val,
                   context.eval_batch_size)
    latency = measure_latency(deployable.runner(threads=target.threads), example_input(context.input_shape),
                              warmup=target.warmup, repeats=target.repeats)
    return Metrics(
        accuracy=acc,
        latency_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        size_mb=len(deployable.deployed_bytes()) / 1e6,
        params=sum(p.numel() for p in candidate.model.parameters()),
        macs=count_macs(candidate.model, example_input(context.input_shape)),
        latency=latency,
    )
