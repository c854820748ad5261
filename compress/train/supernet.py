"""Supernet training: sandwich rule with in-place distillation (BigNAS / NASViT / AttentiveNAS practice).

Each step trains the largest subnet on the labels, then the smallest and ``random_subnets`` random subnets
on the largest subnet's (detached) soft predictions. The losses are summed and back-propagated once, so the
step is one graph and runs unchanged under DistributedDataParallel. Every rank draws the same subnets
(the subnet sampler is seeded per epoch), which DDP requires.

Options that help inherited accuracy rank architectures (recipe ``supernet:``): ``kd_loss: alpha`` (AlphaNet's
adaptive alpha-divergence instead of KL) or ``labels`` (no in-place distillation: the students learn from the
labels), ``few_shot: true`` (no weight of a stage shared by two block families), ``split_stem: true`` (each stem
width its own stem and first down-sampling convolution), ``gradient_projection: true`` (NASViT: the sampled
subnets' gradient loses its component against the largest subnet's where they conflict; two backward passes,
one process), ``subnet_sampling: size`` (the random subnets spread over the size range instead of mostly
mid-sized, every choice drawn near one level), ``subnet_sampling: macs`` (AttentiveNAS: a MACs target per
random subnet, stratified over the range, met by the closest of a few uniform draws, so mixed configurations
stay as likely as in uniform sampling), ``teacher_families: cycle`` (the largest subnet of a step takes every
combination of block families in turn, see :func:`teacher_archs`).
``heads_mode: regroup`` of the attention families is a search-space option (see compress/families/attn.py).

State is saved with ``accelerator.save_state`` every ``checkpoint_every`` epochs; a run that is interrupted
and started again resumes from the last saved epoch. The final checkpoint is written atomically.
"""

from __future__ import annotations

import itertools
import logging
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress.data import DatasetSplits, augment_batch, make_loader, reference_batches
from compress.errors import CompressError
from compress.fsutil import ensure_writable_dir, recover_dir
from compress.measure.accuracy import accuracy
from compress.policies.distill import alpha_divergence_loss, logit_kd_loss
from compress.policies.finetune import warmup_cosine
from compress.provenance import package_versions
from compress.recipe import LoadedRecipe
from compress.supernet.checkpoint import META, load_supernet, save_supernet, supernet_dir
from compress.supernet.hybrid import HybridSupernet
from compress.supernet.subnet import calibrated_subnet
from compress.train.state import read_progress, save_training_state

logger = logging.getLogger(__name__)

def _state_dir(run_dir: Path) -> Path:
    return run_dir / "supernet-state"


def checkpoint_matches(run_dir: Path, key: str) -> bool:
    meta = supernet_dir(run_dir) / META
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("supernet_key") == key
    except json.JSONDecodeError:
        return False


def project_conflicts(params: list[torch.nn.Parameter], largest_grads: list[torch.Tensor | None]) -> int:
    """NASViT's gradient projection, per weight tensor: where the sampled subnets' gradient (in ``p.grad``)
    points against the largest subnet's (negative inner product), drop its component along the largest one's;
    then add the largest one's. Returns how many tensors conflicted."""
    conflicts = 0
    for p, g_large in zip(params, largest_grads):
        if g_large is None:
            continue
        if p.grad is None:
            p.grad = g_large
            continue
        dot = (p.grad * g_large).sum()
        if dot < 0:
            p.grad -= dot / g_large.pow(2).sum().clamp_min(1e-12) * g_large
            conflicts += 1
        p.grad += g_large
    return conflicts


# Uniform draws per MACs target (subnet_sampling: macs): enough that the closest one lands near the target
# over most of the range; the draws are cheap (MACs are summed from cached pieces, no model is built).
MACS_TARGET_DRAWS = 64


def teacher_archs(space, families: str) -> list:
    """The largest subnets that take turns, one per step, as the labels' subnet and the in-place teacher:
    ``first``, only the space's largest (each stage's first-listed family); ``cycle``, the largest of every
    combination of the stages' families, that one first."""
    first = space.largest()
    if families == "first":
        return [first]
    combos = [space.largest(list(blocks)) for blocks in itertools.product(*(s.blocks for s in space.stages))]
    return [first] + [a for a in combos if a != first]


def sample_random_subnets(space, rng: random.Random, k: int, how: str, macs=None) -> list:
    """The ``k`` random subnets of one step: uniform choices; or (``size``) one per k-th of the size range,
    every ordered choice drawn near that level; or (``macs``, with ``macs(arch)`` counting an architecture's
    multiply-accumulates) one MACs target per k-th of the log-MACs range, each met by the closest of
    :data:`MACS_TARGET_DRAWS` uniform draws.

    ``size`` ties every dimension of a subnet to one level, so mixed subnets (wide but shallow, many heads
    but a small MLP) are rarely trained; drawing uniformly and keeping the draw nearest a target, as
    AttentiveNAS does, spreads the subnets over the range without that bias."""
    if how == "size":
        return [space.sample_near_size(rng, (j + rng.random()) / k) for j in range(k)]
    if how == "macs":
        lo, hi = math.log(macs(space.smallest())), math.log(macs(space.largest()))
        chosen = []
        for j in range(k):
            target = lo + (j + rng.random()) / k * (hi - lo)
            draws = [space.sample(rng) for _ in range(MACS_TARGET_DRAWS)]
            chosen.append(min(draws, key=lambda a: abs(math.log(macs(a)) - target)))
        return chosen
    return [space.sample(rng) for _ in range(k)]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on norms, biases and 1-d parameters (standard for transformers and BN nets).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_supernet(loaded: LoadedRecipe, run_dir: Path, data: DatasetSplits | None = None,
                   log=None) -> Path:
    """Train (or resume, or reuse) the recipe's supernet; return the checkpoint directory."""
    log = log or logger.info  # progress goes to logging; the CLI shows it
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    recipe, cfg, space = loaded.recipe, loaded.recipe.supernet, loaded.space
    key = loaded.supernet_key()
    final_dir, state_dir = supernet_dir(run_dir), _state_dir(run_dir)
    recover_dir(final_dir)
    recover_dir(state_dir)
    if checkpoint_matches(run_dir, key):
        log(f"supernet checkpoint {final_dir} matches this recipe (key {key}); reusing it")
        return final_dir
    if (final_dir / META).exists():
        raise CompressError(
            f"{final_dir} holds a supernet trained from a different recipe, data or space; it is left intact. "
            "Use another run directory (--run-dir) or remove that checkpoint to train a new one."
        )
    ensure_writable_dir(run_dir)

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    seed = cfg.training_seed(recipe.seed)
    set_seed(seed)
    data = data or loaded.load_data()
    supernet = HybridSupernet(space, data.in_channels, data.num_classes, data.mean, data.std, few_shot=cfg.few_shot,
                              split_stem=cfg.split_stem)
    if cfg.gradient_projection and accelerator.num_processes > 1:
        raise CompressError("supernet.gradient_projection projects each process's own gradients and is only "
                            "supported in one process; train without it or with one process")
    optimizer = torch.optim.AdamW(_param_groups(supernet, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = len(make_loader(data.train, cfg.batch_size * accelerator.num_processes, shuffle=False,
                                      drop_last=True))
    if steps_per_epoch == 0:
        raise CompressError(f"supernet.batch_size {cfg.batch_size} is larger than the training split "
                            f"({len(data.train)} images)")
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, int(total_steps * cfg.warmup_fraction)))
    model, optimizer, scheduler = accelerator.prepare(supernet, optimizer, scheduler)

    start_epoch = 0
    progress = read_progress(state_dir)
    if progress is not None:
        if progress.get("supernet_key") != key:
            raise CompressError(
                f"{state_dir} holds a partial training run of a different recipe; it is left intact. "
                "Use another run directory (--run-dir) or remove it."
            )
        accelerator.load_state(str(state_dir))
        start_epoch = progress["epochs_done"]
        log(f"resuming supernet training from epoch {start_epoch}/{cfg.epochs} ({state_dir})")

    largest = space.largest()
    teachers = teacher_archs(space, cfg.teacher_families)
    macs = None
    if cfg.subnet_sampling == "macs":
        from compress.search.features import ModelIO, SubnetCosts  # only this option needs MACs

        costs = SubnetCosts(space, ModelIO(data.in_channels, data.image_size, data.num_classes))
        macs = lambda arch: costs(arch).total_macs  # noqa: E731
    temperature = cfg.distill_temperature
    if cfg.kd_loss == "alpha":
        kd_loss = alpha_divergence_loss  # AlphaNet distils at temperature 1
    elif cfg.kd_loss == "labels":
        kd_loss = None  # the students learn from the labels (with the largest's label smoothing)
    else:
        kd_loss = lambda student, teacher: logit_kd_loss(student, teacher, temperature)  # noqa: E731
    started = time.time()
    # A bar on a terminal; in logs (CI, nohup) one line per epoch instead.
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="supernet", unit="step",
               disable=not (accelerator.is_main_process and interactive), dynamic_ncols=True, file=sys.stderr)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        # Seeded per epoch, so a resumed run sees the same batches and subnets as an uninterrupted one and
        # every rank samples the same subnets.
        rng = random.Random(seed * 100_003 + epoch)
        aug_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = accelerator.prepare_data_loader(
            make_loader(data.train, cfg.batch_size, shuffle=True, seed=seed * 100_003 + epoch, drop_last=True)
        )
        epoch_loss, seen = 0.0, 0
        for i, (x, y) in enumerate(loader):
            x = augment_batch(x, crop_padding=recipe.data.augment.crop_padding, hflip=recipe.data.augment.hflip,
                              generator=aug_gen)
            with accelerator.autocast():
                # By global step, so a resumed run takes the same turns.
                supernet.set_active(teachers[(epoch * steps_per_epoch + i) % len(teachers)])
                teacher_logits = model(x)
                largest_loss = F.cross_entropy(teacher_logits, y, label_smoothing=cfg.label_smoothing)
                soft_targets = teacher_logits.detach().float()
                students = [space.sample_smallest(rng)] + sample_random_subnets(space, rng, cfg.random_subnets,
                                                                                 cfg.subnet_sampling, macs)
                student_loss = torch.zeros((), device=largest_loss.device)
                for arch in students:
                    supernet.set_active(arch)
                    logits = model(x).float()
                    student_loss = student_loss + (
                        F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing) if kd_loss is None
                        else kd_loss(logits, soft_targets))
                loss = largest_loss + student_loss
            if not torch.isfinite(loss):
                raise CompressError(
                    f"supernet training loss became {loss.item()} at epoch {epoch + 1}; the last checkpoint "
                    f"({state_dir}) is intact. Lower supernet.lr or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            if cfg.gradient_projection:
                accelerator.backward(largest_loss)
                largest_grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(student_loss)
                project_conflicts(list(model.parameters()), largest_grads)
            else:
                accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * x.shape[0]
            seen += x.shape[0]
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", refresh=False)
        if accelerator.is_main_process and not interactive:
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {epoch_loss / max(seen, 1):.4f} "
                f"({time.time() - started:.0f}s)")
        if (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
            save_training_state(accelerator, state_dir, {"supernet_key": key, "epochs_done": epoch + 1})
    bar.close()
    train_seconds = time.time() - started

    supernet.set_active(largest)
    if accelerator.is_main_process:
        metrics = measure_extremes(supernet, data, cfg.bn_calibration_batches, seed=recipe.seed)
        meta = {
            "supernet_key": key,
            "recipe_hash": loaded.recipe_hash(),
            "recipe": str(loaded.path),
            "recipe_name": recipe.name,
            "space": space.name,
            "data": {**data.describe(), "in_channels": data.in_channels, "num_classes": data.num_classes,
                     "mean": data.mean, "std": data.std},
            "epochs": cfg.epochs,
            "train_seconds_this_session": round(train_seconds, 1),
            "resumed_from_epoch": start_epoch,
            "processes": accelerator.num_processes,
            "few_shot": cfg.few_shot,
            "split_stem": cfg.split_stem,
            "metrics": metrics,
            "versions": package_versions(),
        }
        save_supernet(final_dir, supernet, meta)
        if state_dir.exists():
            shutil.rmtree(state_dir)
        log(f"supernet trained in {train_seconds:.0f}s; val accuracy (BN recalibrated): "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.wait_for_everyone()
    return final_dir


def measure_extremes(supernet: HybridSupernet, data: DatasetSplits, bn_batches: int, seed: int = 0) -> dict[str, float]:
    """Val accuracy of the largest subnet, and of the largest and smallest subnet of each block family (the
    family in every stage that offers it): what a user checks before trusting a search on their data."""
    batches = reference_batches(data.train, seed, bn=bn_batches).bn
    space = supernet.space
    points = {"largest": space.largest()}
    families = sorted({b for s in space.stages for b in s.blocks})
    for family in families:
        blocks = [family if family in s.blocks else s.blocks[0] for s in space.stages]
        if space.largest(blocks) != points["largest"]:
            points[f"largest_{family}"] = space.largest(blocks)
        points[f"smallest_{family}"] = space.smallest(blocks)
    out = {}
    for name, arch in points.items():
        out[name] = round(accuracy(calibrated_subnet(supernet, arch, batches), data.val), 4)
    return out


def load_trained_supernet(run_dir: Path):
    return load_supernet(supernet_dir(run_dir))
