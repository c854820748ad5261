"""A quick check, on the user's own data, of whether the supernet's inherited accuracy ranks architectures.

`compress train-supernet RECIPE --check-ranking N` ends with this: N architectures spread over the space
(by MACs, and over which block family the last stage uses), each scored twice: with weights inherited from
the supernet (BatchNorm recalibrated, as the search scores them) and trained alone from scratch for a short
budget. The rank correlation between the two says whether to trust the search on this data before spending
hours on it. With a short budget the stand-alone scores are themselves rough, so the check is a smoke alarm,
not the benchmark (``scripts/bench_supernet_ranking.py`` is that).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import torch

from compress.data.base import DatasetSplits
from compress.data.loaders import reference_batches
from compress.measure.accuracy import accuracy
from compress.measure.macs import count_macs
from compress.nn import build_model
from compress.policies.finetune import finetune
from compress.search.ranking import kendall_tau, spearman
from compress.space import Arch
from compress.supernet import HybridSupernet, extract_subnet, subnet_config
from compress.supernet.subnet import calibrated_subnet

logger = logging.getLogger(__name__)

POOL = 200  # random architectures the spread is chosen from


@dataclass
class RankingCheck:
    rows: list[dict] = field(default_factory=list)
    spearman: float = 0.0
    kendall: float = 0.0
    steps: int = 0

    def verdict(self) -> str:
        if self.spearman >= 0.8:
            return "ranks well: trust the search's accuracy ordering"
        # The advice follows what was measured (README, "How well the supernet ranks"): of the training options
        # only gradient projection improved the ranking; few-shot, alpha-divergence and regrouped heads made
        # better supernets that ranked worse, and short recovery distillation did not fix it either.
        if self.spearman >= 0.5:
            return ("ranks roughly: read the front as a shortlist and fine-tune its architectures "
                    "(`compress distill`) before choosing")
        return ("ranks poorly: inherited accuracy mostly follows size here; train with "
                "supernet.gradient_projection: true and more epochs, and read the front as a shortlist to "
                "fine-tune (`compress distill`)")


def spread_architectures(supernet: HybridSupernet, n: int, example: torch.Tensor, seed: int) -> list[Arch]:
    """``n`` distinct architectures: the smallest and the largest, then, for each family of the last stage,
    evenly spaced MAC quantiles of that family's share of a random pool (so each family spans small to large)."""
    space = supernet.space
    rng = random.Random(seed)
    pool = [space.sample(rng) for _ in range(POOL)]
    by_family: dict[str, list[Arch]] = {}
    for arch in sorted(pool, key=lambda a: count_macs(extract_subnet(supernet, a), example)):
        by_family.setdefault(arch.stages[-1].block, []).append(arch)
    chosen = {a.key(): a for a in (space.smallest(), space.largest())}
    per_family = math.ceil(max(0, n - len(chosen)) / len(by_family))
    for members in by_family.values():
        for j in range(per_family):
            arch = members[int((j + 0.5) * len(members) / per_family)]
            chosen.setdefault(arch.key(), arch)
    return list(chosen.values())[:n]


def check_ranking(supernet: HybridSupernet, data: DatasetSplits, *, n: int, steps: int, lr: float,
                  batch_size: int, seed: int, bn_batches: int, crop_padding: int = 0,
                  hflip: bool = False) -> RankingCheck:
    example = torch.rand(1, data.in_channels, data.image_size, data.image_size)
    archs = spread_architectures(supernet, n, example, seed)
    batches = reference_batches(data.train, seed, bn=bn_batches).bn
    result = RankingCheck(steps=steps)
    for i, arch in enumerate(archs):
        started = time.time()
        inherited = accuracy(calibrated_subnet(supernet, arch, batches), data.val)
        torch.manual_seed(seed)
        model = build_model(subnet_config(supernet, arch))  # a fresh initialization
        finetune(model, data.train, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                 crop_padding=crop_padding, hflip=hflip)
        alone = accuracy(model, data.val)
        result.rows.append({"arch": arch.describe(), "inherited": inherited, "standalone": alone})
        logger.info("ranking check %d/%d: %s: inherited %.4f, alone %.4f (%.0fs)", i + 1, len(archs),
                    arch.describe(), inherited, alone, time.time() - started)
    inherited = [r["inherited"] for r in result.rows]
    alone = [r["standalone"] for r in result.rows]
    result.spearman, result.kendall = spearman(inherited, alone), kendall_tau(inherited, alone)
    return result
