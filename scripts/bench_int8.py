"""Does INT8 pay? The largest subnet in fp32 against fully INT8, measured in one run on the CPU runtime.

For each ONNX Runtime backend: accuracy on the val split (same data, same model), size of the deployed file,
and latency timed interleaved with the fp32 model, round by round, at each batch size (1 thread, as the
recipe's target). The bar (issue 3): INT8 size <= 0.3x fp32, latency <= 0.6x, accuracy drop <= 0.5 points.

Besides the two backends compress offers, and to show why they stop where they do:

- "every op INT8": ORT's static quantizer left free to quantize every op it can (depthwise convolutions,
  residual adds, softmax, attention products too), in its compact QOperator format: the smallest file, and
  what it costs in latency;
- where the time goes: ONNX Runtime's own profile of fp32 and ort-static, summed by op type;
- with torchao installed, PT2E static INT8 (X86InductorQuantizer) under ``torch.compile`` against compiled
  fp32: the PyTorch path that is supposed to pay on x86.

    python scripts/bench_int8.py [--recipe recipes/quickstart.yaml] [--batch-sizes 1,8,32]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

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
    deployables = {name: c.deployable for name, c in built.items()}
    deployables["every op INT8 (QOperator)"] = every_op_int8(built["fp32"].deployable, context.calibration)
    acc = {name: accuracy(d.runner(threads=2), context.data.val) for name, d in deployables.items()}
    test_acc = {name: accuracy(d.runner(threads=2), context.data.test) for name, d in deployables.items()}
    size = {name: len(d.deployed_bytes()) for name, d in deployables.items()}

    batches = [int(b) for b in args.batch_sizes.split(",")]
    timing = {}
    for batch in batches:
        runners = {name: d.runner(threads=loaded.recipe.target.threads) for name, d in deployables.items()}
        shape = (batch, context.data.in_channels, context.data.image_size, context.data.image_size)
        medians = interleaved_latency(runners, example_input(shape), rounds=args.rounds, per_round=args.per_round)
        timing[batch] = ratio_summary(medians, "fp32")

    rows = []
    verdicts = {}
    for name in deployables:
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
           f"{args.per_round} runs, the models timed in turn within each round; ratios are medians of "
           "per-round ratios.", "", "Bar (issue 3): size <= 0.3x, latency <= 0.6x, accuracy drop <= 0.5 points.", ""]
    for name, checks in verdicts.items():
        md.append(f"- {name}: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    profile = op_profile({n: deployables[n] for n in ("fp32", "int8 ort-static", "every op INT8 (QOperator)")}, context,
                         max(batches))
    md += ["", profile["markdown"]]
    pt2e = pt2e_section(built["fp32"].model, context, batches, args.rounds)
    if pt2e:
        md += ["", pt2e["markdown"]]
    wide = wide_model_section(args.wide_space, args.rounds) if args.wide_space else None
    if wide:
        md += ["", wide["markdown"]]
    write_results("int8", {"recipe": args.recipe, "accuracy": acc, "test_accuracy": test_acc, "size_bytes": size,
                           "timing": {str(b): t for b, t in timing.items()}, "verdicts": verdicts,
                           "op_profile_ms": profile["ms"], "pt2e": {k: v for k, v in (pt2e or {}).items() if k != "markdown"},
                           "wide": {k: v for k, v in (wide or {}).items() if k != "markdown"},
                           "environment": environment()}, "\n".join(md) + "\n")


def every_op_int8(fp32, calibration):
    """The fp32 deployable's graph with every op ONNX Runtime can quantize in INT8 (QOperator format)."""
    import dataclasses

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from compress.policies.quantize import compact_names

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{fp32.onnx_model.graph.input[0].name: b.numpy()} for b in calibration])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32.onnx_model, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dataclasses.replace(fp32, onnx_model=compact_names(onnx.load(dst)))


def op_profile(deployables: dict, context, batch: int, runs: int = 50) -> dict:
    """ONNX Runtime's profile of each model at ``batch``, kernel time per run summed by op type."""
    import numpy as np
    import onnxruntime as ort

    shape = (batch, context.data.in_channels, context.data.image_size, context.data.image_size)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ms: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in deployables.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
            options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
            session = ort.InferenceSession(d.onnx_bytes(), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x}
            for _ in range(runs):
                session.run(None, feed)
            per_op = collections.Counter()
            for event in json.loads(Path(session.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"] / runs / 1e3
            ms[name] = dict(per_op.most_common())
    names = list(ms)
    ops = sorted({op for m in ms.values() for op in m}, key=lambda op: -max(m.get(op, 0) for m in ms.values()))
    md = [f"### Where the time goes (ONNX Runtime profile, batch {batch}, 1 thread, kernel ms per run by op type)", "",
          "| op | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    md += [f"| {op} | " + " | ".join(f"{ms[n].get(op, 0):.3f}" for n in names) + " |" for op in ops[:16]]
    md.append("| **all ops** | " + " | ".join(f"**{sum(ms[n].values()):.3f}**" for n in names) + " |")
    return {"ms": ms, "markdown": "\n".join(md)}


def pt2e_section(model, context, batches: list[int], rounds: int) -> dict | None:
    """PT2E static INT8 (X86InductorQuantizer) and fp32, both under torch.compile, if torchao is installed."""
    try:
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        return None
    from compress.nn.fold import fold_batchnorm
    import copy

    float_model = fold_batchnorm(copy.deepcopy(model).eval())
    rows = {}
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in batches:
            x = example_input((batch, context.data.in_channels, context.data.image_size, context.data.image_size))
            with torch.no_grad():
                started = time.perf_counter()
                compiled_fp32 = torch.compile(copy.deepcopy(float_model))
                compiled_fp32(x)
                fp32_compile_s = time.perf_counter() - started
                started = time.perf_counter()
                quantizer = xiq.X86InductorQuantizer()
                quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
                prepared = prepare_pt2e(torch.export.export(copy.deepcopy(float_model), (x,)).module(), quantizer)
                for b in context.calibration:  # the exported program has a fixed batch size
                    for chunk in b.split(batch):
                        if len(chunk) == batch:
                            prepared(chunk)
                compiled_int8 = torch.compile(convert_pt2e(prepared))
                compiled_int8(x)
                int8_compile_s = time.perf_counter() - started
                models = {"eager fp32": float_model, "compiled fp32": compiled_fp32, "compiled PT2E INT8": compiled_int8}
                for m in models.values():
                    for _ in range(10):
                        m(x)
                medians = {n: [] for n in models}
                for _ in range(rounds):
                    for n, m in models.items():
                        times = []
                        for _ in range(max(5, 200 // batch)):
                            started = time.perf_counter()
                            m(x)
                            times.append((time.perf_counter() - started) * 1e3)
                        medians[n].append(statistics.median(times))
            summary = ratio_summary(medians, "compiled fp32")
            rows[batch] = {"timing": summary, "compile_seconds": {"fp32": fp32_compile_s, "int8": int8_compile_s}}
    finally:
        torch.set_num_threads(saved)
    md = ["### PyTorch: PT2E static INT8 (X86InductorQuantizer) under torch.compile, 1 thread", "",
          "| batch | eager fp32 | compiled fp32 | compiled PT2E INT8 | INT8 vs compiled fp32 | compile time fp32 / INT8 |",
          "| --- | --- | --- | --- | --- | --- |"]
    for batch, r in rows.items():
        t = r["timing"]
        md.append(f"| {batch} | {t['eager fp32']['median_ms']:.3f} ms | {t['compiled fp32']['median_ms']:.3f} ms | "
                  f"{t['compiled PT2E INT8']['median_ms']:.3f} ms | {t['compiled PT2E INT8']['ratio_vs_compiled fp32']:.2f}x | "
                  f"{r['compile_seconds']['fp32']:.0f} s / {r['compile_seconds']['int8']:.0f} s |")
    return {"rows": {str(b): r for b, r in rows.items()}, "markdown": "\n".join(md)}


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
