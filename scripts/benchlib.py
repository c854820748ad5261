"""Helpers shared by the benchmark scripts: loading a trained run, interleaved timing, writing results."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench_results"


def resolve_task(task: str, option: str = "--task") -> Path:
    """A recipe name under recipes/, a recipe file, or a directory holding recipe.yaml (``option`` names the
    command-line option in errors)."""
    from compress.errors import CompressError

    p = Path(task)
    if p.is_dir():
        if not (p / "recipe.yaml").is_file():
            raise CompressError(f"{option} {task}: directory has no recipe.yaml (make_photo_task.py writes one)")
        return p / "recipe.yaml"
    if p.is_file():
        return p
    named = ROOT / "recipes" / f"{task}.yaml"
    if named.is_file():
        return named
    raise CompressError(f"{option} {task!r}: not a recipe file, a directory with recipe.yaml, or a recipe name "
                        f"under {ROOT / 'recipes'}")


def trained_context(recipe_path: str, run_dir: str | None = None, supernet: str | None = None):
    """The recipe, its trained supernet (trained now if missing) and a BuildContext, as the search builds them."""
    import logging

    from compress.api import build_context

    # A script is an application: it shows the library's progress (the library itself never configures logging).
    # Only compress's own logger: at INFO on the root logger, ONNX Runtime's quantizer prints a line for every
    # tensor it leaves in fp32 (hundreds per partly-INT8 candidate), burying the progress.
    package = logging.getLogger("compress")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
    return build_context(recipe_path, run_dir, supernet=supernet)


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


def save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a benchmark's matplotlib figure (closed: a long run draws many)."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def environment() -> dict:
    from compress.provenance import machine, package_versions

    return {"versions": package_versions(), "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}


# --------------------------------------------------------------------------------------------------
# Ranking statistics and a stand-alone result cache (bench_supernet_ranking.py)


def rank_statistics(inherited: list[float], standalone: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Spearman and Kendall (tau-b) with bootstrap 90% percentile intervals over architectures.

    Architectures are resampled with replacement, pairs kept together: the interval says how much the figure
    depends on which architectures happened to be picked, which is what a reader comparing two supernets
    measured on 24 points needs to know.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(inherited, dtype=float), np.asarray(standalone, dtype=float)
    out = {"spearman": float(stats.spearmanr(x, y).statistic), "kendall": float(stats.kendalltau(x, y).statistic)}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"spearman": [], "kendall": []}
    for _ in range(resamples):
        idx = rng.integers(len(x), size=len(x))
        a, b = x[idx], y[idx]
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue  # a resample of one repeated point has no ranking at all
        draws["spearman"].append(stats.spearmanr(a, b).statistic)
        draws["kendall"].append(stats.kendalltau(a, b).statistic)
    for name, values in draws.items():
        lo, hi = np.nanpercentile(values, [5, 95]) if values else (float("nan"), float("nan"))
        out[f"{name}_90"] = [float(lo), float(hi)]
    return out


def top_overlap(inherited: list[float], standalone: list[float], fraction: float = 0.25) -> tuple[int, int]:
    """How many of the top ``fraction`` by inherited accuracy are also in the top ``fraction`` stand-alone."""
    k = max(1, math.ceil(len(inherited) * fraction))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])  # noqa: E731
    return len(top(inherited) & top(standalone)), k


def noise_ceiling(changes: list[float], standalone: list[float]) -> tuple[float, float]:
    """Seed-to-seed sd of one stand-alone accuracy and the correlation a perfect supernet could reach.

    ``changes`` are differences between two seeds of one architecture (variance 2 sd^2); against the spread
    of stand-alone accuracies across architectures, ceiling = sqrt(1 - sd^2 / spread^2).
    """
    seed_sd = statistics.fmean(c**2 for c in changes) ** 0.5 / 2**0.5
    spread = statistics.stdev(standalone)
    return seed_sd, max(0.0, 1 - seed_sd**2 / spread**2) ** 0.5 if spread else 0.0


def source_hash(paths: list[Path], extra: str = "") -> str:
    """Hash of source files (and ``extra`` text): a cached result computed by other code is never reused."""
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class ResultCache:
    """A JSON file of results keyed by a hash of everything they depend on; saved after every new entry, so
    an interrupted benchmark keeps what it finished and a later run picks up from there.

    Several benchmark processes may share one cache (two supernets' ablations on two cores): a miss re-reads
    the file (another process may have trained it meanwhile), and a write merges into what is on disk under
    an exclusive lock, so no process drops another's entries.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, key: str) -> dict | None:
        if key not in self.entries:
            self.entries.update(self._read())
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        import fcntl

        from compress.fsutil import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.entries = {**self._read(), **self.entries, key: value}
            write_json_atomic(self.path, self.entries)
