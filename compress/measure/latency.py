"""Latency measured on the target runtime, never estimated from FLOPs.

Method (the same for every candidate, baseline and artifact):

- a fixed input of the target's batch size; the runtime's thread count fixed to the target's;
- ``warmup`` untimed runs, then ``repeats`` timed runs split into ``rounds`` rounds;
- each run is timed alone with ``time.perf_counter`` (CUDA synchronized before the clock stops);
- reported: the median over all timed runs, the p90, and the *spread*: the range of the per-round medians
  relative to the median.

Drift correction (:func:`measure_latency_against`). On a shared machine the speed of the whole machine drifts
over minutes: the same model measured 0.094, 0.156 and 0.191 ms at different times of one search here, while
each single measurement had a spread of a few percent. So during a search every candidate is timed in
alternating rounds with a fixed *reference* model (the largest subnet in fp32), and its latency is reported
as (median of per-round candidate/reference ratios) x (the reference's latency, measured once when the study
was created and shared by every worker). Drift slows both sides of each ratio alike; the raw medians are
kept beside the corrected figure.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not here: the device server (compress.serve) times ONNX models with
# these functions on a target that may have ONNX Runtime and no PyTorch.


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    spread: float
    round_medians_ms: tuple[float, ...]
    repeats: int
    batch_size: int
    threads: int
    device: str
    runtime: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["round_medians_ms"] = list(self.round_medians_ms)
        return d


@dataclass(frozen=True)
class Reference:
    """The reference a search times candidates against: a runner and its anchored latency."""

    runner: object
    latency_ms: float


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    import torch

    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def measure_latency(runner, example: torch.Tensor, warmup: int = 10, repeats: int = 50, rounds: int = 5) -> Latency:
    prepared = runner.prepare(example)
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    samples: list[float] = []
    round_medians: list[float] = []
    with runner.timing():
        _timed(runner, prepared, warmup)
        for _ in range(rounds):
            times = _timed(runner, prepared, per_round)
            round_medians.append(statistics.median(times))
            samples.extend(times)
    return _summary(samples, round_medians, runner, example.shape[0])


def _summary(samples: list[float], round_medians: list[float], runner, batch_size: int) -> Latency:
    samples = sorted(samples)
    median = statistics.median(samples)
    p90 = samples[min(len(samples) - 1, int(math.ceil(0.9 * len(samples))) - 1)]
    return Latency(
        median_ms=median,
        p90_ms=p90,
        mean_ms=statistics.fmean(samples),
        min_ms=samples[0],
        spread=(max(round_medians) - min(round_medians)) / median if median > 0 else 0.0,
        round_medians_ms=tuple(round_medians),
        repeats=len(samples),
        batch_size=batch_size,
        threads=runner.threads,
        device=runner.device,
        runtime=runner.runtime,
    )


def _timed(runner, prepared, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        runner.run_prepared(prepared)
        times.append((time.perf_counter() - start) * 1e3)
    return times


@dataclass(frozen=True)
class RelativeLatency:
    latency: Latency  # the candidate's raw timings
    reference_median_ms: float  # the reference's raw median during this measurement
    ratio: float  # median of per-round candidate / reference ratios
    ratio_spread: float  # range of the per-round ratios relative to their median
    anchored_ms: float  # ratio x the reference's anchored latency: the drift-corrected latency

    def to_dict(self) -> dict:
        return {**self.latency.to_dict(), "method": "relative to reference", "reference_median_ms":
                self.reference_median_ms, "ratio": self.ratio, "ratio_spread": self.ratio_spread,
                "anchored_ms": self.anchored_ms}


def measure_latency_against(runner, reference: Reference, example: torch.Tensor, warmup: int = 10,
                            repeats: int = 50, rounds: int = 5) -> RelativeLatency:
    """Time ``runner`` and the reference in alternating rounds (the order flips every round)."""
    prepared, ref_prepared = runner.prepare(example), reference.runner.prepare(example)
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    samples, round_medians, ratios, ref_samples = [], [], [], []
    with runner.timing():
        _timed(runner, prepared, warmup)
        _timed(reference.runner, ref_prepared, warmup)
        for r in range(rounds):
            if r % 2:
                ref_times, times = _timed(reference.runner, ref_prepared, per_round), _timed(runner, prepared, per_round)
            else:
                times, ref_times = _timed(runner, prepared, per_round), _timed(reference.runner, ref_prepared, per_round)
            round_medians.append(statistics.median(times))
            ratios.append(round_medians[-1] / statistics.median(ref_times))
            samples.extend(times)
            ref_samples.extend(ref_times)
    ratio = statistics.median(ratios)
    return RelativeLatency(
        latency=_summary(samples, round_medians, runner, example.shape[0]),
        reference_median_ms=statistics.median(ref_samples),
        ratio=ratio,
        ratio_spread=(max(ratios) - min(ratios)) / ratio if ratio > 0 else 0.0,
        anchored_ms=ratio * reference.latency_ms,
    )
