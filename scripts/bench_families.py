"""Block families against each other, trained alone on the same task and deployed the same way.

For each family of the attention stages (``attn``: plain softmax attention; ``gated_attn``: "Quantizable
Transformers"' gated attention; ``linear_attn``: EfficientViT's ReLU linear attention), the same architecture (a convolution stage, then two stages of that family) is trained
from scratch with the same budget and seeds on the mosaic task, then exported fp32 and fully INT8
(``ort-static``) and measured in one run: val accuracy of both, the INT8 drop, activation outliers of the
attention stages' residual stream (the largest |value| and the mean kurtosis over channels, the paper's two
measures), and the latency of all four models timed in alternating rounds (ONNX Runtime, 1 thread, batch 1).

    python scripts/bench_families.py [--recipe recipes/mosaic.yaml] [--steps 1500] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchlib import environment, interleaved_latency, ratio_summary, write_results

from compress.deploy import lower
from compress.measure.accuracy import accuracy
from compress.nn import build_model
from compress.policies.quantize import REDUCE_RANGE, QuantPolicy, model_units
from compress.recipe import load_recipe
from compress.space import SearchSpace
from compress.supernet import HybridSupernet, subnet_config
from compress.policies.finetune import finetune

FAMILIES = ("attn", "gated_attn", "linear_attn")


def space_for(family: str) -> SearchSpace:
    attn = {"heads": [4], "head_dim": 16, "mlp_ratio": [2]}
    return SearchSpace.from_dict({
        "name": f"bench-{family}",
        "stem": {"width": [16], "kernel_size": 3, "stride": 2},
        "stages": [
            {"blocks": ["conv"], "stride": 1, "depth": [2], "width": [24],
             "conv": {"kernel_size": [3], "expand_ratio": [3]}},
            {"blocks": [family], "stride": 2, "depth": [2], "width": [48], family: attn},
            {"blocks": [family], "stride": 1, "depth": [2], "width": [64], family: attn},
        ]}, f"bench-{family}")


def outliers(model, images: torch.Tensor) -> dict[str, float]:
    """Largest |activation| and mean kurtosis over channels of the attention blocks' outputs."""
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o[0].detach()))
             for stage in model.stages[1:] for b in stage.blocks]
    with torch.no_grad():
        model.eval()(images)
    for h in hooks:
        h.remove()
    inf_norm = max(t.abs().max().item() for t in captured)
    kurt = []
    for t in captured:
        flat = t.reshape(-1, t.shape[-1])
        z = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-8)
        kurt.append((z ** 4).mean(0).mean().item())
    return {"max_abs": inf_norm, "kurtosis": statistics.fmean(kurt)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/mosaic.yaml")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    loaded = load_recipe(args.recipe)
    recipe, data = loaded.recipe, loaded.load_data()
    cfg = recipe.supernet
    shape = (1, data.in_channels, data.image_size, data.image_size)
    gen = torch.Generator().manual_seed(0)
    pick = lambda n: torch.randperm(len(data.train), generator=gen)[:n]  # noqa: E731
    calibration = [data.train.images[pick(64)].float() / 255 for _ in range(8)]
    probe = data.val.images[:256].float() / 255

    rows, deployed = [], {}
    for family in FAMILIES:
        space = space_for(family)
        config = subnet_config(HybridSupernet(space, data.in_channels, data.num_classes, data.mean, data.std),
                               space.largest())
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_model(config)
            started = time.time()
            finetune(model, data.train, steps=args.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                     weight_decay=cfg.weight_decay, crop_padding=recipe.data.augment.crop_padding,
                     hflip=recipe.data.augment.hflip, label_smoothing=cfg.label_smoothing,
                     warmup_fraction=cfg.warmup_fraction)
            seconds = time.time() - started
            fp32 = lower(model, "onnxruntime", QuantPolicy(), calibration, shape)
            int8 = lower(model, "onnxruntime", QuantPolicy("ort-static", tuple(model_units(model))), calibration, shape)
            acc_fp32, acc_int8 = accuracy(fp32.runner(), data.val), accuracy(int8.runner(), data.val)
            row = {"family": family, "seed": seed, "fp32": acc_fp32, "int8": acc_int8, "drop": acc_fp32 - acc_int8,
                   "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 1),
                   "int8_bytes": len(int8.deployed_bytes()), "fp32_bytes": len(fp32.deployed_bytes()),
                   **outliers(model, probe)}
            rows.append(row)
            deployed[f"{family}-s{seed}-fp32"], deployed[f"{family}-s{seed}-int8"] = fp32, int8
            print(f"{family} seed {seed}: fp32 {acc_fp32:.4f} int8 {acc_int8:.4f} max|x| {row['max_abs']:.1f} "
                  f"kurtosis {row['kurtosis']:.1f} ({seconds:.0f}s)", flush=True)

    seed0 = args.seeds[0]
    runners = {f"{f}-{k}": deployed[f"{f}-s{seed0}-{k}"].runner(threads=1) for f in FAMILIES for k in ("fp32", "int8")}
    timing = ratio_summary(interleaved_latency(runners, torch.rand(shape)), "attn-fp32")

    md = [f"## Block families on `{loaded.name}`: softmax, gated and linear attention", "",
          f"Architecture: `{space_for('attn').largest().describe()}` (and the same with the other families), trained "
          f"alone for {args.steps} steps at batch {cfg.batch_size} (seeds {args.seeds}); INT8: `ort-static`, every "
          f"unit{' (7-bit weights: this CPU has no VNNI)' if REDUCE_RANGE else ''}.", "",
          "| family | seed | val fp32 | val INT8 | INT8 drop (pt) | max abs activation | kurtosis | params |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| `{r['family']}` | {r['seed']} | {100 * r['fp32']:.2f}% | {100 * r['int8']:.2f}% | "
                  f"{100 * r['drop']:+.2f} | {r['max_abs']:.1f} | {r['kurtosis']:.1f} | {r['params']:,} |")
    md += ["", "Latency, seed " + str(seed0) + "'s models timed in alternating rounds (median of per-round ratios "
           "against softmax attention in fp32):", "", "| model | median ms | ratio | ratio range |", "| --- | --- | --- | --- |"]
    for name, t in timing.items():
        md.append(f"| {name} | {t['median_ms']:.3f} | {t['ratio_vs_attn-fp32']:.2f}x | "
                  f"{t['ratio_min']:.2f}-{t['ratio_max']:.2f}x |")
    for family in FAMILIES:
        drops = [r["drop"] for r in rows if r["family"] == family]
        md.append(f"\nMean INT8 drop, `{family}`: {100 * statistics.fmean(drops):+.2f} points over {len(drops)} seeds.")
    write_results("families", {"recipe": args.recipe, "steps": args.steps, "seeds": args.seeds, "rows": rows,
                               "latency": timing, "reduce_range": REDUCE_RANGE, "environment": environment()},
                  "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
