"""Named contracts: the trial record, the one LR schedule, the reference batches, recipes from code, logging."""

from __future__ import annotations

import logging
import math

import optuna
import pytest
import torch
from torch import nn

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def test_trial_records_round_trip_through_a_study(tiny_space):
    import compress
    from compress.policies import Policies, QuantPolicy
    from compress.search.candidate import CandidateSpec
    from compress.search.record import BASELINE, TrialRecord, record_failure, record_result, record_start

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    spec = CandidateSpec(tiny_space.largest(), Policies(quant=QuantPolicy("ort-dynamic", ("stages.2",))), seed=3)
    study.enqueue_trial({}, user_attrs={BASELINE: "largest-int8"})

    def objective(trial):
        record_start(trial, spec, {"torch": torch.__version__})
        if trial.number == 1:
            record_failure(trial, "RuntimeError: " + "x" * 3000)
            raise RuntimeError("boom")
        record_result(trial, {"accuracy": 0.5 + trial.number / 10, "latency_ms": 1.0}, {"merge": "skipped"})
        return 0.5 + trial.number / 10, 1.0

    study.optimize(objective, n_trials=3, catch=(RuntimeError,))
    records = [TrialRecord.from_trial(t) for t in study.trials]
    assert [r.state for r in records] == ["COMPLETE", "FAIL", "COMPLETE"]
    first, failed, last = records
    assert first.baseline == "largest-int8" and last.baseline == ""
    assert CandidateSpec.from_dict(first.spec) == spec and first.exportable
    assert first.policies == spec.policies.describe() and first.notes == {"merge": "skipped"}
    assert failed.fail_reason.startswith("RuntimeError") and len(failed.fail_reason) == 2000 and not failed.exportable
    assert last.values == (0.7, 1.0) and last.to_dict()["metrics"]["accuracy"] == 0.7

    result = compress.front(study)  # the API's front reads the same records
    assert [r.number for r in result.trials] == [2] and result.baselines["largest-int8"].number == 0


def test_the_one_learning_rate_schedule():
    from compress.policies.finetune import warmup_cosine

    f = warmup_cosine(100, 10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))  # decays monotonically after warm-up
    assert warmup_cosine(5, 0)(0) == 1.0 and not math.isnan(warmup_cosine(1, 1)(3))


def test_reference_batches_are_the_searchs_draws():
    from compress.data import calibration_batches, load_dataset, reference_batches

    split = load_dataset("synthetic", image_size=8, channels=3, size=200, num_classes=2, seed=0).train
    a = reference_batches(split, 7, bn=3, calibration=2)
    b = reference_batches(split, 7, bn=3, calibration=2)
    assert [x.shape[0] for x in a.bn] == [64] * 3 and [x.shape[0] for x in a.calibration] == [32] * 2
    assert all(torch.equal(x, y) for x, y in zip(a.bn + a.calibration, b.bn + b.calibration))
    assert torch.equal(a.calibration[0], calibration_batches(split, 2, 32, seed=8)[0])  # seed + 1, as before
    assert reference_batches(split, 7, bn=2).calibration == []


def test_a_recipe_from_code_is_validated_like_a_file(tmp_path):
    import compress
    from compress.errors import RecipeError

    good = {"version": 1, "name": "code", "space": str(FIXTURES / "tiny_space.yaml"),
            "data": {"source": "synthetic", "image_size": 16, "channels": 3, "size": 120, "num_classes": 3}}
    loaded = compress.Recipe.from_dict(good, base_dir=tmp_path)
    assert loaded.space.name == "tiny" and loaded.recipe.data.num_classes == 3
    with pytest.raises(RecipeError, match=r"search\.n_trials"):
        compress.Recipe.from_dict({**good, "search": {"n_trials": -1}}, base_dir=tmp_path)
    with pytest.raises(RecipeError, match="space"):
        compress.Recipe.from_dict({**good, "space": "nowhere.yaml"}, base_dir=tmp_path)


def test_the_library_leaves_the_root_logger_alone():
    import compress
    from compress import QuantPolicy

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    compress.quantize_(model, QuantPolicy(backend="ort-static"), [torch.randn(4, 8)])
    compress.quantize_(model, QuantPolicy(backend="ort-dynamic"), torch.randn(4, 8))
    assert root.level == level and root.handlers == handlers
    assert logging.warning is not None and logging.warning.__module__ == "logging"  # restored


def test_import_compress_is_cheap_and_offers_the_api():
    import subprocess
    import sys

    code = ("import sys, compress; assert 'torch' not in sys.modules; "
            "names = ['quantize_', 'prune_', 'QuantPolicy', 'PrunePolicy', 'Recipe', 'train_supernet', 'run_search', "
            "'front', 'export_artifacts', 'load_artifact', 'load', 'run', 'distill']; "
            "assert all(n in dir(compress) for n in names); assert callable(compress.run_search)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_progress_lines_are_printed_once_even_when_a_dependency_configured_the_root_logger(monkeypatch, capsys):
    import io
    import logging

    from compress import cli

    def command(args):  # a command whose library code logs progress
        logging.getLogger("compress.search.loop").info("trial 1: progress line")
        return 0

    monkeypatch.setattr(cli, "cmd_validate", command)
    stream = io.StringIO()
    root, handler = logging.getLogger(), logging.StreamHandler(stream)
    saved = root.level
    root.addHandler(handler)  # what onnxruntime.quantization's logging.basicConfig(level=INFO) leaves behind
    root.setLevel(logging.INFO)
    try:
        assert cli.main(["validate", "recipe.yaml"]) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    assert capsys.readouterr().out.count("trial 1: progress line") == 1
    assert "progress line" not in stream.getvalue()
    assert logging.getLogger("compress").propagate  # restored after the command
