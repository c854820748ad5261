"""What a larger ``supernet.bn_calibration_batches`` costs a trial: the seconds to recalibrate a subnet's
BatchNorm on N batches of 64 (what every trial does before it measures anything) against the seconds to
measure its val accuracy, for the space's smallest and largest subnet, and the memory the batches hold.

The ranking benchmark measured that more calibration images rank better (README, "How well the supernet
ranks"); this is the other side of that trade. Rounds alternate between the batch counts, so load on the
machine falls on all of them alike; medians are reported.

    python scripts/bench_bn_calibration.py --task data/photo-patches-large \\
        --supernet bench_results/checkpoints/photos-large --batches 10,40,160
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchlib import environment, resolve_task, trained_context, write_results

from compress.data.loaders import BN_BATCH_SIZE, reference_batches
from compress.measure.accuracy import accuracy
from compress.supernet.subnet import calibrated_subnet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="data/photo-patches-large", help="recipe name, file, or folder")
    parser.add_argument("--supernet", default=None, help="a trained supernet's directory (default: train the recipe's)")
    parser.add_argument("--batches", default="10,40,160", help="comma-separated batch counts")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.batches.split(",")]
    torch.set_num_threads(1)  # as a search worker runs (target.threads is about latency, not this)

    loaded, _, context = trained_context(str(resolve_task(args.task)), supernet=args.supernet)
    supernet, data, seed = context.supernet, context.data, loaded.recipe.seed
    batches = {n: reference_batches(data.train, seed, bn=n).bn for n in counts}  # the images a trial draws
    archs = {"smallest": supernet.space.smallest(), "largest": supernet.space.largest()}
    calib = {(name, n): [] for name in archs for n in counts}
    evaluate = {name: [] for name in archs}
    for _ in range(args.rounds):
        for name, arch in archs.items():
            for n in counts:
                start = time.perf_counter()
                model = calibrated_subnet(supernet, arch, batches[n])
                calib[name, n].append(time.perf_counter() - start)
            start = time.perf_counter()  # the last count's model: evaluation costs the same whichever
            accuracy(model, data.val, batch_size=context.eval_batch_size)
            evaluate[name].append(time.perf_counter() - start)

    rows, payload = [], {"task": loaded.recipe.name, "val_images": len(data.val), "rounds": args.rounds,
                         "image_size": list(data.train.images.shape[1:]), "results": [], "environment": environment()}
    for name in archs:
        val_s = statistics.median(evaluate[name])
        for n in counts:
            seconds = statistics.median(calib[name, n])
            megabytes = sum(b.numel() * b.element_size() for b in batches[n]) / 2**20
            payload["results"].append({"subnet": name, "batches": n, "calibration_s": seconds, "val_s": val_s,
                                       "batch_mb": megabytes})
            rows.append(f"| {name} | {n} | {n * BN_BATCH_SIZE} | {seconds:.2f} s | {seconds / val_s:.2f}x | {megabytes:.0f} MB |")
    markdown = "\n".join([
        f"## BatchNorm calibration cost on `{loaded.recipe.name}` ({len(data.val)} val images, one thread)", "",
        f"Median of {args.rounds} rounds; the ratio is against measuring the subnet's val accuracy "
        f"(smallest {statistics.median(evaluate['smallest']):.2f} s, largest {statistics.median(evaluate['largest']):.2f} s).", "",
        "| subnet | batches | images | calibration | against val accuracy | memory held |",
        "| --- | --- | --- | --- | --- | --- |", *rows, ""])
    write_results(f"bn_calibration_{loaded.recipe.name}", payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
