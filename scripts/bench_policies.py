"""Pruning, token merging and distillation, each measured in one run against the candidate without it.

1. Pruning half of the prunable width (ratio 0.5 in every stage) of the largest subnet: parameters and
   latency against the unpruned subnet (bar: <= 0.55x parameters, <= 0.7x latency).
2. Token merging on the most attention-heavy subnet (attention wherever the space allows it, largest
   otherwise): throughput and accuracy for several r, training-free as in ToMe (aim: 1.5x at <= 0.5 points).
3. Recovery after pruning: N steps of distillation from the largest subnet against N steps of plain
   fine-tuning on the labels (same data, same optimizer, same seed).

    python scripts/bench_policies.py [--recipe recipes/mosaic.yaml]
"""

from __future__ import annotations

import argparse
import copy

from benchlib import environment, interleaved_latency, ratio_summary, trained_context, write_results

from compress.deploy import lower
from compress.measure.accuracy import accuracy
from compress.measure.latency import example_input
from compress.policies import DistillPolicy, MergePolicy, PrunePolicy, QuantPolicy
from compress.policies.prune import prune
from compress.policies.tome import apply_merge
from compress.space import Arch
from compress.supernet.subnet import calibrated_subnet
from compress.nn.bn import recalibrate_bn
from compress.policies.finetune import finetune


def attention_heavy(space) -> Arch:
    largest = space.largest()
    stages = []
    for spec, stage in zip(space.stages, largest.stages):
        if "attn" in spec.blocks and stage.block != "attn":
            stage = space.make_stage(spec, "attn", max(spec.depth), max(spec.width), max)
        stages.append(stage)
    return Arch(largest.stem_width, tuple(stages))


def timed(models: dict, context, batch: int, rounds: int) -> dict:
    """Interleaved ONNX Runtime latency of fp32 models (1 thread) at ``batch``."""
    shape = (batch, context.data.in_channels, context.data.image_size, context.data.image_size)
    runners = {name: lower(m, "onnxruntime", QuantPolicy(), [], shape).runner(threads=1) for name, m in models.items()}
    return ratio_summary(interleaved_latency(runners, example_input(shape), rounds=rounds, per_round=30),
                         next(iter(models)))


def vit_scaling(batch: int, rounds: int) -> dict:
    """Where token merging pays: the same merge in a ViT-like model whose compute is all in one attention stage
    of 256 tokens (untrained: throughput only). The spaces shipped here end in 8x8 = 64 tokens."""
    import torch

    from compress.nn import HybridNet

    torch.manual_seed(0)
    blocks = [{"type": "attn", "heads": 3, "head_dim": 32, "mlp_hidden": 384, "merge_r": 0} for _ in range(6)]
    config = {"in_channels": 1, "num_classes": 10, "mean": [0.5], "std": [0.25],
              "stem": {"out": 48, "kernel_size": 3, "stride": 2},
              "stages": [{"type": "attn", "out": 96, "stride": 1, "blocks": blocks}]}
    base = HybridNet(config).eval()
    rs = (0, 8, 16, 24, 32)
    models = {f"r={r}": apply_merge(copy.deepcopy(base), MergePolicy(r)) for r in rs}
    shape = (batch, 1, 32, 32)
    runners = {n: lower(m, "onnxruntime", QuantPolicy(), [], shape).runner(threads=1) for n, m in models.items()}
    lat = ratio_summary(interleaved_latency(runners, example_input(shape), rounds=rounds, per_round=10), "r=0")
    md = [f"ViT-like model, one attention stage of 256 tokens (16x16), 6 blocks of width 96 (untrained: throughput only, "
          f"batch {batch}):", "", "| r per layer | tokens after the last block | latency | speed-up (range over rounds) |", "| --- | --- | --- | --- |"]
    rows = {}
    for r in rs:
        name = f"r={r}"
        left = 256
        for _ in range(6):
            left -= min(r, left // 2)
        rows[name] = {**lat[name], "speedup": 1 / lat[name]["ratio_vs_r=0"], "tokens_left": left}
        md.append(f"| {r} | {left} | {lat[name]['median_ms']:.2f} ms | {rows[name]['speedup']:.2f}x "
                  f"({1 / lat[name]['ratio_max']:.2f}-{1 / lat[name]['ratio_min']:.2f}) |")
    return {"rows": rows, "markdown": "\n".join(md)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/mosaic.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tome-batch", type=int, default=16)
    parser.add_argument("--recovery-steps", type=int, default=150)
    args = parser.parse_args()
    loaded, checkpoint, context = trained_context(args.recipe, args.run_dir)
    space, data, seed = loaded.space, context.data, loaded.recipe.seed
    supernet, bn = checkpoint.supernet, context.bn_batches
    md = [f"## Policies on `{loaded.name}` ({data.source})", ""]
    payload: dict = {"recipe": args.recipe, "environment": environment()}

    # 1. Pruning ------------------------------------------------------------------------------------------
    base = calibrated_subnet(supernet, space.largest(), bn)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    pruned = {}
    for importance in ("magnitude", "taylor"):
        m = copy.deepcopy(base)
        prune(m, PrunePolicy(tuple(0.5 for _ in space.stages), importance), *context.labeled_batch)
        pruned[importance] = recalibrate_bn(m, bn)
    lat = timed({"unpruned": base, **{f"pruned ({k})": v for k, v in pruned.items()}}, context, 1, args.rounds)
    md += ["### Pruning half of the prunable width (ratio 0.5 in every stage) of the largest subnet", "",
           "| model | parameters | ratio | latency b=1 | ratio | val acc (no recovery) |", "| --- | --- | --- | --- | --- | --- |"]
    from compress.measure.accuracy import predict_logits

    disagree = (predict_logits(pruned["magnitude"], data.val).argmax(1)
                != predict_logits(pruned["taylor"], data.val).argmax(1)).float().mean().item()
    rows = {"unpruned": base, **{f"pruned ({k})": v for k, v in pruned.items()}}
    payload["pruning"] = {}
    for name, m in rows.items():
        acc = accuracy(m, data.val)
        payload["pruning"][name] = {"params": count(m), "param_ratio": count(m) / count(base), **lat[name],
                                    "accuracy": acc}
        md.append(f"| {name} | {count(m):,} | {count(m) / count(base):.2f}x | {lat[name]['median_ms']:.3f} ms | "
                  f"{lat[name]['ratio_vs_unpruned']:.2f}x | {100 * acc:.2f}% |")
    md += ["", f"The two criteria keep different channels: their pruned models disagree on {100 * disagree:.0f}% of the "
           "val images (equal accuracies above would be a coincidence).", "",
           "Bar (issue 4): <= 0.55x parameters and <= 0.7x latency.", ""]
    payload["pruning"]["prediction_disagreement_magnitude_vs_taylor"] = disagree

    aug = loaded.recipe.data.augment
    teacher = calibrated_subnet(supernet, space.largest(), bn)
    policy = DistillPolicy(steps=args.recovery_steps, temperature=4.0, weight=0.9, lr=1e-3, batch_size=64)

    def recovered(model, with_teacher: bool = True) -> float:
        """Val accuracy after ``policy.steps`` steps of fine-tuning (distilled from the largest subnet, or on
        the labels only), as build_candidate's recovery step does."""
        m = copy.deepcopy(model)
        finetune(m, data.train, steps=policy.steps, lr=policy.lr, batch_size=policy.batch_size, seed=seed,
                 teacher=teacher if with_teacher else None, policy=policy if with_teacher else None,
                 crop_padding=aug.crop_padding, hflip=aug.hflip)
        return accuracy(recalibrate_bn(m, bn), data.val)

    # 2. Token merging ------------------------------------------------------------------------------------
    heavy_arch = attention_heavy(space)
    heavy = calibrated_subnet(supernet, heavy_arch, bn)
    tokens = (data.image_size // (space.stem.stride * 2 ** sum(s.stride == 2 for s in space.stages))) ** 2
    rs = [r for r in (0, 4, 8, 16, 24, 32) if r <= tokens // 2]
    merged = {f"r={r}": apply_merge(copy.deepcopy(heavy), MergePolicy(r)) for r in rs}
    lat = timed(merged, context, args.tome_batch, args.rounds)
    base_acc = accuracy(merged["r=0"], data.val)
    md += [f"### Token merging on the most attention-heavy subnet (`{heavy_arch.describe()}`, {tokens} tokens "
           f"in the last stage), training-free", "",
           f"| r per layer | latency b={args.tome_batch} | throughput (images/s) | speed-up (range over rounds) | val acc "
           "| drop (pt) |", "| --- | --- | --- | --- | --- | --- |"]
    payload["token_merging"] = {"arch": heavy_arch.describe(), "tokens": tokens, "batch": args.tome_batch, "rows": {}}
    for name, m in merged.items():
        acc = accuracy(m, data.val)
        speed = 1 / lat[name]["ratio_vs_r=0"]
        payload["token_merging"]["rows"][name] = {**lat[name], "speedup": speed, "accuracy": acc}
        md.append(f"| {name[2:]} | {lat[name]['median_ms']:.3f} ms | {1000 * args.tome_batch / lat[name]['median_ms']:.0f} "
                  f"| {speed:.2f}x ({1 / lat[name]['ratio_max']:.2f}-{1 / lat[name]['ratio_min']:.2f}) | {100 * acc:.2f}% | "
                  f"{100 * (base_acc - acc):+.2f} |")
    lossy = [name for name in merged if 100 * (base_acc - payload["token_merging"]["rows"][name]["accuracy"]) > 0.5]
    if lossy:
        md += ["", f"With recovery: the merged models that lost more than 0.5 points, after {policy.steps} steps of "
               "distillation from the largest subnet with merging active (the search's recovery policy; the unmerged "
               "subnet gets the same steps, so the drop compares like with like):", "",
               "| r per layer | speed-up | val acc after recovery | drop vs unmerged after the same recovery (pt) |",
               "| --- | --- | --- | --- |"]
        base_recovered = recovered(merged["r=0"])
        payload["token_merging"]["recovered"] = {"r=0": base_recovered}
        for name in lossy:
            acc = recovered(merged[name])
            payload["token_merging"]["recovered"][name] = acc
            md.append(f"| {name[2:]} | {payload['token_merging']['rows'][name]['speedup']:.2f}x | {100 * acc:.2f}% | "
                      f"{100 * (base_recovered - acc):+.2f} |")
        md.append(f"| 0 (reference) | 1.00x | {100 * base_recovered:.2f}% | |")
    md += ["", "Aim (issue 4): 1.5x throughput at <= 0.5 points. Only the last stage merges (merged tokens no longer "
           "form a grid for the stages after them).", ""]
    vit = vit_scaling(args.tome_batch, args.rounds)
    payload["token_merging"]["vit_scaling"] = vit["rows"]
    md += [vit["markdown"], ""]

    # 3. Recovery distillation ----------------------------------------------------------------------------
    start = pruned["magnitude"]
    results = {"pruned, no recovery": accuracy(start, data.val),
               "fine-tuned on labels": recovered(start, with_teacher=False),
               "distilled from largest": recovered(start)}
    payload["recovery"] = {"steps": policy.steps, "accuracy": results}
    md += [f"### Recovery after pruning (magnitude, 0.5): {policy.steps} steps, batch {policy.batch_size}, AdamW "
           f"lr {policy.lr:g}", "", "| recovery | val acc |", "| --- | --- |"]
    md += [f"| {name} | {100 * acc:.2f}% |" for name, acc in results.items()]
    md += ["", f"Distillation: T = {policy.temperature:g}, weight {policy.weight:g} on the teacher's soft labels "
           "(largest subnet of the supernet).", ""]
    write_results("policies", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
