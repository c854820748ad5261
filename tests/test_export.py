"""Artifacts: export reproduces the trial, compress.load needs no supernet, corruption is refused."""

import json

import pytest
import torch

import compress
from compress.errors import CheckpointError
from compress.measure.accuracy import accuracy


@pytest.mark.slow
def test_artifacts_reproduce_their_trials(exported_run):
    loaded, study, artifacts = exported_run
    trials = {t.number: t for t in study.best_trials}
    assert len(artifacts) == len(trials) >= 1
    data = loaded.load_data()
    for path in artifacts:
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "model.onnx", "README.md"} <= names
        config = json.loads((path / "config.json").read_text())
        trial = trials[config["provenance"]["trial"]]
        assert config["provenance"]["study"] == "tiny" and config["provenance"]["supernet_key"]
        assert config["provenance"]["versions"]["torch"] == torch.__version__
        # The deployed model (ONNX Runtime) gives exactly the trial's accuracy on the same split.
        deployed = compress.load(path, runtime="onnxruntime")
        assert accuracy(deployed, data.val) == trial.user_attrs["metrics"]["accuracy"]
        # The PyTorch model is rebuilt from config + safetensors alone.
        model = compress.load(path)
        assert not any("Elastic" in type(m).__name__ for m in model.modules())
        agree = (model(data.val.images.float() / 255).argmax(1) == deployed(data.val.images.float() / 255).argmax(1))
        assert agree.float().mean() > 0.9
        if config["quantization"]["int8_layers"]:
            assert any("Int8" in type(m).__name__ for m in model.modules())
        card = (path / "README.md").read_text()
        assert f"{config['metrics']['accuracy']:.4f}" in card


@pytest.mark.slow
def test_evaluate_reports_the_recorded_accuracy(exported_run, compress_cli):
    _, _, artifacts = exported_run
    proc = compress_cli("evaluate", artifacts[0])
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((artifacts[0] / "config.json").read_text())["metrics"]["accuracy"]
    assert f"val accuracy  {recorded:.4f}   (recorded {recorded:.4f})" in proc.stdout


@pytest.mark.slow
def test_corrupted_and_tampered_artifacts_are_refused(exported_run, tmp_path, compress_cli):
    import shutil

    _, _, artifacts = exported_run
    src = artifacts[0]

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    broken = copy("truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checksum does not match"):
        compress.load(broken)

    pickled = copy("pickled")
    torch.save({"w": torch.zeros(3)}, pickled / "model.safetensors")
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        compress.load(pickled)

    tampered = copy("tampered")
    config = json.loads((tampered / "config.json").read_text())
    config["model"]["stages"][0]["out"] += 4
    (tampered / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        compress.load(tampered)

    garbage = copy("garbage")
    (garbage / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        compress.load(garbage)

    missing = copy("missing-field")
    config = json.loads((missing / "config.json").read_text())
    del config["quantization"]
    (missing / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quantization: required field is missing"):
        compress.load(missing)

    proc = compress_cli("evaluate", broken)
    assert proc.returncode == 2 and "checksum does not match" in proc.stderr
    # The original artifact is untouched by all of this.
    assert compress.load(src) is not None


def test_export_of_unknown_or_missing_trials_is_refused(exported_run, compress_cli):
    _, study, artifacts = exported_run
    run_dir = artifacts[0].parent.parent
    proc = compress_cli("export", run_dir, "--trial", "999")
    assert proc.returncode == 2 and "has no trial 999" in proc.stderr
    proc = compress_cli("export", run_dir)
    assert proc.returncode == 2 and "--trial N" in proc.stderr


def test_safetensors_whose_header_length_starts_with_0x80_are_not_taken_for_pickles(tmp_path):
    """safetensors begins with its header's length; 0x80 as its first byte is a pickle's first byte too. One
    exported quickstart artifact had such a header (0x1080 bytes) and could not be loaded."""
    import io
    import pickle

    from safetensors.torch import save

    from compress.weights import HEAD_BYTES, is_pickle, load_safetensors

    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    blob = next(b for b in (save(tensors, metadata={"pad": "x" * n}) for n in range(512)) if b[0] == 0x80)
    (tmp_path / "model.safetensors").write_bytes(blob)
    assert not is_pickle(blob[:HEAD_BYTES])
    torch.testing.assert_close(load_safetensors(tmp_path / "model.safetensors")["w"], tensors["w"])

    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save(tensors, zipped)
    torch.save(tensors, legacy, _use_new_zipfile_serialization=False)
    for refused in [zipped.getvalue(), legacy.getvalue()] + [pickle.dumps(tensors, protocol=p) for p in (2, 3, 4, 5)]:
        assert is_pickle(refused[:HEAD_BYTES])
        (tmp_path / "model.safetensors").write_bytes(refused)
        with pytest.raises(CheckpointError, match="refuses to unpickle"):
            load_safetensors(tmp_path / "model.safetensors")


@pytest.mark.slow
def test_export_loads_the_weights_a_trial_trained_and_trains_again_without_them(tiny_run, monkeypatch):
    """A distilling trial keeps its recovered weights; export builds it from them without training, and, with
    them gone (another machine's trial), trains again and gets the same model."""
    import shutil

    import compress.search.candidate as candidate_module
    from compress.api import export_artifacts
    from compress.recipe import load_recipe
    from compress.rundir import save_run_info
    from compress.search.loop import run_search
    from compress.search.record import TrialRecord
    from compress.search.trial_weights import STORE_DIR

    policies = {"quantize": {"calibration_batches": 2}, "distill": {"enabled": True, "steps": [6]}}
    loaded = load_recipe(tiny_run(search={"n_trials": 6, "sampler": {"name": "random"}, "policies": policies}))
    run_dir = loaded.run_dir()
    study = run_search(loaded, run_dir, log=lambda *_: None)
    save_run_info(run_dir, loaded, f"sqlite:///{run_dir / 'study.db'}", "tiny")
    records = [TrialRecord.from_trial(t) for t in study.trials if t.state.name == "COMPLETE"]
    distilled = [r for r in records if r.spec["policies"]["distill"]["steps"] > 0]
    assert distilled, "no trial of this seed chose recovery distillation; pick another seed"
    assert all(r.weights for r in distilled) and not any(r.weights for r in records if r not in distilled)
    number = distilled[0].number

    trainings = []
    real_finetune = candidate_module.finetune

    def counted_finetune(*args, **kwargs):
        trainings.append(1)
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(candidate_module, "finetune", counted_finetune)

    def export_once(out: str) -> dict:
        (path,) = export_artifacts(run_dir, trials=[number], out=run_dir / out)
        return json.loads((path / "config.json").read_text())

    from_kept = export_once("kept")
    assert trainings == [] and from_kept["provenance"]["recovery"] == "the trial's kept weights"
    shutil.rmtree(run_dir / STORE_DIR)
    retrained = export_once("retrained")
    assert trainings == [1] and retrained["provenance"]["recovery"] == "trained again"
    # Both are the model the trial measured.
    assert from_kept["metrics"]["accuracy"] == retrained["metrics"]["accuracy"] == distilled[0].metrics["accuracy"]
