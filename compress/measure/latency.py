"""Latency measured on the target runtime, never estimated from FLOPs.

Method (the same for every candidate, baseline and artifact):

- a fixed input of the target's batch size; the runtime's thread count fixed to the target's;
- ``warmup`` untimed runs, then ``repeats`` timed runs split into ``rounds`` rounds;
- each run is timed alone with ``time.perf_counter`` (CUDA synchronized before the clock stops);
- reported: the median over all timed runs (the figure used as ``latency_ms``), the p90, and the
  run-to-run *spread*: the range of the per-round medians relative to the median. On a shared machine
  whole rounds drift together; the spread says how far a single measurement can be trusted.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch


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


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def measure_latency(runner, example: torch.Tensor, warmup: int = 10, repeats: int = 50, rounds: int = 5) -> Latency:
    prepared = runner.prepare(example)
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    samples: list[float] = []
    round_medians: list[float] = []
    with runner.timing():
        for _ in range(warmup):
            runner.run_prepared(prepared)
        for _ in range(rounds):
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                runner.run_prepared(prepared)
                times.append((time.perf_counter() - start) * 1e3)
            round_medians.append(statistics.median(times))
            samples.extend(times)
    samples.sort()
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
        batch_size=example.shape[0],
        threads=runner.threads,
        device=runner.device,
        runtime=runner.runtime,
    )
