"""NSGA-II against random search for the same trial budget, on the same trained supernet, over several seeds.

One seed per sampler cannot tell samplers apart at a budget of tens of trials (their fronts differ by more
from seed to seed than from sampler to sampler), so each sampler runs ``--seeds`` studies. Reports the
hypervolume of each front (objectives: error = 1 - accuracy, latency, size, each normalized by
the fp32 largest subnet so the reference point is meaningful) and, from each study, the best point within 0.5
points of the fp32 largest subnet's accuracy, as latency and size ratios against the fully-INT8 largest
subnet (the SimQ-NAS comparison; it reports up to 4.80x and 3.44x).

    python scripts/bench_search.py [--recipe recipes/quickstart.yaml] [--trials 60] [--seeds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics

from benchlib import ROOT, environment, trained_context, write_results
from optuna.trial import TrialState

from compress.recipe import LoadedRecipe
from compress.search.candidate import CandidateSpec, build_candidate, measure_candidate
from compress.search.hypervolume import hypervolume
from compress.search.loop import anchor_reference, run_search
from compress.search.record import TrialRecord


def summarize(study) -> dict:
    done = [r for r in map(TrialRecord.from_trial, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if r.metrics]
    base = {r.baseline: r.metrics for r in done if r.baseline}
    fp32 = base["largest-fp32"]
    # The fully-INT8 largest subnet to beat: the fastest INT8 baseline for latency, the smallest for size.
    int8_fast = min((m for n, m in base.items() if "int8" in n), key=lambda m: m["latency_ms"])
    int8_small = min((m for n, m in base.items() if "int8" in n), key=lambda m: m["size_mb"])
    points = [(1 - r.metrics["accuracy"], r.metrics["latency_ms"] / fp32["latency_ms"],
               r.metrics["size_mb"] / fp32["size_mb"]) for r in done]
    hv = hypervolume(points, reference=(1.0, 1.5, 1.5))
    close = [r.metrics for r in done if r.metrics["accuracy"] >= fp32["accuracy"] - 0.005]
    fastest = min(close, key=lambda m: m["latency_ms"])
    smallest = min(close, key=lambda m: m["size_mb"])
    return {
        "trials": len(done),
        "front": len(study.best_trials),
        "hypervolume": hv,
        "fp32_largest": {k: fp32[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "int8_largest_fastest": {k: int8_fast[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "int8_largest_smallest": {k: int8_small[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "fastest_within_0.5pt": {k: fastest[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "smallest_within_0.5pt": {k: smallest[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "latency_ratio_vs_int8_largest": int8_fast["latency_ms"] / fastest["latency_ms"],
        "size_ratio_vs_int8_largest": int8_small["size_mb"] / smallest["size_mb"],
    }


def reproduce(study, context, times: int = 3) -> list[dict]:
    """Rebuild every front trial with build_candidate (what export does) and measure it ``times`` times.

    The range of the re-measurements is the noise band of one measurement at this moment; the trial's recorded
    latency is compared with their median."""
    rows = []
    for trial in study.best_trials:
        record = TrialRecord.from_trial(trial)
        recorded = record.metrics
        candidate = build_candidate(context, CandidateSpec.from_dict(record.spec))
        measured = [measure_candidate(candidate, context) for _ in range(times)]
        latencies = sorted(m.latency_ms for m in measured)
        median = statistics.median(latencies)
        rows.append({"trial": trial.number, "accuracy": recorded["accuracy"], "accuracy_again": measured[0].accuracy,
                     "latency_ms": recorded["latency_ms"], "latency_ms_again": latencies,
                     "relative_change": median / recorded["latency_ms"] - 1,
                     "noise_band": (latencies[-1] - latencies[0]) / median})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3, help="studies per sampler, with sampler seeds 0..N-1")
    parser.add_argument("--samplers", default="nsga2,random")
    parser.add_argument("--fresh", action="store_true", help="delete earlier benchmark studies instead of resuming them")
    args = parser.parse_args()

    loaded, checkpoint, context = trained_context(args.recipe, args.run_dir)
    bench_dir = ROOT / "runs" / f"bench-search-{loaded.name}"
    if args.fresh and bench_dir.exists():
        shutil.rmtree(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    again = None
    for sampler in args.samplers.split(","):
        for seed in range(args.seeds):
            search = loaded.recipe.search.model_copy(update={
                "n_trials": args.trials,
                "sampler": loaded.recipe.search.sampler.model_copy(update={"name": sampler, "seed": seed}),
            })
            recipe = loaded.recipe.model_copy(update={"search": search})
            variant = LoadedRecipe(recipe, loaded.path, loaded.space_path, loaded.space, loaded.data_path)
            name = f"{sampler}-seed{seed}"
            study = run_search(variant, bench_dir / name, storage=f"sqlite:///{bench_dir / 'studies.db'}",
                               study_name=name, supernet_path=checkpoint.path, log=lambda *_: None)
            results.setdefault(sampler, []).append(summarize(study))
            print(name, results[sampler][-1], flush=True)
            if again is None and sampler == "nsga2":
                anchor_reference(context, study)
                again = reproduce(study, context)

    md = [f"## Search: {args.trials} trials per study, {args.seeds} seeds per sampler, on `{loaded.name}` "
          "(objectives accuracy, latency, size)", "",
          "| sampler | hypervolume, median (min-max) | front size | fastest within 0.5 pt of fp32 largest: latency "
          "vs INT8 largest, median (min-max) | smallest within 0.5 pt: size vs INT8 largest, median (min-max) |",
          "| --- | --- | --- | --- | --- |"]

    def spread(values, fmt):
        values = sorted(values)
        return f"{fmt.format(values[len(values) // 2])} ({fmt.format(values[0])}-{fmt.format(values[-1])})"

    for name, runs in results.items():
        md.append(f"| {name} | {spread([r['hypervolume'] for r in runs], '{:.3f}')} | "
                  f"{spread([r['front'] for r in runs], '{}')} | "
                  f"{spread([r['latency_ratio_vs_int8_largest'] for r in runs], '{:.2f}x')} | "
                  f"{spread([r['size_ratio_vs_int8_largest'] for r in runs], '{:.2f}x')} |")
    md += ["", "Per study:", "", "| study | hypervolume | front | fastest within 0.5 pt | smallest within 0.5 pt |",
           "| --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        for seed, r in enumerate(runs):
            f, s = r["fastest_within_0.5pt"], r["smallest_within_0.5pt"]
            md.append(f"| {name} seed {seed} | {r['hypervolume']:.3f} | {r['front']} | {100 * f['accuracy']:.2f}% "
                      f"{f['latency_ms']:.3f} ms ({r['latency_ratio_vs_int8_largest']:.2f}x faster) | "
                      f"{100 * s['accuracy']:.2f}% {1000 * s['size_mb']:.0f} KB ({r['size_ratio_vs_int8_largest']:.2f}x "
                      "smaller) |")
    first = next(iter(results.values()))[0]
    if again:
        changes = sorted(abs(r["relative_change"]) for r in again)
        bands = sorted(r["noise_band"] for r in again)
        md += ["", f"Reproduction: the {len(again)} front trials of the first nsga2 study rebuilt with `build_candidate` "
               f"(as export does) and measured 3 times: accuracy identical in "
               f"{sum(r['accuracy'] == r['accuracy_again'] for r in again)}/{len(again)}; the median re-measured "
               f"latency differs from the trial's by a median of {100 * changes[len(changes) // 2]:.1f}% (largest "
               f"{100 * changes[-1]:.1f}%; {sum(r['relative_change'] < 0 for r in again)}/{len(again)} faster than "
               f"recorded). Noise band, the range of the 3 re-measurements of one candidate: median "
               f"{100 * bands[len(bands) // 2]:.1f}% (largest {100 * bands[-1]:.1f}%).", "",
               "| trial | recorded latency | re-measured (3x) | change of the median | noise band |",
               "| --- | --- | --- | --- | --- |"]
        md += [f"| {r['trial']} | {r['latency_ms']:.3f} ms | {', '.join(f'{v:.3f}' for v in r['latency_ms_again'])} ms | "
               f"{100 * r['relative_change']:+.1f}% | {100 * r['noise_band']:.1f}% |" for r in again]
    md += ["", f"Baselines (measured in the same studies): fp32 largest {100 * first['fp32_largest']['accuracy']:.2f}% "
           f"{first['fp32_largest']['latency_ms']:.3f} ms {1000 * first['fp32_largest']['size_mb']:.0f} KB; "
           f"fully-INT8 largest {100 * first['int8_largest_fastest']['accuracy']:.2f}%, fastest "
           f"{first['int8_largest_fastest']['latency_ms']:.3f} ms, smallest {1000 * first['int8_largest_smallest']['size_mb']:.0f} KB.",
           "Hypervolume of (error, latency / fp32 largest, size / fp32 largest) below the reference (1, 1.5, 1.5); "
           "larger is better.", ""]
    write_results("search", {"recipe": args.recipe, "trials": args.trials, "seeds": args.seeds, "results": results,
                             "reproduction": again, "environment": environment()}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
