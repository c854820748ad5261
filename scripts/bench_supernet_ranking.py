"""How well does the supernet rank architectures? Inherited-weight accuracy against stand-alone training.

Takes ``--archs`` architectures (24 by default) chosen deterministically from the space, spread over MACs
*and* over the block family of each stage: every combination of families the space allows (conv-ending,
attention-ending, mixed) gets an equal share, and within a combination the architectures sit at evenly
spaced MAC quantiles from its smallest to its largest. Each one's val accuracy is measured with weights
inherited from the supernet (BatchNorm recalibrated) and after training from scratch with the supernet's own
budget (same epochs, batch size, learning rate, schedule, augmentation). Reported: Spearman and Kendall with
bootstrap 90% intervals (BossNAS reports Spearman 0.78 / 0.76; the target here is >= 0.8 with the interval's
lower end above 0.6), how many of the top quarter by inherited accuracy are in the top quarter stand-alone,
and the gap (inherited minus stand-alone) per family of the last stage.

A correlation is only as good as its ground truth, so ``--noise-archs`` of them (spread over MACs) are trained
stand-alone again with another seed: the seed-to-seed change of a stand-alone accuracy, set against the spread
across architectures, bounds the correlation any supernet could reach.

Stand-alone results are cached in ``bench_results/supernet_ranking_standalone.json`` under a key made of the
code version (a hash of the source that defines the model, the data and the trainer), the architecture, the
task's data (a hash of the loaded images), the seed and the budget: a changed trainer never reuses stale ground
truth, and an interrupted run resumes where it stopped.

    python scripts/bench_supernet_ranking.py --task mosaic                       # recipes/mosaic.yaml
    python scripts/make_photo_task.py && python scripts/bench_supernet_ranking.py --task data/photo-patches
    python scripts/make_photo_task.py --out data/photo-patches-large --train-per-class 1500 --val-per-class 400 \
        --name photos-large --epochs 4 && python scripts/bench_supernet_ranking.py --task data/photo-patches-large
    python scripts/bench_supernet_ranking.py --task mosaic --archs 8 --noise-archs 2 --epochs 4   # quick look
    python scripts/bench_supernet_ranking.py --task mosaic --jobs 2     # stand-alone trainings on two cores
    python scripts/bench_supernet_ranking.py --task mosaic --ablation baseline=runs/a/supernet \\
        --ablation few-shot=runs/b/supernet                                     # one row per training option
    python scripts/bench_supernet_ranking.py --task data/photo-patches --ground-truth-only --jobs 2
    python scripts/bench_supernet_ranking.py --task data/photo-patches --cached-only   # what is cached so far
    python scripts/bench_supernet_ranking.py --task mosaic --recovery-steps 50,200   # and after recovery steps
    python scripts/bench_supernet_ranking.py --task mosaic --calibration-draws 5   # and with 4 other BN draws

``--task`` is a recipe name under recipes/, a recipe file, or a directory holding ``recipe.yaml`` (what
make_photo_task.py writes). ``--epochs`` overrides the recipe's supernet epochs, and so the stand-alone budget;
results are then labelled as a reduced budget. Results: bench_results/supernet_ranking_<task>.md/.json/.png
(``..._ablation.md/.json`` with ``--ablation``: the table keeps the rows of options measured earlier on the same
architectures, and replaces a row measured again under the same name). ``--ground-truth-only`` trains and
caches the stand-alone models alone, no supernet needed: the slow half, which an interrupted run or another
session picks up where it stopped. ``--cached-only`` ranks a supernet on the architectures already cached and
trains none, labelled partial: a first look while the ground truth is still being trained.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from benchlib import RESULTS, ROOT, ResultCache, environment, noise_ceiling, rank_statistics, resolve_task, \
    save_figure, source_hash, top_overlap, write_results

from compress.data import reference_batches
from compress.errors import CompressError
from compress.measure.accuracy import accuracy
from compress.measure.macs import count_macs
from compress.nn import build_model
from compress.recipe import LoadedRecipe, load_recipe
from compress.space import Arch
from compress.supernet import extract_subnet, subnet_config
from compress.supernet.hybrid import HybridSupernet
from compress.supernet.subnet import calibrated_subnet
from compress.policies import Policies
from compress.policies.distill import DistillPolicy
from compress.policies.finetune import finetune
from compress.search.candidate import CandidateSpec, build_candidate

CACHE = RESULTS / "supernet_ranking_standalone.json"
DRAW_SEED_STEP = 1000  # --calibration-draws: draw j's seed is the recipe's + j * this, clear of the search's own
POOL_PER_PATTERN = 120
# The source that decides what a stand-alone accuracy is: the static model (nn, and the family plugins that
# build its blocks), the data pipeline, the trainer and the accuracy measure (plus standalone_accuracy itself,
# added in code_version). Not the supernet or the search space: the key holds the exact model config the
# supernet extracts, so supernet training options and space fixes keep the measured ground truth.
# Of the data package only what training reads (splits, loaders, augmentation): the images and labels a task
# loads are in the key by content (data_fingerprint), so a new data source does not void every task's results.
TRAINING_SOURCES = ("compress/nn", "compress/data/base.py", "compress/data/loaders.py", "compress/policies/finetune.py",
                    "compress/policies/distill.py", "compress/measure/accuracy.py", "compress/families",
                    "compress/registry.py")


# --------------------------------------------------------------------------------------------------
# Which architectures


def pattern(arch: Arch) -> str:
    """The block family of each stage, e.g. ``conv-attn-conv``."""
    return "-".join(s.block for s in arch.stages)


def family_kind(arch: Arch) -> str:
    """``conv-ending`` or ``attn-ending``, with ``, mixed`` when both families appear."""
    blocks = {s.block for s in arch.stages}
    return f"{arch.stages[-1].block}-ending" + (", mixed" if len(blocks) > 1 else "")


def choices(arch: Arch) -> dict[str, str]:
    """The whole-stage choices of ``arch`` by name (stem width; each stage's family, depth and width): what the
    gap can be averaged over, to see which choice the supernet misjudges."""
    out = {"stem width": str(arch.stem_width)}
    for i, s in enumerate(arch.stages):
        out |= {f"stage {i} family": s.block, f"stage {i} depth": str(s.depth), f"stage {i} width": str(s.width)}
    return out


def mean_inherited(row: dict) -> float:
    """A row's inherited accuracy averaged over its calibration draws (the search's own draw when only one)."""
    return statistics.fmean(row.get("inherited_draws") or [row["inherited"]])


def choice_bias(rows: list[dict], archs: list[Arch]) -> dict[str, dict[str, float]]:
    """Per choice with more than one value among ``archs``: the mean gap (inherited minus stand-alone, every
    calibration draw averaged) of the rows holding each value. A ranking error that is noise averages out
    here; one that is bias shows as a difference between the values of one choice."""
    gaps = [mean_inherited(r) - r["standalone"] for r in rows]
    per = [choices(a) for a in archs]
    out = {}
    for name in per[0]:
        values = sorted({c[name] for c in per}, key=lambda v: (len(v), v))
        if len(values) > 1:
            out[name] = {v: statistics.fmean(g for g, c in zip(gaps, per) if c[name] == v) for v in values}
    return out


def with_pattern(space, blocks: tuple[str, ...], rng: random.Random) -> Arch:
    stages = tuple(space.make_stage(spec, block, rng.choice(spec.depth), rng.choice(spec.width), rng.choice)
                   for spec, block in zip(space.stages, blocks))
    return Arch(stem_width=rng.choice(space.stem.width), stages=stages)


def extreme_with_pattern(space, blocks: tuple[str, ...], pick) -> Arch:
    stages = tuple(space.make_stage(spec, block, pick(spec.depth), pick(spec.width), pick)
                   for spec, block in zip(space.stages, blocks))
    return Arch(stem_width=pick(space.stem.width), stages=stages)


def spread_architectures(space, supernet: HybridSupernet, n: int, shape, seed: int = 0,
                         pool_size: int = POOL_PER_PATTERN) -> list[tuple[Arch, int]]:
    """``n`` distinct architectures with their MACs: an equal share per family combination, each share at
    evenly spaced MAC quantiles (both ends included) of that combination's smallest, largest and random ones."""
    patterns = list(itertools.product(*(spec.blocks for spec in space.stages)))
    example = torch.rand(shape)
    macs = lambda a: count_macs(extract_subnet(supernet, a), example)  # noqa: E731
    chosen: dict[str, tuple[Arch, int]] = {}
    for p, blocks in enumerate(patterns):
        share = n // len(patterns) + (p < n % len(patterns))
        if share == 0:
            continue
        rng = random.Random(f"{seed}-{'-'.join(blocks)}")
        pool = [extreme_with_pattern(space, blocks, min), extreme_with_pattern(space, blocks, max)]
        pool += [with_pattern(space, blocks, rng) for _ in range(pool_size)]
        unique = {a.key(): a for a in pool}
        scored = sorted(((macs(a), a) for a in unique.values()), key=lambda t: (t[0], t[1].key()))
        positions = [0] if share == 1 else [round(j * (len(scored) - 1) / (share - 1)) for j in range(share)]
        for pos in positions:
            # Neighbouring positions can coincide in a small pool; step to the next unused architecture.
            while scored[pos][1].key() in chosen and pos + 1 < len(scored):
                pos += 1
            chosen.setdefault(scored[pos][1].key(), (scored[pos][1], scored[pos][0]))
    return sorted(chosen.values(), key=lambda t: (t[1], t[0].key()))


# --------------------------------------------------------------------------------------------------
# Ground truth


def standalone_accuracy(arch, supernet, data, recipe, steps: int, seed: int) -> tuple[float, float]:
    """Val accuracy of ``arch`` trained from scratch with the supernet's budget; and the seconds it took."""
    cfg = recipe.supernet
    torch.manual_seed(seed)
    model = build_model(subnet_config(supernet, arch))  # fresh initialization
    started = time.time()
    finetune(model, data.train, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
             weight_decay=cfg.weight_decay, crop_padding=recipe.data.augment.crop_padding,
             hflip=recipe.data.augment.hflip, label_smoothing=cfg.label_smoothing,
             warmup_fraction=cfg.warmup_fraction)
    return accuracy(model, data.val), round(time.time() - started, 1)


def code_version() -> str:
    paths = []
    for name in TRAINING_SOURCES:
        p = ROOT / name
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return source_hash(paths, extra=inspect.getsource(standalone_accuracy))


def data_fingerprint(data) -> str:
    """Hash of the loaded train and val images and labels: the task as the trainer sees it."""
    h = hashlib.sha256()
    for split in (data.train, data.val):
        h.update(split.images.contiguous().numpy().tobytes())
        h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class GroundTruth:
    """Stand-alone accuracies for one task and budget, from the cache or trained now (and then cached)."""

    def __init__(self, loaded: LoadedRecipe, data, supernet: HybridSupernet, cache: ResultCache):
        cfg = loaded.recipe.supernet
        self.loaded, self.data, self.supernet, self.cache = loaded, data, supernet, cache
        self.steps = cfg.epochs * (len(data.train) // cfg.batch_size)
        self.setting = {"steps": self.steps, "augment": loaded.recipe.data.augment.model_dump(mode="json"),
                        **{k: getattr(cfg, k) for k in ("lr", "batch_size", "weight_decay", "label_smoothing",
                                                         "warmup_fraction")}}
        self.code, self.data_hash = code_version(), data_fingerprint(data)

    def key(self, arch: Arch, seed: int) -> str:
        # The exact model config, not only the architecture: a space option such as ``heads_mode: regroup``
        # builds another model from the same genes, while supernets that differ only in training (few-shot,
        # another loss) share their stand-alone models and so their cached ground truth.
        return ResultCache.key(code=self.code, data=self.data_hash, model=self.model_hash(arch), seed=seed,
                               **self.setting)

    def model_hash(self, arch: Arch) -> str:
        config = subnet_config(self.supernet, arch)
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

    def cached(self, arch: Arch, seed: int) -> bool:
        return self.cache.get(self.key(arch, seed)) is not None

    def __call__(self, arch: Arch, seed: int) -> tuple[float, float, bool]:
        key = self.key(arch, seed)
        hit = self.cache.get(key)
        if hit:
            return hit["standalone"], hit["train_seconds"], True
        acc, seconds = standalone_accuracy(arch, self.supernet, self.data, self.loaded.recipe, self.steps, seed)
        # Every part of the key is stored with the result, so a later change of what the key covers can
        # re-key the cache instead of training again.
        self.cache.put(key, {"arch": arch.describe(), "task": self.loaded.name, "seed": seed, "standalone": acc,
                             "train_seconds": seconds, "code": self.code, "data": self.data_hash,
                             "model": self.model_hash(arch), **self.setting})
        return acc, seconds, False


# Stand-alone trainings are independent, so ``--jobs N`` trains the missing ones in N worker processes (one
# thread each, so N of them fill N cores without oversubscribing them). Each worker loads the task and the
# checkpoint itself and writes to the shared cache, which takes concurrent writers; the ordinary sequential
# pass then finds every result there.
_worker_truth: GroundTruth | None = None


def _init_worker(recipe_path: str, epochs: int | None, checkpoint_dir: str | None) -> None:
    global _worker_truth
    torch.set_num_threads(1)
    loaded = with_epochs(load_recipe(recipe_path), epochs)
    if checkpoint_dir is None:  # --ground-truth-only: the model configs come from the recipe's own space
        data = loaded.load_data()
        _worker_truth = GroundTruth(loaded, data, plain_supernet(loaded, data), ResultCache(CACHE))
        return
    checkpoint, context = load_checkpoint(loaded, Path(checkpoint_dir))
    _worker_truth = GroundTruth(loaded, context.data, checkpoint.supernet, ResultCache(CACHE))


def _train_in_worker(arch: Arch, seed: int) -> tuple[str, int, float, float]:
    acc, seconds, _ = _worker_truth(arch, seed)
    return arch.describe(), seed, acc, seconds


def prefetch(truth: GroundTruth, wanted: list[tuple[Arch, int, int]], jobs: int, recipe_path: Path,
             epochs: int | None, checkpoint_dir: Path | None) -> None:
    """Train the uncached ``(arch, macs, seed)`` of ``wanted`` in ``jobs`` processes, largest first (so the
    last to finish are short ones and no worker idles long at the end)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    if jobs <= 1:
        return
    missing = sorted(((a, m, s) for a, m, s in wanted if not truth.cached(a, s)),
                     key=lambda t: -t[1])
    if not missing:
        return
    print(f"training {len(missing)} stand-alone models in {jobs} processes", flush=True)
    # spawn, not fork: a forked child of a process that has run PyTorch's thread pool can hang.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(str(recipe_path), epochs, checkpoint_dir and str(checkpoint_dir))) as pool:
        futures = [pool.submit(_train_in_worker, a, s) for a, _, s in missing]
        for done, future in enumerate(as_completed(futures), 1):
            name, seed, acc, seconds = future.result()
            print(f"[stand-alone {done}/{len(missing)}] seed {seed} {name}: {acc:.4f} ({seconds:.0f}s)", flush=True)


def noise_picks(n_archs: int, n_noise: int) -> list[int]:
    """Indices (into the MAC-sorted architectures) trained again with another seed: spread over MACs, since
    the seed noise of small and large models differs."""
    n_noise = min(n_noise, n_archs)
    if n_noise == 1:
        return [n_archs // 2]
    return [round(j * (n_archs - 1) / (n_noise - 1)) for j in range(n_noise)]


# --------------------------------------------------------------------------------------------------
# Measuring one supernet


def recovered_accuracy(context, arch: Arch, steps: int, recipe, weight: float = 0.9) -> float:
    """Val accuracy after ``steps`` of the search's recovery distillation from the largest subnet (``weight``
    on its soft labels, the rest on the true labels): the candidate the search would build with that policy
    (and only it), by the search's own function."""
    d = recipe.search.policies.distill
    policy = DistillPolicy(steps=steps, weight=weight, lr=d.lr, batch_size=d.batch_size)
    candidate = build_candidate(context, CandidateSpec(arch, Policies(distill=policy), seed=recipe.seed))
    return accuracy(candidate.model, context.data.val)


def calibration_draws(context, recipe, k: int) -> list[list[torch.Tensor]]:
    """``k - 1`` further sets of BatchNorm calibration batches, as many as the search uses, drawn with other
    seeds: an inherited accuracy depends on which images recalibrated it, and so does a ranking of them."""
    n = len(context.bn_batches)
    return [reference_batches(context.data.train, recipe.seed + DRAW_SEED_STEP * j, bn=n).bn for j in range(1, k)]


def inherited_rows(checkpoint, context, archs: list[tuple[Arch, int]], truth: GroundTruth, seed: int,
                   label: str = "", recovery: tuple[int, ...] = (), recipe=None, weight: float = 0.9,
                   draws: int = 1) -> list[dict]:
    rows = []
    others = calibration_draws(context, recipe, draws)
    for i, (arch, macs) in enumerate(archs):
        inherited = accuracy(calibrated_subnet(checkpoint.supernet, arch, context.bn_batches), context.data.val)
        again = [accuracy(calibrated_subnet(checkpoint.supernet, arch, bn), context.data.val) for bn in others]
        recovered = {k: recovered_accuracy(context, arch, k, recipe, weight) for k in recovery}
        standalone, seconds, hit = truth(arch, seed)
        rows.append({"arch": arch.describe(), "pattern": pattern(arch), "kind": family_kind(arch),
                     "last": arch.stages[-1].block, "macs": macs, "inherited": inherited,
                     "inherited_draws": [inherited, *again], "standalone": standalone,
                     "gap": inherited - standalone, "recovered": recovered, "seed": seed, "train_seconds": seconds,
                     "cached": hit})
        print(f"{label}[{i + 1}/{len(archs)}] {macs / 1e6:5.2f}M {arch.describe()}: inherited {inherited:.4f} "
              + "".join(f"after {k} steps {a:.4f} " for k, a in recovered.items())
              + f"stand-alone {standalone:.4f}" + (" (cached)" if hit else f" ({seconds:.0f}s)"), flush=True)
    return rows


def measured(row: dict, steps: int = 0) -> float:
    """A row's inherited accuracy, or (``steps`` > 0) its accuracy after that many recovery steps."""
    return row["inherited"] if steps == 0 else row["recovered"][steps]


def summarize(rows: list[dict], steps: int = 0) -> dict:
    """Ranking statistics of :func:`measured` accuracy against stand-alone accuracy."""
    values = [measured(r, steps) for r in rows]
    standalone = [r["standalone"] for r in rows]
    stats = rank_statistics(values, standalone)
    hit, k = top_overlap(values, standalone)
    gaps = {}
    for last in sorted({r["last"] for r in rows}):
        g = [m - r["standalone"] for m, r in zip(values, rows) if r["last"] == last]
        gaps[f"{last}-ending"] = {"n": len(g), "mean": statistics.fmean(g), "min": min(g), "max": max(g)}
    out = {**stats, "top_quarter": [hit, k], "gap_by_last_family": gaps}
    n_draws = min(len(r.get("inherited_draws", [])) for r in rows)
    if steps == 0 and n_draws > 1:
        per_draw = [rank_statistics([r["inherited_draws"][j] for r in rows], standalone, resamples=0)["spearman"]
                    for j in range(n_draws)]
        out["spearman_draws"] = {"values": per_draw, "min": min(per_draw), "median": statistics.median(per_draw),
                                 "max": max(per_draw)}
    return out


def fmt_draws(s: dict) -> str:
    d = s.get("spearman_draws")
    return f"{d['median']:.3f} ({d['min']:.2f} to {d['max']:.2f})" if d else "-"


def recovery_lines(rows: list[dict], recovery: tuple[int, ...], weight: float = 0.9) -> tuple[list[str], dict]:
    """A markdown table: how the ranking changes when each subnet first gets the search's recovery steps."""
    if not recovery:
        return [], {}
    summaries = {k: summarize(rows, k) for k in (0, *recovery)}
    md = ["Ranking after recovery distillation: each inherited subnet first gets `steps` steps of the search's "
          f"recovery distillation from the largest subnet (weight {weight:g} on its soft labels, "
          f"{1 - weight:g} on the true ones; `build_candidate` with only that policy), then is measured; the "
          "stand-alone ground truth is the same.", "",
          "| recovery steps | Spearman [90%] | Kendall [90%] | top quarter | mean gap (pt) |", "| --- | --- | --- | --- | --- |"]
    for k, s in summaries.items():
        mean_gap = statistics.fmean(measured(r, k) - r["standalone"] for r in rows)
        md.append(f"| {k} | {fmt_interval(s, 'spearman')} | {fmt_interval(s, 'kendall')} | "
                  f"{s['top_quarter'][0]}/{s['top_quarter'][1]} | {100 * mean_gap:+.2f} |")
    return md + [""], {str(k): s for k, s in summaries.items() if k}


def fmt_interval(s: dict, name: str) -> str:
    lo, hi = s[f"{name}_90"]
    return f"{s[name]:.3f} [{lo:.2f}, {hi:.2f}]"


# --------------------------------------------------------------------------------------------------
# Setting up


def with_epochs(loaded: LoadedRecipe, epochs: int | None) -> LoadedRecipe:
    if epochs is None:
        return loaded
    cfg = loaded.recipe.supernet.model_copy(update={"epochs": epochs})
    recipe = loaded.recipe.model_copy(update={"supernet": cfg})
    return LoadedRecipe(recipe, loaded.path, loaded.space_path, loaded.space, loaded.data_path)


def load_checkpoint(loaded: LoadedRecipe, path: Path):
    """A trained supernet and its context, on the checkpoint's own space: an option may live in the space (an
    attention family's ``heads_mode``), and such a supernet is measured on it."""
    from compress.search.loop import load_context
    from compress.supernet.checkpoint import load_supernet

    checkpoint = load_supernet(path)
    own = LoadedRecipe(loaded.recipe, loaded.path, loaded.space_path, checkpoint.space, loaded.data_path)
    return checkpoint, load_context(own, checkpoint)


def parse_steps(text: str) -> tuple[int, ...] | None:
    """``"200,50"`` -> ``(50, 200)``; None unless every item is a positive integer."""
    try:
        steps = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        return None
    return steps if all(k >= 1 for k in steps) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mosaic", help="recipe name, recipe file, or folder with recipe.yaml")
    parser.add_argument("--run-dir", help="where the supernet is trained (or found); default runs/<task>[-<E>ep]")
    parser.add_argument("--archs", type=int, default=24)
    parser.add_argument("--noise-archs", type=int, default=6, help="architectures trained again with another seed")
    parser.add_argument("--epochs", type=int, help="override the recipe's supernet epochs (a reduced budget)")
    parser.add_argument("--pool", type=int, default=POOL_PER_PATTERN,
                        help="random architectures per family combination to pick the MAC quantiles from")
    parser.add_argument("--ablation", action="append", default=[], metavar="NAME=CHECKPOINT_DIR",
                        help="rank several trained supernets (one per training option) on the same architectures")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train the missing stand-alone models in this many processes, one thread each")
    parser.add_argument("--recovery-steps", default="", metavar="K[,K...]",
                        help="also rank after K steps of the search's recovery distillation of each subnet")
    parser.add_argument("--recovery-weight", type=float, default=0.9,
                        help="weight of the largest subnet's soft labels in that recovery (0: labels only)")
    parser.add_argument("--calibration-draws", type=int, default=1, metavar="K",
                        help="also rank with K-1 other draws of the BatchNorm calibration images (how much the "
                             "figure owes to which images recalibrated the subnets)")
    parser.add_argument("--ground-truth-only", action="store_true",
                        help="only train and cache the stand-alone models (both seeds); no supernet is needed")
    parser.add_argument("--cached-only", action="store_true",
                        help="rank only the architectures whose stand-alone results are cached, training none "
                             "(a partial figure while the ground truth is still being trained)")
    args = parser.parse_args(argv)
    args.recovery = parse_steps(args.recovery_steps)
    if args.recovery is None:
        print(f"error: --recovery-steps: expected positive integers separated by commas, got {args.recovery_steps!r}",
              file=sys.stderr)
        return 2
    if not 0 <= args.recovery_weight <= 1:
        print(f"error: --recovery-weight must be in [0, 1], got {args.recovery_weight}", file=sys.stderr)
        return 2
    for field, least in (("archs", 2), ("noise_archs", 0), ("epochs", 1), ("pool", 1), ("jobs", 1),
                         ("calibration_draws", 1)):
        value = getattr(args, field)
        if value is not None and value < least:
            print(f"error: --{field.replace('_', '-')} is too small: {value}", file=sys.stderr)
            return 2
    ablation = []
    for spec in args.ablation:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir():
            print(f"error: --ablation {spec!r}: expected NAME=CHECKPOINT_DIR with an existing directory",
                  file=sys.stderr)
            return 2
        ablation.append((name, Path(path)))
    if args.cached_only and (ablation or args.ground_truth_only):
        print("error: --cached-only ranks one supernet; it does not combine with --ablation or --ground-truth-only",
              file=sys.stderr)
        return 2
    try:
        loaded = with_epochs(load_recipe(resolve_task(args.task)), args.epochs)
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reduced = args.epochs is not None
    tag = loaded.name + (f"_{loaded.recipe.supernet.epochs}ep" if reduced else "")
    try:
        if args.ground_truth_only:
            return run_ground_truth(loaded, args)
        if ablation:
            return run_ablation(loaded, ablation, args, tag)
        return run_ranking(loaded, args, tag, reduced)
    except CompressError as exc:  # unreadable data, a checkpoint of another space: one line, as the CLI does
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_ranking(loaded: LoadedRecipe, args, tag: str, reduced: bool) -> int:
    from compress.train.supernet import train_supernet

    recipe, cfg = loaded.recipe, loaded.recipe.supernet
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / tag
    checkpoint, context = load_checkpoint(loaded, train_supernet(loaded, run_dir))
    data = context.data
    shape = (1, data.in_channels, data.image_size, data.image_size)
    archs = spread_architectures(loaded.space, checkpoint.supernet, args.archs, shape, seed=recipe.seed,
                                         pool_size=args.pool)
    truth = GroundTruth(loaded, data, checkpoint.supernet, ResultCache(CACHE))
    picks = noise_picks(len(archs), args.noise_archs)
    planned = len(archs)
    if args.cached_only:
        archs, picks = cached_subset(truth, archs, picks, recipe.seed)
        print(f"--cached-only: {len(archs)} of {planned} architectures have a cached stand-alone result, "
              f"{len(picks)} of them a second seed too", flush=True)
        if len(archs) < 3:
            raise CompressError(f"--cached-only: {len(archs)} of the {planned} architectures are cached; a ranking "
                                "needs at least 3 (train them with --ground-truth-only)")
    else:
        prefetch(truth, [(a, m, recipe.seed) for a, m in archs] + [(*archs[i], recipe.seed + 1) for i in picks],
                 args.jobs, loaded.path, args.epochs, checkpoint.path)
    rows = inherited_rows(checkpoint, context, archs, truth, recipe.seed, recovery=args.recovery, recipe=recipe,
                          weight=args.recovery_weight, draws=args.calibration_draws)

    noise = []
    n_noise = len(picks)
    for j, i in enumerate(picks):
        r, arch = rows[i], archs[i][0]
        again, seconds, hit = truth(arch, recipe.seed + 1)
        noise.append({"arch": r["arch"], "seed": recipe.seed + 1, "standalone": again, "train_seconds": seconds,
                      "first_seed": r["standalone"], "change": again - r["standalone"]})
        print(f"[seed {recipe.seed + 1}, {j + 1}/{n_noise}] {r['arch']}: stand-alone {again:.4f} "
              f"(seed {recipe.seed}: {r['standalone']:.4f})" + (" (cached)" if hit else f" ({seconds:.0f}s)"),
              flush=True)

    summary = summarize(rows)
    seed_sd, ceiling = noise_ceiling([n["change"] for n in noise], [r["standalone"] for r in rows]) if noise \
        else (None, None)
    meta = checkpoint.meta
    budget = (f"**Reduced budget**: {cfg.epochs} supernet epochs instead of the recipe's "
              f"{load_recipe(loaded.path).recipe.supernet.epochs}, and the same {cfg.epochs} epochs for each "
              "stand-alone training; figures at this budget are not the full benchmark.") if reduced else \
        f"Full budget: the recipe's {cfg.epochs} supernet epochs."
    partial = [f"**Partial**: only the {len(rows)} of the {planned} architectures whose stand-alone results were "
               "cached when this ran (`--cached-only`), so the figures below are not the benchmark's.", ""] \
        if len(rows) < planned else []
    md = [f"## Supernet ranking on `{loaded.name}` ({len(rows)} architectures, {cfg.epochs} epochs)", "", budget, "",
          *partial,
          f"Supernet: {meta.get('train_seconds_this_session')} s of training ({meta.get('epochs')} epochs"
          + (f", resumed from epoch {meta['resumed_from_epoch']}" if meta.get("resumed_from_epoch") else "")
          + "); val accuracy of its extremes: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in meta["metrics"].items())
          + ".", "",
          "| architecture | families | MACs | inherited | stand-alone | gap (pt) |", "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| `{r['arch']}` | {r['kind']} | {r['macs'] / 1e6:.2f} M | {100 * r['inherited']:.2f}% | "
           f"{100 * r['standalone']:.2f}% | {100 * r['gap']:+.2f} |" for r in rows]
    hit, k = summary["top_quarter"]
    md += ["", f"- Spearman rho = {fmt_interval(summary, 'spearman')}, Kendall tau = {fmt_interval(summary, 'kendall')} "
           "(bootstrap 90% intervals over architectures; BossNAS: Spearman 0.78 / 0.76; target >= 0.8, lower end > 0.6).",
           f"- Top quarter: {hit} of the {k} best by inherited accuracy are among the {k} best stand-alone.",
           *([f"- Spearman over {args.calibration_draws} draws of the BatchNorm calibration images: median "
              f"{fmt_draws(summary)} (min to max); the figures above use the search's own draw."]
             if "spearman_draws" in summary else []),
           "- Gap, inherited minus stand-alone, by the family of the last stage: "
           + "; ".join(f"{fam} {100 * g['mean']:+.2f} pt (n={g['n']}, {100 * g['min']:+.1f} to {100 * g['max']:+.1f})"
                       for fam, g in summary["gap_by_last_family"].items()) + ".",
           f"- Stand-alone training: {truth.steps} steps per architecture (= {cfg.epochs} epochs at batch "
           f"{cfg.batch_size}, the supernet's budget), same optimizer, schedule and augmentation, no distillation; "
           f"{sum(r['train_seconds'] for r in rows + noise):.0f} s in all for these {len(rows) + len(noise)} "
           f"trainings (times from the run that trained each, cached ones included).", ""]
    if noise:
        md += ["How much ranking the ground truth allows: the same architecture trained stand-alone with another seed.",
               "", f"| architecture | seed {recipe.seed} | seed {recipe.seed + 1} | change (pt) |", "| --- | --- | --- | --- |"]
        md += [f"| `{n['arch']}` | {100 * n['first_seed']:.2f}% | {100 * n['standalone']:.2f}% | "
               f"{100 * n['change']:+.2f} |" for n in noise]
        spread = statistics.stdev(r["standalone"] for r in rows)
        md += ["", f"Seed-to-seed standard deviation of one stand-alone accuracy: {100 * seed_sd:.2f} points; across "
               f"the {len(rows)} architectures: {100 * spread:.2f} points. A ranking measured against this ground truth "
               f"correlates at most about {ceiling:.2f} with the true one, even from a perfect supernet.", ""]
    recovery_md, recovery = recovery_lines(rows, args.recovery, args.recovery_weight)
    md += recovery_md
    plot_path = plot(rows, RESULTS / f"supernet_ranking_{tag}.png",
                     f"{loaded.name}: rho {summary['spearman']:.2f}, {cfg.epochs} epochs")
    md += [f"Plot: `{plot_path.name}` (inherited against stand-alone accuracy, marker by last-stage family).", ""]
    write_results(f"supernet_ranking_{tag}", {
        "task": loaded.name, "recipe": str(loaded.path), "reduced_budget": reduced, "epochs": cfg.epochs,
        "architectures_planned": planned,
        "setting": truth.setting, "code_version": truth.code, "data_fingerprint": truth.data_hash,
        "supernet": {"path": str(checkpoint.path), "train_seconds": meta.get("train_seconds_this_session"),
                     "metrics": meta["metrics"]},
        "rows": rows, "noise": noise, **summary, "recovery": recovery,
        "recovery_weight": args.recovery_weight, "seed_sd": seed_sd, "ceiling": ceiling,
        "environment": environment()}, "\n".join(md) + "\n")
    return 0


def cached_subset(truth: GroundTruth, archs: list[tuple[Arch, int]], picks: list[int],
                  seed: int) -> tuple[list[tuple[Arch, int]], list[int]]:
    """The architectures whose stand-alone result for ``seed`` is cached, and the noise picks (as indices into
    that subset) whose second seed is cached too."""
    keep = [i for i, (arch, _) in enumerate(archs) if truth.cached(arch, seed)]
    return [archs[i] for i in keep], [keep.index(i) for i in picks if i in keep and truth.cached(archs[i][0], seed + 1)]


def plain_supernet(loaded: LoadedRecipe, data) -> HybridSupernet:
    """An untrained supernet of the recipe's own space: what picks the architectures (their MACs are the
    figures a trained one gives) and what extracts the stand-alone models' configs, without a checkpoint."""
    return HybridSupernet(loaded.space, data.in_channels, data.num_classes, data.mean, data.std)


def run_ablation(loaded: LoadedRecipe, ablation: list[tuple[str, Path]], args, tag: str) -> int:
    """One row per trained supernet: its ranking, extremes and training time, on one set of architectures."""
    recipe, cfg = loaded.recipe, loaded.recipe.supernet
    results, archs, cache = [], None, ResultCache(CACHE)
    for name, path in ablation:
        # Measured on its own space, as long as that space offers the same choices (checked per architecture).
        checkpoint, context = load_checkpoint(loaded, path)
        if archs is None:
            # Chosen once, from the recipe's own space (MACs counted on an untrained supernet of it, the same
            # figures a trained one gives), so every row ranks the same points as the plain benchmark does,
            # whichever option comes first: regrouped heads change a subnet's MACs and so the quantiles.
            data = context.data
            shape = (1, data.in_channels, data.image_size, data.image_size)
            archs = spread_architectures(loaded.space, plain_supernet(loaded, data), args.archs, shape,
                                         seed=recipe.seed, pool_size=args.pool)
        for arch, _ in archs:
            checkpoint.space.check(arch)
        # Stand-alone ground truth of this supernet's models (shared through the cache where they are equal).
        truth = GroundTruth(loaded, context.data, checkpoint.supernet, cache)
        prefetch(truth, [(a, m, recipe.seed) for a, m in archs], args.jobs, loaded.path, args.epochs, path)
        rows = inherited_rows(checkpoint, context, archs, truth, recipe.seed, label=f"{name} ",
                              recovery=args.recovery, recipe=recipe, weight=args.recovery_weight,
                              draws=args.calibration_draws)
        meta = checkpoint.meta
        if meta.get("epochs") != cfg.epochs:
            print(f"note: {name} was trained for {meta.get('epochs')} epochs; stand-alone budget is {cfg.epochs}",
                  flush=True)
        _, recovery = recovery_lines(rows, args.recovery, args.recovery_weight)
        results.append({"option": name, "checkpoint": str(path), "epochs": meta.get("epochs"),
                        "train_seconds": meta.get("train_seconds_this_session"),
                        "resumed_from_epoch": meta.get("resumed_from_epoch"), "metrics": meta["metrics"],
                        "rows": rows, **summarize(rows), "recovery": recovery,
                        "recovery_weight": args.recovery_weight})
    name = f"supernet_ranking_{tag}_ablation"
    # A supernet takes an hour or more to train and its run folder rarely outlives the session, so the table
    # grows: rows of options not measured this time are kept, as long as they ranked the same architectures.
    results = merge_options(read_options(RESULTS / f"{name}.json", loaded.name, cfg.epochs,
                                         [a.describe() for a, _ in archs]), results)
    write_results(name, {"task": loaded.name, "epochs": cfg.epochs, "options": results,
                         "environment": environment()},
                  "\n".join(ablation_markdown(loaded.name, cfg.epochs, [a for a, _ in archs], results)) + "\n")
    return 0


def read_options(path: Path, task: str, epochs: int, archs: list[str]) -> list[dict]:
    """The options of an earlier ablation table, if it measured the same task, budget and architectures (in
    that order); otherwise none, with a note saying why."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    same = (earlier.get("task") == task and earlier.get("epochs") == epochs
            and all([r["arch"] for r in o["rows"]] == archs for o in earlier.get("options", [])))
    if not same:
        print(f"note: {path.name} measured other architectures, task or budget; its rows are replaced", flush=True)
        return []
    for option in earlier["options"]:  # JSON turned the recovery steps (int keys) into strings
        for row in option["rows"]:
            row["recovered"] = {int(k): v for k, v in row.get("recovered", {}).items()}
    return earlier["options"]


def merge_options(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` with each option measured again replaced in its place, then the new options in order."""
    fresh = {o["option"]: o for o in new}
    kept = [fresh.pop(o["option"], o) for o in earlier]
    return kept + [o for o in new if o["option"] in fresh]


def ablation_markdown(task: str, epochs: int, archs: list[Arch], results: list[dict]) -> list[str]:
    families = sorted({f for r in results for f in r["gap_by_last_family"]})
    draws = any("spearman_draws" in r for r in results)
    md = [f"## Supernet training options ranked on `{task}` ({len(archs)} architectures, stand-alone budget "
          f"{epochs} epochs)", "",
          "| option | epochs | training time | largest | smallest | Spearman [90%] | Kendall [90%] | top quarter | "
          + " | ".join(f"gap {f}" for f in families) + " |" + (" Spearman, BN draws |" if draws else ""),
          "| --- " * (8 + len(families) + draws) + "|"]
    for r in results:
        smallest = ", ".join(f"{k.removeprefix('smallest_')} {100 * v:.2f}%" for k, v in r["metrics"].items()
                             if k.startswith("smallest"))
        md.append(f"| {r['option']} | {r['epochs']} | {r['train_seconds']} s"
                  + (" (resumed)" if r["resumed_from_epoch"] else "") + f" | {100 * r['metrics']['largest']:.2f}% | "
                  f"{smallest} | {fmt_interval(r, 'spearman')} | {fmt_interval(r, 'kendall')} | "
                  f"{r['top_quarter'][0]}/{r['top_quarter'][1]} | "
                  + " | ".join(f"{100 * r['gap_by_last_family'][f]['mean']:+.2f} pt" if f in r["gap_by_last_family"]
                               else "-" for f in families) + " |" + (f" {fmt_draws(r)} |" if draws else ""))
    counts = sorted({len(r["spearman_draws"]["values"]) for r in results if "spearman_draws" in r})
    md += ["", "Training time is the checkpoint's own record (this session's seconds; a resumed run counts only the "
           "part after resuming)."
           + (f" Spearman, BN draws: the median (min to max) over {'/'.join(map(str, counts))} draws of the "
              "BatchNorm calibration images, the search's own included; the other columns use the search's own draw."
              if draws else ""), ""]
    md += bias_markdown(archs, results)
    for r in results:
        steps = tuple(sorted(r["rows"][0].get("recovered", {})))
        lines, _ = recovery_lines(r["rows"], steps, r.get("recovery_weight", 0.9))
        if lines:
            md += [f"### {r['option']}", "", *lines]
    return md


def bias_markdown(archs: list[Arch], results: list[dict]) -> list[str]:
    """Which choices each supernet misjudges (mean gap per value of a choice), and how the options' average
    ranks: if their errors were independent noise, the average would rank better than any one of them."""
    biases = [choice_bias(r["rows"], archs) for r in results]
    md = ["Mean gap (inherited minus stand-alone, points, every calibration draw averaged) by a whole-stage "
          "choice, one column per option in the order above: a choice whose values differ here is misjudged the "
          "same way by every draw, so it is bias, not noise.", "",
          "| choice | " + " | ".join(f"({i + 1})" for i in range(len(results))) + " |",
          "| --- " * (1 + len(results)) + "|"]
    md += [f"| {name} {v} | " + " | ".join(f"{100 * b[name][v]:+.2f}" for b in biases) + " |"
           for name, values in biases[0].items() for v in values]
    md += ["", "Options: " + "; ".join(f"({i + 1}) {r['option']}" for i, r in enumerate(results)) + "."]
    if len(results) > 1:
        mean = [statistics.fmean(mean_inherited(o["rows"][i]) for o in results) for i in range(len(archs))]
        rho = rank_statistics(mean, [r["standalone"] for r in results[0]["rows"]], resamples=0)["spearman"]
        md += ["", f"The {len(results)} options' inherited accuracies averaged (every draw of each): Spearman "
               f"{rho:.3f}, against {max(r['spearman'] for r in results):.3f} for the best single one."]
    return md + [""]


def run_ground_truth(loaded: LoadedRecipe, args) -> int:
    """Train (and cache) the stand-alone models a ranking of this task needs, both seeds, without a supernet:
    the slow half of the benchmark, which several sessions can share through the cache."""
    recipe = loaded.recipe
    data = loaded.load_data()
    supernet = plain_supernet(loaded, data)
    shape = (1, data.in_channels, data.image_size, data.image_size)
    archs = spread_architectures(loaded.space, supernet, args.archs, shape, seed=recipe.seed, pool_size=args.pool)
    truth = GroundTruth(loaded, data, supernet, ResultCache(CACHE))
    wanted = [(a, m, recipe.seed) for a, m in archs] + [(*archs[i], recipe.seed + 1)
                                                        for i in noise_picks(len(archs), args.noise_archs)]
    cached = sum(truth.cached(a, s) for a, _, s in wanted)
    print(f"{loaded.name}: {len(wanted)} stand-alone models ({truth.steps} steps each), {cached} cached", flush=True)
    prefetch(truth, wanted, args.jobs, loaded.path, args.epochs, None)
    # One process (or what the workers left): largest first, as prefetch orders them.
    for i, (arch, macs, seed) in enumerate(sorted(wanted, key=lambda t: -t[1])):
        acc, seconds, hit = truth(arch, seed)
        print(f"[{i + 1}/{len(wanted)}] seed {seed} {macs / 1e6:5.2f}M {arch.describe()}: {acc:.4f}"
              + (" (cached)" if hit else f" ({seconds:.0f}s)"), flush=True)
    return 0


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for last, marker in (("conv", "o"), ("attn", "^")):
        pts = [r for r in rows if r["last"] == last]
        if pts:
            ax.scatter([100 * r["standalone"] for r in pts], [100 * r["inherited"] for r in pts], marker=marker,
                       label=f"{last}-ending ({len(pts)})", alpha=0.8)
    values = [100 * r[k] for r in rows for k in ("standalone", "inherited")]
    lo, hi = min(values) - 1, max(values) + 1
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--", label="inherited = stand-alone")
    ax.set_xlabel("stand-alone val accuracy (%)")
    ax.set_ylabel("inherited val accuracy (%)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
