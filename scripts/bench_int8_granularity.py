"""Does mixing fp32 and INT8 units within one subnet ever pay on the CPU runtime? (issue 12, item 6)

A trial chooses INT8 or fp32 per quantization unit (stem, each stage, classifier: 2^5 = 32 subsets on a
3-stage space). Every boundary between an INT8 and an fp32 unit adds QuantizeLinear / DequantizeLinear work, so
a mixed subset may be slower than both uniform choices and never worth a trial. For a few subnets spread over
the space, every subset is built with ``build_candidate`` (what search and export use) and timed in
alternation with the others, round by round (drift cancels in per-round ratios). Each subset is classed as
``uniform`` (none or all units), ``contiguous`` (one run of consecutive units) or ``fragmented`` (two runs or
more), and compared with the better of the two uniform choices of the same subnet.

    python scripts/bench_int8_granularity.py --recipe recipes/mosaic.yaml --supernet runs/mosaic_10ep/supernet
    python scripts/bench_int8_granularity.py --recipe data/photo-patches --supernet runs/photos_10ep/supernet

``--recipe`` is a recipe name under recipes/, a recipe file, or a directory holding ``recipe.yaml``.
Results: bench_results/int8_granularity_<recipe name>.md/.json/.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys

from benchlib import (RESULTS, environment, interleaved_latency, resolve_task, save_figure, trained_context,
                      write_results)

from compress.errors import CompressError
from compress.measure.accuracy import accuracy
from compress.measure.latency import example_input
from compress.policies import Policies, QuantPolicy
from compress.search.candidate import CandidateSpec, build_candidate
from compress.search.suggest import space_units


def runs_of(mask: tuple[bool, ...]) -> int:
    """Number of maximal runs of consecutive INT8 units."""
    return sum(1 for i, q in enumerate(mask) if q and (i == 0 or not mask[i - 1]))


def kind_of(mask: tuple[bool, ...]) -> str:
    if not any(mask) or all(mask):
        return "uniform"
    return "contiguous" if runs_of(mask) == 1 else "fragmented"


def subnets(space, n_random: int, seed: int):
    """The largest and smallest subnet of every family pattern the space's extremes allow, plus random ones."""
    out = {"largest": space.largest(), "smallest": space.smallest()}
    for fam in sorted({b for s in space.stages for b in s.blocks}):
        blocks = [fam if fam in s.blocks else s.blocks[0] for s in space.stages]
        out[f"largest-{fam}"] = space.largest(blocks)
    rng = random.Random(seed)
    for i in range(n_random):
        out[f"random-{i}"] = space.sample(rng)
    seen, unique = set(), {}
    for name, arch in out.items():
        if arch.key() not in seen:
            seen.add(arch.key())
            unique[name] = arch
    return unique


def front_kinds(rows: list[dict]) -> dict[str, int]:
    """How many subsets of each kind are on the subnet's own front of (latency, size, accuracy): a subset no
    other subset beats on all three. A mixed subset there is a trade-off only per-unit choices can offer."""
    def beaten(a, b):
        no_worse = b["median_ms"] <= a["median_ms"] and b["size_kb"] <= a["size_kb"] and b["accuracy"] >= a["accuracy"]
        better = b["median_ms"] < a["median_ms"] or b["size_kb"] < a["size_kb"] or b["accuracy"] > a["accuracy"]
        return no_worse and better

    front = [r for r in rows if not any(beaten(r, o) for o in rows)]
    return {k: sum(1 for r in front if r["kind"] == k) for k in ("uniform", "contiguous", "fragmented")}


def measure(args, loaded, context) -> list[dict]:
    space = context.supernet.space
    units = space_units(space)
    masks = list(itertools.product((False, True), repeat=len(units)))
    shape = context.input_shape
    results = []
    for name, arch in subnets(space, args.random, loaded.recipe.seed).items():
        built = {}
        for mask in masks:
            chosen = tuple(u for u, q in zip(units, mask) if q)
            policy = QuantPolicy(args.backend, chosen) if chosen else QuantPolicy()
            built[mask] = build_candidate(context, CandidateSpec(arch, Policies(quant=policy), loaded.recipe.seed))
        runners = {m: c.deployable.runner(threads=loaded.recipe.target.threads) for m, c in built.items()}
        medians = interleaved_latency(runners, example_input(shape), rounds=args.rounds, per_round=args.per_round)
        fp32, int8 = masks[0], masks[-1]
        rows = []
        for m in masks:
            # per-round ratio against the better uniform choice of that round: drift cancels
            best_uniform = [min(a, b) for a, b in zip(medians[fp32], medians[int8])]
            ratios = [v / u for v, u in zip(medians[m], best_uniform)]
            rows.append({"mask": "".join("8" if q else "f" for q in m), "kind": kind_of(m), "runs": runs_of(m),
                         "median_ms": statistics.median(medians[m]),
                         "ratio_vs_best_uniform": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "size_kb": len(built[m].deployable.deployed_bytes()) / 1e3,
                         "accuracy": accuracy(built[m].deployable.runner(threads=1), context.data.val)})
        fp32_ms, int8_ms = statistics.median(medians[fp32]), statistics.median(medians[int8])
        results.append({"subnet": name, "arch": arch.describe(), "units": units, "fp32_ms": fp32_ms,
                        "int8_ms": int8_ms, "rows": rows})
        best = min((r for r in rows if r["kind"] != "uniform"), key=lambda r: r["ratio_vs_best_uniform"])
        print(f"{name}: fp32 {fp32_ms:.3f} ms, INT8 {int8_ms:.3f} ms, best mixed {best['mask']} "
              f"{best['ratio_vs_best_uniform']:.3f}x of the better uniform", flush=True)
    return results


def render(results: list[dict], name: str, backend: str, threads: int, rounds: int, per_round: int) -> str:
    units = results[0]["units"]
    md = [f"## INT8 granularity on `{name}`: every fp32/INT8 subset of {len(units)} units "
          f"({', '.join(units)}), backend {backend}", "",
          f"Latency: ONNX Runtime, {threads} thread, batch 1, the {2 ** len(units)} subsets "
          f"of one subnet timed in turn, {rounds} rounds of {per_round} runs; ratio = median over rounds of "
          "(subset's median / the faster of all-fp32 and all-INT8 in that round); below 1.00x the mixed subset "
          "beats both uniform choices. A mask lists the units in order, `8` INT8, `f` fp32. On the front: the "
          "subsets of that subnet no other subset beats on latency, size and val accuracy together.", "",
          "| subnet | all fp32 | all INT8 | best contiguous (ratio, min-max over rounds) | best fragmented | "
          "median contiguous | median fragmented | mixed subsets slower than both uniform | on the front: "
          "uniform / contiguous / fragmented |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {"contiguous": [], "fragmented": []}
    on_front = {"uniform": 0, "contiguous": 0, "fragmented": 0}
    for res in results:
        cells = []
        for kind in ("contiguous", "fragmented"):
            rows = [r for r in res["rows"] if r["kind"] == kind]
            summary[kind] += [r["ratio_vs_best_uniform"] for r in rows]
            best = min(rows, key=lambda r: r["ratio_vs_best_uniform"])
            cells.append(f"`{best['mask']}` {best['ratio_vs_best_uniform']:.3f}x ({best['ratio_min']:.2f}-"
                         f"{best['ratio_max']:.2f})")
        med = {k: statistics.median(r["ratio_vs_best_uniform"] for r in res["rows"] if r["kind"] == k)
               for k in ("contiguous", "fragmented")}
        mixed = [r for r in res["rows"] if r["kind"] != "uniform"]
        slower = sum(1 for r in mixed if r["ratio_vs_best_uniform"] > 1 and r["median_ms"] > max(res["fp32_ms"],
                                                                                                   res["int8_ms"]))
        kinds = front_kinds(res["rows"])
        for k, v in kinds.items():
            on_front[k] += v
        md.append(f"| {res['subnet']} | {res['fp32_ms']:.3f} ms | {res['int8_ms']:.3f} ms | {cells[0]} | {cells[1]} | "
                  f"{med['contiguous']:.3f}x | {med['fragmented']:.3f}x | {slower}/{len(mixed)} | "
                  f"{kinds['uniform']} / {kinds['contiguous']} / {kinds['fragmented']} |")
    beats = {k: sum(1 for v in vs if v < 0.97) for k, vs in summary.items()}
    md += ["", f"Mixed subsets more than 3% faster than the better uniform choice: contiguous {beats['contiguous']}"
           f"/{len(summary['contiguous'])}, fragmented {beats['fragmented']}/{len(summary['fragmented'])}. "
           f"On the subnets' latency-size-accuracy fronts: {on_front['uniform']} uniform, {on_front['contiguous']} "
           f"contiguous and {on_front['fragmented']} fragmented subsets.", "",
           "Architectures: " + "; ".join(f"{r['subnet']} `{r['arch']}`" for r in results) + ".", "",
           f"Plot: `int8_granularity_{name}.png`.", ""]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/mosaic.yaml")
    parser.add_argument("--run-dir", help="run directory holding the trained supernet (trained if missing)")
    parser.add_argument("--supernet", help="a trained supernet checkpoint directory to use as it is")
    parser.add_argument("--random", type=int, default=3, help="random subnets besides the extremes")
    parser.add_argument("--backend", default="ort-static")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=30)
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the report and plot again from the task's saved JSON")
    args = parser.parse_args(argv)
    try:
        recipe_path = resolve_task(args.recipe, "--recipe")
        if args.render:
            from compress.recipe import load_recipe

            name = load_recipe(recipe_path).name
            saved = json.loads((RESULTS / f"int8_granularity_{name}.json").read_text())
    except (CompressError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.render:
        results, env = saved["results"], saved["environment"]
        args.backend, args.rounds, args.per_round = saved["backend"], saved["rounds"], saved["per_round"]
        threads = saved["threads"]
    else:
        loaded, _checkpoint, context = trained_context(str(recipe_path), args.run_dir, args.supernet)
        name, threads, env = loaded.name, loaded.recipe.target.threads, environment()
        results = measure(args, loaded, context)
    out = f"int8_granularity_{name}"
    plot(results, RESULTS / f"{out}.png")
    write_results(out, {"recipe": str(recipe_path), "backend": args.backend, "threads": threads,
                        "rounds": args.rounds, "per_round": args.per_round, "units": results[0]["units"],
                        "results": results, "environment": env},
                  render(results, name, args.backend, threads, args.rounds, args.per_round))
    return 0


def plot(results: list[dict], path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"uniform": "black", "contiguous": "tab:blue", "fragmented": "tab:orange"}
    for i, res in enumerate(results):
        for r in res["rows"]:
            ax.scatter(i + random.Random(r["mask"]).uniform(-0.25, 0.25), r["ratio_vs_best_uniform"],
                       color=colors[r["kind"]], s=12, alpha=0.7)
    for kind, c in colors.items():
        ax.scatter([], [], color=c, label=kind)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(results)), [r["subnet"] for r in results], rotation=30, ha="right")
    ax.set_ylabel("latency / better uniform choice")
    ax.legend()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
