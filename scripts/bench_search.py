"""NSGA-II against random search for the same trial budget, on the same trained supernet.

Reports the hypervolume of each front (objectives: error = 1 - accuracy, latency, size, each normalized by
the fp32 largest subnet so the reference point is meaningful) and, from each study, the best point within 0.5
points of the fp32 largest subnet's accuracy, as latency and size ratios against the fully-INT8 largest
subnet (the SimQ-NAS comparison; it reports up to 4.80x and 3.44x).

    python scripts/bench_search.py [--recipe recipes/quickstart.yaml] [--trials 60]
"""

from __future__ import annotations

import argparse
import shutil

from benchlib import ROOT, environment, trained_context, write_results
from optuna.trial import TrialState

from compress.recipe import LoadedRecipe
from compress.search.hypervolume import hypervolume
from compress.search.loop import run_search
from compress.search.outputs import BASELINE_ATTR


def summarize(study) -> dict:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    base = {t.user_attrs[BASELINE_ATTR]: t.user_attrs["metrics"] for t in done if t.user_attrs.get(BASELINE_ATTR)}
    fp32 = base["largest-fp32"]
    int8 = min((m for n, m in base.items() if "int8" in n), key=lambda m: m["latency_ms"])
    points = [(1 - t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["latency_ms"] / fp32["latency_ms"],
               t.user_attrs["metrics"]["size_mb"] / fp32["size_mb"]) for t in done]
    hv = hypervolume(points, reference=(1.0, 1.5, 1.5))
    close = [t.user_attrs["metrics"] for t in done if t.user_attrs["metrics"]["accuracy"] >= fp32["accuracy"] - 0.005]
    fastest = min(close, key=lambda m: m["latency_ms"])
    smallest = min(close, key=lambda m: m["size_mb"])
    return {
        "trials": len(done),
        "front": len(study.best_trials),
        "hypervolume": hv,
        "fp32_largest": {k: fp32[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "int8_largest": {k: int8[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "fastest_within_0.5pt": {k: fastest[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "smallest_within_0.5pt": {k: smallest[k] for k in ("accuracy", "latency_ms", "size_mb")},
        "latency_ratio_vs_int8_largest": int8["latency_ms"] / fastest["latency_ms"],
        "size_ratio_vs_int8_largest": int8["size_mb"] / smallest["size_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--samplers", default="nsga2,random")
    args = parser.parse_args()

    loaded, checkpoint, _ = trained_context(args.recipe, args.run_dir)
    bench_dir = ROOT / "runs" / f"bench-search-{loaded.name}"
    if bench_dir.exists():
        shutil.rmtree(bench_dir)
    bench_dir.mkdir(parents=True)
    results = {}
    for sampler in args.samplers.split(","):
        search = loaded.recipe.search.model_copy(update={
            "n_trials": args.trials,
            "sampler": loaded.recipe.search.sampler.model_copy(update={"name": sampler}),
        })
        recipe = loaded.recipe.model_copy(update={"search": search})
        variant = LoadedRecipe(recipe, loaded.path, loaded.space_path, loaded.space, loaded.data_path)
        study = run_search(variant, bench_dir / sampler, storage=f"sqlite:///{bench_dir / 'studies.db'}",
                           study_name=sampler, supernet_path=checkpoint.path, log=lambda *_: None)
        results[sampler] = summarize(study)
        print(sampler, results[sampler])

    md = [f"## Search: {args.trials} trials per sampler on `{loaded.name}` (objectives accuracy, latency, size)", "",
          "| sampler | completed | front | hypervolume | fastest within 0.5 pt of fp32 largest | latency vs INT8 largest "
          "| smallest within 0.5 pt | size vs INT8 largest |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        f, s = r["fastest_within_0.5pt"], r["smallest_within_0.5pt"]
        md.append(f"| {name} | {r['trials']} | {r['front']} | {r['hypervolume']:.4f} | {100 * f['accuracy']:.2f}% "
                  f"{f['latency_ms']:.3f} ms | {r['latency_ratio_vs_int8_largest']:.2f}x faster | "
                  f"{100 * s['accuracy']:.2f}% {1000 * s['size_mb']:.0f} KB | {r['size_ratio_vs_int8_largest']:.2f}x smaller |")
    first = next(iter(results.values()))
    md += ["", f"Baselines (measured in the same studies): fp32 largest {100 * first['fp32_largest']['accuracy']:.2f}% "
           f"{first['fp32_largest']['latency_ms']:.3f} ms {1000 * first['fp32_largest']['size_mb']:.0f} KB; "
           f"INT8 largest {100 * first['int8_largest']['accuracy']:.2f}% {first['int8_largest']['latency_ms']:.3f} ms "
           f"{1000 * first['int8_largest']['size_mb']:.0f} KB.",
           "Hypervolume of (error, latency / fp32 largest, size / fp32 largest) below the reference (1, 1.5, 1.5); "
           "larger is better.", ""]
    write_results("search", {"recipe": args.recipe, "trials": args.trials, "results": results,
                             "environment": environment()}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
