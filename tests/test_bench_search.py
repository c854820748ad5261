"""The search benchmark's predictor figures: latency judged within a study (relative to its own reference) and
the ceiling the measurements' repeatability sets."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_search as bench  # noqa: E402

from compress.search.loop import REFERENCE_ATTR  # noqa: E402


def test_latency_is_taken_relative_to_the_study_reference():
    slow = SimpleNamespace(user_attrs={REFERENCE_ATTR: 2.0})
    fast = SimpleNamespace(user_attrs={REFERENCE_ATTR: 1.0})
    # The same candidate in a study whose anchor was timed on a busy machine: twice the ms, the same ratio.
    assert bench.relative_latency(slow, {"latency_ms": 1.0}) == bench.relative_latency(fast, {"latency_ms": 0.5})


def test_latency_noise_counts_repeats_within_ten_percent_of_their_median():
    noise = bench.latency_noise([[1.0, 1.05, 1.3], [2.0], [0.5, 0.5]])
    assert noise["candidates"] == 2 and noise["measurements"] == 5
    assert noise["within_10"] == pytest.approx(4 / 5)  # 1.3 is 24% above its median 1.05
    assert noise["median_deviation"] == pytest.approx(0.0)
    assert bench.latency_noise([[1.0], [2.0]])["within_10"] is None


def test_report_only_without_earlier_results_exits_2(tmp_path, monkeypatch, capsys):
    import benchlib

    monkeypatch.setattr(benchlib, "RESULTS", tmp_path)
    assert bench.main(["--recipe", "quickstart", "--report-only"]) == 2
    assert "no earlier results" in capsys.readouterr().err


def test_pooled_hypervolume_is_every_study_front_together():
    # Two studies, each with one point the other lacks: together they dominate more than either alone.
    a = {"points": [(0.1, 0.5, 1.0)]}
    b = {"points": [(0.2, 0.2, 0.4)]}
    alone = [bench.hypervolume(r["points"], bench.REFERENCE) for r in (a, b)]
    pooled = bench.pooled_hypervolume({"random": [a], "predictor": [b]})
    assert pooled > max(alone) and pooled < sum(alone)
    assert bench.pooled_hypervolume({"random": [a], "predictor": [{"hypervolume": 1.0}]}) is None  # older results
