"""Does INT8 pay? The largest subnet in fp32 against fully INT8, measured in one run on the CPU runtime.

For each ONNX Runtime backend: accuracy on the val split (same data, same model), size of the deployed file,
and latency timed interleaved with the fp32 model, round by round, at each batch size (1 thread, as the
recipe's target). The bar (issue 3): INT8 size <= 0.3x fp32, latency <= 0.6x, accuracy drop <= 0.5 points.

    python scripts/bench_int8.py [--recipe recipes/quickstart.yaml] [--batch-sizes 1,8,32]
"""

from __future__ import annotations

import argparse

from benchlib import environment, interleaved_latency, ratio_summary, trained_context, write_results

from compress.measure.accuracy import accuracy
from compress.measure.latency import example_input
from compress.policies import Policies, QuantPolicy
from compress.search.candidate import CandidateSpec, build_candidate
from compress.search.suggest import space_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--wide-space", default="search_spaces/cifar_hybrid.yaml",
                        help="also time the largest subnet of this space (untrained: latency and size only)")
    args = parser.parse_args()

    loaded, checkpoint, context = trained_context(args.recipe, args.run_dir)
    space = loaded.space
    units = tuple(space_units(space))
    variants = {"fp32": QuantPolicy()}
    for backend in ("ort-static", "ort-dynamic"):
        variants[f"int8 {backend}"] = QuantPolicy(backend, units)
    built = {name: build_candidate(context, CandidateSpec(space.largest(), Policies(quant=q), seed=loaded.recipe.seed))
             for name, q in variants.items()}
    acc = {name: accuracy(c.deployable.runner(threads=2), context.data.val) for name, c in built.items()}
    test_acc = {name: accuracy(c.deployable.runner(threads=2), context.data.test) for name, c in built.items()}
    size = {name: len(c.deployable.deployed_bytes()) for name, c in built.items()}

    batches = [int(b) for b in args.batch_sizes.split(",")]
    timing = {}
    for batch in batches:
        runners = {name: c.deployable.runner(threads=loaded.recipe.target.threads) for name, c in built.items()}
        shape = (batch, context.data.in_channels, context.data.image_size, context.data.image_size)
        medians = interleaved_latency(runners, example_input(shape), rounds=args.rounds, per_round=args.per_round)
        timing[batch] = ratio_summary(medians, "fp32")

    rows = []
    verdicts = {}
    for name in built:
        size_ratio = size[name] / size["fp32"]
        drop = 100 * (acc["fp32"] - acc[name])
        lat = {b: timing[b][name]["ratio_vs_fp32"] for b in batches}
        if name != "fp32":
            verdicts[name] = {
                "size <= 0.3x": size_ratio <= 0.3,
                "accuracy drop <= 0.5 pt": drop <= 0.5,
                **{f"latency <= 0.6x at batch {b}": lat[b] <= 0.6 for b in batches},
            }
        rows.append((name, acc[name], test_acc[name], drop, size[name], size_ratio, lat,
                     {b: timing[b][name]["median_ms"] for b in batches}))

    md = [f"## INT8 vs fp32, largest subnet of `{space.name}` ({loaded.recipe.data.source}, "
          f"{sum(p.numel() for p in built['fp32'].model.parameters()):,} parameters)", "",
          "| model | val acc | test acc | drop (pt) | size | size ratio | "
          + " | ".join(f"latency b={b} (ratio)" for b in batches) + " |",
          "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in batches) + " |"]
    for name, a, ta, drop, sz, sr, lat, ms in rows:
        md.append(f"| {name} | {100 * a:.2f}% | {100 * ta:.2f}% | {drop:+.2f} | {sz / 1e3:.0f} KB | {sr:.2f}x | "
                  + " | ".join(f"{ms[b]:.3f} ms ({lat[b]:.2f}x)" for b in batches) + " |")
    md += ["", f"Latency: ONNX Runtime, {loaded.recipe.target.threads} thread, medians of {args.rounds} rounds of "
           f"{args.per_round} runs, the three models timed in turn within each round; ratios are medians of "
           "per-round ratios.", "", "Bar (issue 3): size <= 0.3x, latency <= 0.6x, accuracy drop <= 0.5 points.", ""]
    for name, checks in verdicts.items():
        md.append(f"- {name}: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    wide = wide_model_section(args.wide_space, args.rounds) if args.wide_space else None
    if wide:
        md += ["", wide["markdown"]]
    write_results("int8", {"recipe": args.recipe, "accuracy": acc, "test_accuracy": test_acc, "size_bytes": size,
                           "timing": {str(b): t for b, t in timing.items()}, "verdicts": verdicts,
                           "wide": {k: v for k, v in (wide or {}).items() if k != "markdown"},
                           "environment": environment()}, "\n".join(md) + "\n")


def wide_model_section(space_path: str, rounds: int) -> dict:
    """The same backends on a much wider model: does INT8 pay at scale? Untrained (random weights), so
    only latency and size are meaningful; calibration uses random images."""
    import torch

    from compress.deploy import lower
    from compress.policies.quantize import model_units
    from compress.space import SearchSpace
    from compress.supernet import HybridSupernet, extract_subnet

    torch.manual_seed(0)
    space = SearchSpace.from_yaml(space_path)
    model = extract_subnet(HybridSupernet(space, 3, 10, [0.5] * 3, [0.25] * 3), space.largest()).eval()
    shape = (1, 3, 32, 32)
    calibration = [torch.rand(8, *shape[1:]) for _ in range(4)]
    policies = {"fp32": QuantPolicy(), "int8 ort-static": QuantPolicy("ort-static", tuple(model_units(model))),
                "int8 ort-dynamic": QuantPolicy("ort-dynamic", tuple(model_units(model)))}
    lowered = {name: lower(model, "onnxruntime", p, calibration, shape) for name, p in policies.items()}
    timing = ratio_summary(interleaved_latency({n: d.runner(threads=1) for n, d in lowered.items()},
                                               example_input(shape), rounds=rounds, per_round=10), "fp32")
    size = {n: len(d.deployed_bytes()) for n, d in lowered.items()}
    params = sum(p.numel() for p in model.parameters())
    md = [f"### The same backends on the largest subnet of `{space.name}` ({params / 1e6:.1f} M parameters, "
          "untrained: latency and size only)", "", "| model | size | size ratio | latency b=1 | ratio |",
          "| --- | --- | --- | --- | --- |"]
    for n in lowered:
        md.append(f"| {n} | {size[n] / 1e6:.2f} MB | {size[n] / size['fp32']:.2f}x | {timing[n]['median_ms']:.2f} ms | "
                  f"{timing[n]['ratio_vs_fp32']:.2f}x |")
    return {"space": space.name, "params": params, "size_bytes": size, "timing": timing, "markdown": "\n".join(md)}


if __name__ == "__main__":
    main()
