"""How well does the supernet rank architectures? Inherited-weight accuracy against stand-alone training.

Takes architectures spread over the space (by MACs, from the smallest to the largest, both block families),
measures each one's val accuracy with weights inherited from the supernet (BatchNorm recalibrated), trains each
from scratch with the supernet's own budget (same epochs, batch size, learning rate, schedule, augmentation),
and reports the Spearman and Kendall rank correlations between the two (BossNAS reports Spearman 0.78 and
0.76; the target here is above 0.8).

    python scripts/bench_supernet_ranking.py [--recipe recipes/mosaic.yaml] [--archs 10]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from benchlib import environment, trained_context, write_results

from compress.measure.accuracy import accuracy
from compress.measure.macs import count_macs
from compress.nn import build_model
from compress.search.ranking import kendall_tau, spearman
from compress.supernet import extract_subnet, subnet_config
from compress.supernet.subnet import calibrated_subnet
from compress.train.finetune import finetune


def spread_architectures(space, supernet, n: int, shape, seed: int = 0):
    """``n`` architectures at evenly spaced MAC quantiles of 400 random ones, plus the extremes."""
    rng = random.Random(seed)
    pool = [space.sample(rng) for _ in range(400)]
    example = torch.rand(shape)
    scored = sorted(((count_macs(extract_subnet(supernet, a), example), a) for a in pool), key=lambda t: t[0])
    chosen = [space.smallest(), space.largest()]
    for k in range(n - 2):
        chosen.append(scored[int((k + 0.5) * len(scored) / (n - 2))][1])
    unique = {a.key(): a for a in chosen}
    return list(unique.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/mosaic.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--archs", type=int, default=10)
    args = parser.parse_args()

    loaded, checkpoint, context = trained_context(args.recipe, args.run_dir)
    recipe, cfg, data = loaded.recipe, loaded.recipe.supernet, context.data
    shape = (1, data.in_channels, data.image_size, data.image_size)
    archs = spread_architectures(loaded.space, checkpoint.supernet, args.archs, shape, seed=recipe.seed)
    steps = cfg.epochs * (len(data.train) // cfg.batch_size)
    rows = []
    for i, arch in enumerate(archs):
        inherited = accuracy(calibrated_subnet(checkpoint.supernet, arch, context.bn_batches), data.val)
        torch.manual_seed(recipe.seed)
        model = build_model(subnet_config(checkpoint.supernet, arch))  # fresh initialization
        started = time.time()
        finetune(model, data.train, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=recipe.seed,
                 weight_decay=cfg.weight_decay, crop_padding=recipe.data.augment.crop_padding,
                 hflip=recipe.data.augment.hflip, label_smoothing=cfg.label_smoothing,
                 warmup_fraction=cfg.warmup_fraction)
        standalone = accuracy(model, data.val)
        macs = count_macs(model, torch.rand(shape))
        rows.append({"arch": arch.describe(), "macs": macs, "inherited": inherited, "standalone": standalone,
                     "train_seconds": round(time.time() - started, 1)})
        print(f"[{i + 1}/{len(archs)}] {arch.describe()}: inherited {inherited:.4f} stand-alone {standalone:.4f} "
              f"({time.time() - started:.0f}s)", flush=True)

    inherited = [r["inherited"] for r in rows]
    standalone = [r["standalone"] for r in rows]
    rho, tau = spearman(inherited, standalone), kendall_tau(inherited, standalone)
    md = [f"## Supernet ranking on `{loaded.name}` ({len(rows)} architectures, {cfg.epochs} epochs each)", "",
          "| architecture | MACs | inherited val acc | stand-alone val acc |", "| --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["macs"]):
        md.append(f"| `{r['arch']}` | {r['macs'] / 1e6:.2f} M | {100 * r['inherited']:.2f}% | "
                  f"{100 * r['standalone']:.2f}% |")
    md += ["", f"Spearman rho = {rho:.3f}, Kendall tau = {tau:.3f} (BossNAS: Spearman 0.78 / 0.76; target > 0.8).",
           f"Stand-alone training: {steps} steps per architecture (= {cfg.epochs} epochs at batch {cfg.batch_size}, "
           "the supernet's budget), same optimizer, schedule and augmentation, no distillation.", ""]
    write_results("supernet_ranking", {"recipe": args.recipe, "rows": rows, "spearman": rho, "kendall": tau,
                                       "steps": steps, "environment": environment()}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
