"""Helpers shared by the benchmark scripts: loading a trained run, interleaved timing, writing results."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench_results"


def trained_context(recipe_path: str, run_dir: str | None = None):
    """The recipe, its trained supernet (trained now if missing) and a BuildContext, as the search builds them."""
    import logging

    from compress.api import build_context

    # A script is an application: it shows the library's progress (the library itself never configures logging).
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return build_context(recipe_path, run_dir)


def interleaved_latency(runners: dict, example, rounds: int = 7, per_round: int = 50, warmup: int = 20) -> dict:
    """Median latency of several runners timed in alternation, round by round.

    On a shared machine whole stretches of time run faster or slower; timing the variants in turn within each
    round and taking per-round ratios cancels that drift, which timing them one after another does not.
    """
    prepared = {name: r.prepare(example) for name, r in runners.items()}
    for name, r in runners.items():
        with r.timing():
            for _ in range(warmup):
                r.run_prepared(prepared[name])
    medians: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            times = []
            with r.timing():
                for _ in range(per_round):
                    start = time.perf_counter()
                    r.run_prepared(prepared[name])
                    times.append((time.perf_counter() - start) * 1e3)
            medians[name].append(statistics.median(times))
    return medians


def ratio_summary(medians: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in medians.items():
        ratios = [v / b for v, b in zip(values, medians[base])]
        out[name] = {"median_ms": statistics.median(values), "ratio_vs_" + base: statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "spread": (max(values) - min(values)) / statistics.median(values)}
    return out


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"written: {RESULTS / name}.json, {RESULTS / name}.md")


def environment() -> dict:
    from compress.provenance import machine, package_versions

    return {"versions": package_versions(), "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
