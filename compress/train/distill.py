"""``compress distill``: longer distillation of an exported student, launched with ``accelerate launch``.

The loop is ordinary PyTorch plus accelerate (``prepare``, ``accumulate``, ``backward``,
``gather_for_metrics``), so the same command runs in one CPU process, several CPU processes (gloo) or many
GPUs. The student trains in floating point (INT8 weights are dequantized first) and is quantized again with
its own policy at the end; the result is a new artifact whose provenance names its parent and its teacher.
State is saved with ``save_state`` every ``checkpoint_every`` steps; a run started again resumes from it.
"""

from __future__ import annotations

import logging
import datetime
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.data import ImageDataset, augment_batch, reference_batches
from compress.errors import CompressError
from compress.fsutil import ensure_writable_dir, recover_dir
from compress.policies import DistillPolicy, Policies
from compress.policies.distill import distill_loss
from compress.policies.finetune import logits_and_features, warmup_cosine
from compress.recipe import LoadedRecipe, TargetConfig
from compress.train.state import read_progress, save_training_state
from compress.search.teacher import check_teacher_outputs, load_teacher

logger = logging.getLogger(__name__)

class WithFeatures(nn.Module):
    """Logits and pooled features from one forward, so DDP sees a single call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logits_and_features(self.model, x)


def _check_student(student_cfg, loaded: LoadedRecipe, data) -> None:
    fingerprint = student_cfg.provenance.get("space_fingerprint")
    if fingerprint is not None and fingerprint != loaded.space.fingerprint():
        raise CompressError(f"the student comes from search space {student_cfg.provenance.get('space')!r}, not from "
                            f"this recipe's {loaded.space.name!r} ({loaded.space_path}); distill it with its own recipe")
    shape = [data.in_channels, data.image_size, data.image_size]
    if list(student_cfg.input["shape"]) != shape:
        raise CompressError(f"the student takes images {student_cfg.input['shape']}, the recipe's data are {shape}")
    if student_cfg.model["num_classes"] != data.num_classes:
        raise CompressError(f"the student predicts {student_cfg.model['num_classes']} classes, the recipe's data has "
                            f"{data.num_classes}")


def run_distillation(loaded: LoadedRecipe, student_path: Path, out_dir: Path, *, teacher: str | None = None,
                     teacher_weights: str | None = None, supernet_dir: Path | None = None,
                     overrides: dict | None = None, restart: bool = False, log=None) -> Path | None:
    """Distill the student artifact; returns the new artifact's path (on the main process)."""
    log = log or logger.info  # progress goes to logging; the CLI shows it
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    import compress
    from compress.deploy import float_model, lower
    from compress.export.artifact import read_config, write_artifact
    from compress.measure.accuracy import accuracy
    from compress.provenance import machine, package_versions
    from compress.search.candidate import Candidate, CandidateSpec, measure
    from compress.supernet.checkpoint import supernet_dir as default_supernet_dir

    cfg = loaded.recipe.distill.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    teacher_spec = teacher or cfg.teacher
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    main = accelerator.is_main_process
    set_seed(loaded.recipe.seed)

    # Everything that can be wrong is checked before the first step.
    student_cfg = read_config(student_path)
    data = loaded.load_data()
    _check_student(student_cfg, loaded, data)
    student = float_model(compress.load(student_path)).train()
    # The same draws as the search and the export (student and teacher see the images they were built with).
    reference = reference_batches(data.train, loaded.recipe.seed, bn=loaded.recipe.supernet.bn_calibration_batches,
                                  calibration=loaded.recipe.search.policies.quantize.calibration_batches)
    bn = reference.bn
    teacher_model, teacher_desc = load_teacher(teacher_spec, weights=teacher_weights or cfg.teacher_weights,
                                               supernet_dir=supernet_dir or default_supernet_dir(loaded.run_dir()),
                                               bn_batches=bn)
    example = bn[0][:4]
    check_teacher_outputs(teacher_model, example, data.num_classes)
    check_teacher_outputs(student.eval(), example, data.num_classes, what="student")
    student.train()
    if main:
        ensure_writable_dir(out_dir.parent, "output directory")
    policy = DistillPolicy(steps=cfg.steps, temperature=cfg.temperature, weight=cfg.weight,
                           feature_weight=cfg.feature_weight, lr=cfg.lr, batch_size=cfg.batch_size)

    if len(data.train) < cfg.batch_size * accelerator.num_processes:  # drop_last would leave no batch: no step ever
        raise CompressError(f"distill.batch_size {cfg.batch_size} (x {accelerator.num_processes} process(es)) is larger "
                            f"than the training split ({len(data.train)} images); lower --batch-size")
    generator = torch.Generator().manual_seed(loaded.recipe.seed)
    loader = torch.utils.data.DataLoader(ImageDataset(data.train), batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, generator=generator)
    val_loader = torch.utils.data.DataLoader(ImageDataset(data.val), batch_size=256, shuffle=False)
    wrapped = WithFeatures(student)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps, cfg.steps // 20))
    model, optimizer, loader, val_loader, scheduler = accelerator.prepare(wrapped, optimizer, loader, val_loader,
                                                                           scheduler)
    teacher_model.to(accelerator.device)

    state_dir = out_dir.with_name(out_dir.name + ".state")
    recover_dir(state_dir)
    step, epoch, batch_in_epoch, resumed_from = 0, 0, 0, 0
    # What a resumed run must share with the saved one; any other value would continue a different run.
    run_settings = {"student": str(Path(student_path).resolve()), "processes": accelerator.num_processes,
                    "teacher": teacher_desc, "steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
                    "temperature": cfg.temperature, "weight": cfg.weight, "feature_weight": cfg.feature_weight,
                    "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "seed": loaded.recipe.seed}
    progress = read_progress(state_dir)
    if progress is not None and restart:
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(state_dir)
            log(f"--restart: the saved state in {state_dir} is discarded")
        accelerator.wait_for_everyone()
        progress = None
    if progress is not None:
        changed = [f"{k} ({progress[k]!r} then, {v!r} now)" for k, v in run_settings.items()
                   if k in progress and progress[k] != v]
        changed += [k for k in run_settings if k not in progress]  # states saved before these were recorded
        if changed:
            raise CompressError(f"{state_dir} holds a run with other settings: {', '.join(changed)}; it is left "
                                "intact. Give the same settings to resume, or --restart to start over.")
        accelerator.load_state(str(state_dir))
        step, epoch, batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
        resumed_from = step
        if main:
            log(f"resuming distillation from step {step}/{cfg.steps} ({state_dir})")

    seen = torch.zeros(1, dtype=torch.long, device=accelerator.device)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", unit="step", disable=not (main and interactive),
               file=sys.stderr, dynamic_ncols=True)
    aug = loaded.recipe.data.augment
    aug_gen = torch.Generator().manual_seed(loaded.recipe.seed * 7919 + accelerator.process_index)
    started = time.time()
    last_eval = None
    while step < cfg.steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
        for x, y in epoch_loader:
            batch_in_epoch += 1
            seen += x.shape[0]
            x = augment_batch(x, crop_padding=aug.crop_padding, hflip=aug.hflip, generator=aug_gen)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits, features = model(x)
                    with torch.no_grad():
                        t_logits, t_features = logits_and_features(teacher_model, x)
                    loss = distill_loss(policy, y, logits.float(), t_logits.float(), features, t_features)
                if not torch.isfinite(loss):
                    raise CompressError(f"distillation loss became {loss.item()} at step {step + 1}; the last "
                                        f"checkpoint ({state_dir}) is intact. Lower distill.lr.")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_eval = _evaluate(accelerator, model, val_loader)
                if main and not interactive:
                    log(f"step {step}/{cfg.steps} loss {loss.item():.4f} val accuracy {last_eval:.4f} "
                        f"({time.time() - started:.0f}s)")
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_training_state(accelerator, state_dir, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                                             **run_settings})
            if step >= cfg.steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break
    bar.close()
    samples_per_rank = accelerator.gather(seen).tolist()
    optimizer_steps = _optimizer_steps(optimizer)
    accelerator.wait_for_everyone()
    if not main:
        return None

    trained = accelerator.unwrap_model(model).model.eval().cpu()
    target = TargetConfig.model_validate(student_cfg.target)
    policies = Policies.from_dict(student_cfg.policies or {})
    shape = (target.batch_size, data.in_channels, data.image_size, data.image_size)
    calibration = reference.calibration
    deployable = lower(trained, student_cfg.runtime, policies.quant, calibration, shape, device=target.local_device)
    metrics = measure(trained, deployable, data, target)
    test_acc = accuracy(deployable.runner(threads=1), data.test)
    from compress.space import Arch

    spec = CandidateSpec(Arch.from_dict(student_cfg.arch), policies, seed=loaded.recipe.seed)
    provenance = {
        **{k: v for k, v in student_cfg.provenance.items() if k in ("space", "space_fingerprint", "supernet_key")},
        "recipe": str(loaded.path),
        "data": loaded.data_record(),
        "recipe_hash": loaded.recipe_hash(),
        "parent_artifact": str(Path(student_path).resolve()),
        "parent_metrics": {k: student_cfg.metrics.get(k) for k in ("accuracy", "test_accuracy", "latency_ms", "size_mb")},
        "teacher": teacher_desc,
        "distillation": {**policy.to_dict(), "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                         "mixed_precision": cfg.mixed_precision, "processes": accelerator.num_processes,
                         "samples_per_rank": samples_per_rank, "resumed_from_step": resumed_from,
                         "optimizer_steps": optimizer_steps, "seconds_this_session": round(time.time() - started, 1),
                         "last_val_accuracy_float": last_eval},
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "machine": machine(),
    }
    path = write_artifact(out_dir, Candidate(spec, trained, deployable), metrics, data=data, target=target,
                          provenance=provenance, extra_metrics={"test_accuracy": test_acc})
    if state_dir.exists():
        shutil.rmtree(state_dir)
    log(f"distilled {student_path} -> {path}: val accuracy {metrics.accuracy:.4f} (parent "
        f"{student_cfg.metrics['accuracy']:.4f}), test {test_acc:.4f}, latency {metrics.latency_ms:.3f} ms, "
        f"size {metrics.size_mb:.3f} MB; {accelerator.num_processes} process(es), samples per rank {samples_per_rank}")
    return path


def _evaluate(accelerator, model, val_loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val_loader:
            logits, _ = model(x)
            preds, labels = accelerator.gather_for_metrics((logits.argmax(-1), y))
            correct += (preds == labels).sum().item()
            total += labels.numel()
    model.train()
    return correct / max(total, 1)


def _optimizer_steps(optimizer) -> int:
    state = optimizer.state_dict()["state"]
    return int(max((float(s["step"]) for s in state.values() if "step" in s), default=0))
