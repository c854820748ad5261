"""Samplers compared at the same trial budget, on the same trained supernet, over several seeds.

One seed per sampler cannot tell samplers apart at a budget of tens of trials (their fronts differ by more
from seed to seed than from sampler to sampler), so each sampler runs ``--seeds`` studies. Reports, per
sampler, the median hypervolume of the fronts (objectives: error = 1 - accuracy, latency, size, each
normalized by the fp32 largest subnet so the reference point is meaningful) and its ratio to random search's,
the front size, the time spent in its trials, and from each study the best point within 0.5 points of the fp32
largest subnet's accuracy, as latency and size ratios against the fully-INT8 largest subnet (the SimQ-NAS
comparison; it reports up to 4.80x and 3.44x). Every study's points together give the best front found: the
hypervolume no single study could have exceeded with what was measured, so a sampler's ratio to random reads
against what was there to find.

Then the predictors (compress.search.predictors), measured on the trials the studies produced: every
regressor kind fitted on 75% of the distinct candidates and on one study's budget (``--trials``), each
predicting the rest (Kendall tau for accuracy; Kendall, MAPE and the share within +-10% for latency and
size; latency as a multiple of each study's reference, see ``relative_latency``), beside the ceiling that
the measurements' own repeatability sets; and, for the predictor sampler's studies, what the predictors
expected of the trials they chose against what was measured.

    python scripts/bench_search.py --recipe quickstart --trials 60 --seeds 3
    python scripts/bench_search.py --recipe mosaic --samplers random,nsga2,predictor --trials 100
    python scripts/bench_search.py --recipe data/photo-patches --trials 60     # a folder with recipe.yaml
    python scripts/bench_search.py --recipe mosaic --report-only   # the report again, from the finished studies

``--recipe`` is a recipe name under recipes/, a recipe file, or a directory holding ``recipe.yaml``. Studies
are kept in runs/bench-search-<recipe name>/studies.db and resumed when run again (``--fresh`` deletes them).
Results: bench_results/search.md/.json for the quickstart, bench_results/search_<recipe name>.md/.json else.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys

from benchlib import ROOT, environment, resolve_task, trained_context, write_results
from optuna.trial import TrialState

from compress.errors import CompressError
from compress.recipe import LoadedRecipe, SamplerConfig, load_recipe
from compress.search.candidate import CandidateSpec, build_candidate, measure_candidate
from compress.search.hypervolume import hypervolume
from compress.search.loop import REFERENCE_ATTR, anchor_reference, run_search
from compress.search.record import TrialRecord

SAMPLERS = ("random", "nsga2", "tpe", "gp", "predictor")
METRICS = ("accuracy", "latency_ms", "size_mb")
REFERENCE = (1.0, 1.5, 1.5)  # hypervolume's reference: error 1, and 1.5x the fp32 largest's latency and size


def summarize(study) -> dict:
    every = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [r for r in map(TrialRecord.from_trial, every) if r.metrics]
    base = {r.baseline: r.metrics for r in done if r.baseline}
    fp32 = base["largest-fp32"]
    # The fully-INT8 largest subnet to beat: the fastest INT8 baseline for latency, the smallest for size.
    int8_fast = min((m for n, m in base.items() if "int8" in n), key=lambda m: m["latency_ms"])
    int8_small = min((m for n, m in base.items() if "int8" in n), key=lambda m: m["size_mb"])
    points = [(1 - r.metrics["accuracy"], r.metrics["latency_ms"] / fp32["latency_ms"],
               r.metrics["size_mb"] / fp32["size_mb"]) for r in done]
    hv = hypervolume(points, reference=REFERENCE)
    close = [r.metrics for r in done if r.metrics["accuracy"] >= fp32["accuracy"] - 0.005]
    fastest = min(close, key=lambda m: m["latency_ms"])
    smallest = min(close, key=lambda m: m["size_mb"])
    # Time spent in the study's trials (sampling included), from their own timestamps: right for a study resumed
    # or finished in an earlier run too, where a stopwatch around run_search would count only the last part.
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in every)
    return {
        "trials": len(done),
        "seconds": seconds,
        "front": len(study.best_trials),
        "hypervolume": hv,
        "points": points,
        "fp32_largest": {k: fp32[k] for k in METRICS},
        "int8_largest_fastest": {k: int8_fast[k] for k in METRICS},
        "int8_largest_smallest": {k: int8_small[k] for k in METRICS},
        "fastest_within_0.5pt": {k: fastest[k] for k in METRICS},
        "smallest_within_0.5pt": {k: smallest[k] for k in METRICS},
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


def with_sampler(loaded: LoadedRecipe, sampler: SamplerConfig, trials: int) -> LoadedRecipe:
    search = loaded.recipe.search.model_copy(update={"n_trials": trials, "sampler": sampler})
    recipe = loaded.recipe.model_copy(update={"search": search})
    return LoadedRecipe(recipe, loaded.path, loaded.space_path, loaded.space, loaded.data_path)


def relative_latency(study, metrics: dict) -> float:
    """A trial's latency as a multiple of its study's reference (the fp32 largest subnet, timed once when the
    study was created). Within a study every latency is (candidate/reference ratio) x that one anchor, so the
    anchor's own noise moves a whole study at once: the same reference timed 0.79-1.57 ms in the 15 photo
    studies. A predictor fits and predicts within one study, so it is judged on this ratio; pooled raw
    milliseconds would charge it with the anchors' scatter."""
    return metrics["latency_ms"] / study.user_attrs[REFERENCE_ATTR]


def measured_candidates(loaded: LoadedRecipe, studies: list):
    """Features and targets of every distinct measured candidate (latency relative to its study's reference),
    every measurement of each, for the noise floor, and the columns of the cost terms (the additive model's)."""
    import numpy as np

    from compress.search.features import CandidateFeatures, ModelIO

    features = CandidateFeatures(loaded.space, loaded.recipe, ModelIO.of_study(studies[0], loaded.recipe))
    rows, targets, repeats = [], {m: [] for m in METRICS}, {}
    for study in studies:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            metrics = TrialRecord.from_trial(trial).metrics
            if not metrics:
                continue
            metrics = {**metrics, "latency_ms": relative_latency(study, metrics)}
            x = features(trial.params)
            key = x.tobytes()
            repeats.setdefault(key, []).append(metrics["latency_ms"])
            if len(repeats[key]) > 1:  # baselines and repeats: one row per distinct candidate
                continue
            rows.append(x)
            for m in METRICS:
                targets[m].append(metrics[m])
    return (np.stack(rows), {m: np.array(v) for m, v in targets.items()}, list(repeats.values()),
            features.cost_terms)


def latency_noise(repeats: list[list[float]]) -> dict:
    """How well a candidate's own other measurements (in other studies, relative to their references) predict
    it: the share within +-10% of their median. No predictor can do better than the measurement repeats."""
    import numpy as np

    rel = [abs(v - np.median(vs)) / np.median(vs) for vs in repeats if len(vs) > 1 for v in vs]
    return {"candidates": sum(len(vs) > 1 for vs in repeats), "measurements": len(rel),
            "within_10": float(np.mean([r <= 0.10 for r in rel])) if rel else None,
            "median_deviation": float(np.median(rel)) if rel else None}


def predictor_quality(loaded: LoadedRecipe, studies: list, budget: int) -> dict:
    """Held-out quality of every regressor kind on the distinct candidates all studies measured."""
    from compress.search.predictors import KINDS, evaluate_predictors

    X, y, repeats, terms = measured_candidates(loaded, studies)
    out = {"candidates": len(X), "budget": budget, "latency": "relative to the study's reference",
           "noise": latency_noise(repeats), "kinds": {}}
    for kind in KINDS:
        out["kinds"][kind] = {}
        for label, holdout in (("75%", 0.25), ("budget", 1 - budget / len(X))):
            if holdout <= 0 or len(X) - round(holdout * len(X)) < 8:
                continue
            q = evaluate_predictors(X, y, holdout=holdout, splits=5, kind=kind, terms=terms)
            out["kinds"][kind][label] = {m: v.to_dict() for m, v in q.items()}
            print(f"predictors: {kind} fitted on {label}: " + ", ".join(
                f"{m} tau {v.kendall:.2f} mape {100 * v.mape:.1f}%" for m, v in q.items()), flush=True)
    return out


def online_quality(studies: list) -> dict:
    """What the predictor sampler expected of the trials it chose, against their measurements (pooled)."""
    from compress.search.outputs import predicted_and_measured
    from compress.search.predictors import quality

    pooled: dict[str, tuple[list, list]] = {}
    for study in studies:
        for name, (expected, measured, _) in predicted_and_measured(study).items():
            pooled.setdefault(name, ([], []))
            pooled[name][0].extend(expected)
            pooled[name][1].extend(measured)
    return {name: quality(e, m).to_dict() for name, (e, m) in pooled.items()}


def pooled_hypervolume(results: dict[str, list[dict]]) -> float | None:
    """The hypervolume of every study's points together: the best front any sampler found, so the most a
    single study could have shown with what was measured (None for results saved before points were kept)."""
    runs = [r for rs in results.values() for r in rs]
    if not runs or any("points" not in r for r in runs):
        return None
    return hypervolume([tuple(p) for r in runs for p in r["points"]], reference=REFERENCE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart", help="recipe name, recipe file, or folder with recipe.yaml")
    parser.add_argument("--run-dir", help="where the supernet is trained (or found); default the recipe's")
    parser.add_argument("--supernet", help="a trained supernet checkpoint directory, used as it is")
    parser.add_argument("--trials", type=int, default=60, help="completed trials per study (baselines included)")
    parser.add_argument("--seeds", type=int, default=3, help="studies per sampler, with sampler seeds 0..N-1")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--warmup", type=int, default=16, help="predictor sampler: trials before it fits")
    parser.add_argument("--candidates", type=int, default=2000, help="predictor sampler: candidates scored per trial")
    parser.add_argument("--fresh", action="store_true", help="delete earlier benchmark studies instead of resuming them")
    parser.add_argument("--report-only", action="store_true",
                        help="no new trials: summarize the finished studies and measure the predictors again")
    args = parser.parse_args(argv)
    samplers = args.samplers.split(",")
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or args.trials < 1 or args.seeds < 1:
        print(f"error: samplers must be among {','.join(SAMPLERS)} (got {unknown}); --trials and --seeds >= 1",
              file=sys.stderr)
        return 2
    try:
        recipe_path = resolve_task(args.recipe, "--recipe")
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.report_only:
        try:
            return report_again(load_recipe(recipe_path))
        except CompressError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    loaded, checkpoint, context = trained_context(str(recipe_path), args.run_dir, args.supernet)
    bench_dir = ROOT / "runs" / f"bench-search-{loaded.name}"
    if args.fresh and bench_dir.exists():
        shutil.rmtree(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    base = loaded.recipe.search.sampler
    results: dict[str, list[dict]] = {}
    studies: dict[str, list] = {}
    again = None
    for sampler in samplers:
        for seed in range(args.seeds):
            extra = {"warmup": args.warmup, "candidates": args.candidates} if sampler == "predictor" else {}
            cfg = SamplerConfig(name=sampler, seed=seed, population_size=base.population_size, **extra)
            name = f"{sampler}-seed{seed}"
            study = run_search(with_sampler(loaded, cfg, args.trials), bench_dir / name,
                               storage=f"sqlite:///{bench_dir / 'studies.db'}", study_name=name,
                               supernet_path=checkpoint.path, log=lambda *_: None)
            results.setdefault(sampler, []).append(summarize(study))
            studies.setdefault(sampler, []).append(study)
            print(name, results[sampler][-1], flush=True)
            if again is None and sampler == "nsga2":
                anchor_reference(context, study)
                again = reproduce(study, context)
    every = [s for runs in studies.values() for s in runs]
    payload = {"recipe": str(recipe_path), "task": loaded.name, "trials": args.trials, "seeds": args.seeds,
               "warmup": args.warmup, "candidates": args.candidates, "results": results,
               "predictors": predictor_quality(loaded, every, args.trials),
               "predictor_sampler_online": online_quality(studies.get("predictor", [])), "reproduction": again,
               "environment": environment()}
    write_results(results_name(loaded), payload, render(payload))
    return 0


def results_name(loaded: LoadedRecipe) -> str:
    # The quickstart's results keep their historical name (search_digits.md holds those of its earlier task,
    # plain digits); other tasks get their own files.
    return "search" if loaded.name == "quickstart" else f"search_{loaded.name}"


def report_again(loaded: LoadedRecipe) -> int:
    """Summarize again the studies a finished run left, measure the predictors on them again, and rewrite
    the report (its reproduction figures are kept: those re-time models)."""
    import json

    import optuna

    from benchlib import RESULTS

    name = results_name(loaded)
    path = RESULTS / f"{name}.json"
    storage = f"sqlite:///{ROOT / 'runs' / f'bench-search-{loaded.name}' / 'studies.db'}"
    if not path.exists():
        print(f"error: --report-only: no earlier results in {path}", file=sys.stderr)
        return 2
    payload = json.loads(path.read_text())
    try:
        studies = {sampler: [optuna.load_study(study_name=f"{sampler}-seed{seed}", storage=storage)
                             for seed in range(len(runs))] for sampler, runs in payload["results"].items()}
    except KeyError as exc:
        print(f"error: --report-only: a study of {path} is not in {storage}: {exc}", file=sys.stderr)
        return 2
    every = [s for runs in studies.values() for s in runs]
    payload.update(task=loaded.name, results={k: [summarize(s) for s in v] for k, v in studies.items()},
                   predictors=predictor_quality(loaded, every, payload["trials"]),
                   predictor_sampler_online=online_quality(studies.get("predictor", [])))
    write_results(name, payload, render(payload))
    return 0


def render(payload: dict) -> str:
    """The markdown report of one run's results (its JSON payload)."""
    results, predictors = payload["results"], payload["predictors"]
    online, again = payload["predictor_sampler_online"], payload["reproduction"]
    md = [f"## Search: {payload['trials']} trials per study, {payload['seeds']} seeds per sampler, on `{payload['task']}` "
          "(objectives accuracy, latency, size)", "",
          "| sampler | hypervolume, median (min-max) | vs random | front size | fastest within 0.5 pt of fp32 "
          "largest: latency vs INT8 largest, median (min-max) | smallest within 0.5 pt: size vs INT8 largest, "
          "median (min-max) | time in trials per study, median |",
          "| --- | --- | --- | --- | --- | --- | --- |"]

    def spread(values, fmt):
        values = sorted(values)
        return f"{fmt.format(values[len(values) // 2])} ({fmt.format(values[0])}-{fmt.format(values[-1])})"

    def median(values):
        return statistics.median(values)

    random_hv = median([r["hypervolume"] for r in results["random"]]) if "random" in results else None
    for name, runs in results.items():
        hv = median([r["hypervolume"] for r in runs])
        md.append(f"| {name} | {spread([r['hypervolume'] for r in runs], '{:.3f}')} | "
                  f"{f'{hv / random_hv:.3f}x' if random_hv else '-'} | "
                  f"{spread([r['front'] for r in runs], '{}')} | "
                  f"{spread([r['latency_ratio_vs_int8_largest'] for r in runs], '{:.2f}x')} | "
                  f"{spread([r['size_ratio_vs_int8_largest'] for r in runs], '{:.2f}x')} | "
                  f"{median([r['seconds'] for r in runs]):.0f} s |")
    pooled = pooled_hypervolume(results)
    if pooled is not None:
        n = sum(len(runs) for runs in results.values())
        md += ["", f"Every study's points together (the best front found by any of the {n} studies): hypervolume "
               f"{pooled:.3f}" + (f", {pooled / random_hv:.3f}x random's median: no study's ratio could exceed "
                                   "that with what was measured." if random_hv else ".")]
    md += ["", "Per study:", "", "| study | hypervolume | front | fastest within 0.5 pt | smallest within 0.5 pt |",
           "| --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        for seed, r in enumerate(runs):
            f, s = r["fastest_within_0.5pt"], r["smallest_within_0.5pt"]
            md.append(f"| {name} seed {seed} | {r['hypervolume']:.3f} | {r['front']} | {100 * f['accuracy']:.2f}% "
                      f"{f['latency_ms']:.3f} ms ({r['latency_ratio_vs_int8_largest']:.2f}x faster) | "
                      f"{100 * s['accuracy']:.2f}% {1000 * s['size_mb']:.0f} KB ({r['size_ratio_vs_int8_largest']:.2f}x "
                      "smaller) |")

    relative = predictors.get("latency") == "relative to the study's reference"
    md += ["", f"Predictors, held out: the {predictors['candidates']} distinct candidates all studies measured; each "
           "regressor fitted on 75% of them, or on one study's budget of "
           f"{payload['trials']}, predicting the rest (5 random splits, averaged)."
           + (" Latency is each trial's as a multiple of its own study's reference (what a study's predictor "
              "sees: the reference is timed once per study, and that anchor alone varied by up to 2x between "
              "studies)." if relative else "")]
    noise = predictors.get("noise")
    if noise and noise["measurements"]:
        md += [f"Measurement noise, the ceiling for any latency predictor: the {noise['candidates']} candidates "
               f"measured more than once (in different studies; {noise['measurements']} measurements) lie within "
               f"+-10% of their own median in {100 * noise['within_10']:.0f}% of the measurements (median deviation "
               f"{100 * noise['median_deviation']:.1f}%)."]
    md += ["",
           "| regressor | fitted on | accuracy: Kendall | latency: Kendall, MAPE, within 10% | size: Kendall, MAPE, "
           "within 10% |", "| --- | --- | --- | --- | --- |"]
    for kind, by_label in predictors["kinds"].items():
        for label, q in by_label.items():
            a, lat, size = q["accuracy"], q["latency_ms"], q["size_mb"]
            md.append(f"| {kind} | {label} | {a['kendall']:.2f} | {lat['kendall']:.2f}, {100 * lat['mape']:.1f}%, "
                      f"{100 * lat['within_10']:.0f}% | {size['kendall']:.2f}, {100 * size['mape']:.1f}%, "
                      f"{100 * size['within_10']:.0f}% |")
    if online:
        md += ["", "The predictor sampler's own predictions for the trials it chose (pooled over its studies; these "
               "are the candidates ranked best, so their predictions lean optimistic):", "",
               "| objective | trials | Kendall | MAPE | within 10% |", "| --- | --- | --- | --- | --- |"]
        md += [f"| {name} | {q['n']} | {q['kendall']:.2f} | {100 * q['mape']:.1f}% | {100 * q['within_10']:.0f}% |"
               for name, q in online.items()]

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
           "Hypervolume of (error, latency / fp32 largest, size / fp32 largest) below the reference "
           f"({', '.join(f'{v:g}' for v in REFERENCE)}); "
           "larger is better.", ""]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
