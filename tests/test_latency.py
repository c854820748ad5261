"""The latency timer: statistics, and drift correction against a reference model."""

import contextlib
import time

import pytest
import torch

from compress.measure.latency import Reference, measure_latency, measure_latency_against


class SleepyRunner:
    """A fake runtime whose calls take ``ms`` times the machine's current slowness."""

    runtime, device, threads = "fake", "cpu", 1

    def __init__(self, ms: float, machine: dict):
        self.ms, self.machine = ms, machine

    def prepare(self, x):
        return x

    def run_prepared(self, x):
        self.machine["calls"] += 1
        time.sleep(self.ms * self.machine["slowness"](self.machine["calls"]) / 1e3)

    @contextlib.contextmanager
    def timing(self):
        yield


def test_plain_timer_reports_median_p90_and_spread():
    machine = {"calls": 0, "slowness": lambda n: 1.0}
    lat = measure_latency(SleepyRunner(2.0, machine), torch.zeros(4, 1, 2, 2), warmup=2, repeats=20, rounds=4)
    assert lat.repeats == 20 and len(lat.round_medians_ms) == 4 and lat.batch_size == 4
    assert 2.0 <= lat.median_ms < 3.0 and lat.p90_ms >= lat.median_ms >= lat.min_ms
    assert lat.spread < 0.3


def test_drift_correction_cancels_a_machine_that_slows_down():
    # The machine runs at normal speed for a while, then everything takes twice as long (as when a neighbour
    # starts working). The raw median moves; the candidate/reference ratio does not.
    machine = {"calls": 0, "slowness": lambda n: 1.0 if n < 60 else 2.0}
    reference = Reference(SleepyRunner(4.0, machine), latency_ms=4.0)
    rel = measure_latency_against(SleepyRunner(2.0, machine), reference, torch.zeros(1, 1, 2, 2), warmup=2,
                                  repeats=40, rounds=8)
    assert rel.latency.spread > 0.5  # the raw per-round medians drifted by ~2x
    # The median of per-round ratios ignores the one round in which the slowdown began (that round's ratio is
    # off, which ratio_spread reports).
    assert rel.ratio == pytest.approx(0.5, rel=0.15)
    assert rel.anchored_ms == pytest.approx(2.0, rel=0.15)  # the candidate's latency at the anchor's speed
    d = rel.to_dict()
    assert d["method"] == "relative to reference" and d["anchored_ms"] == rel.anchored_ms
