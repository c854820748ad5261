"""Supernet training through the CLI: checkpoint contents, resume after SIGKILL, reuse, refusal to overwrite."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from compress.supernet.checkpoint import load_supernet
from compress.weights import load_safetensors
from tests.conftest import tiny_recipe
from tests.hold import start_held, wait_until_held



def write_recipe(tmp_path: Path, epochs: int = 4) -> Path:
    return tiny_recipe(tmp_path, data={"size": 600}, supernet={"epochs": epochs, "checkpoint_every": 1})


@pytest.mark.slow
def test_train_kill_resume_and_reuse(tmp_path, compress_cli):
    def run_cli(*args, check=True):
        proc = compress_cli(*args)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    recipe = write_recipe(tmp_path, epochs=4)
    run = tmp_path / "run"
    progress = run / "supernet-state" / "progress.json"
    # The second checkpoint hangs, so the kill lands after the first one however fast the machine.
    log = tmp_path / "train.log"
    proc = start_held("compress.train.supernet:save_training_state", 2, ["train-supernet", str(recipe)], log)
    wait_until_held(proc, log)
    assert progress.exists(), "no resumable state was written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(progress.read_text())["epochs_done"]
    assert 1 <= done_before < 4
    assert not (run / "supernet" / "checkpoint.json").exists()

    out = run_cli("train-supernet", str(recipe)).stdout
    assert f"resuming supernet training from epoch {done_before}/4" in out
    ckpt = load_supernet(run / "supernet")
    assert ckpt.meta["resumed_from_epoch"] == done_before
    assert ckpt.meta["epochs"] == 4
    assert set(ckpt.meta["metrics"]) == {"largest", "largest_attn", "largest_conv", "smallest_attn", "smallest_conv"}
    assert ckpt.meta["metrics"]["largest"] > 0.5  # 4 classes: well above chance
    assert ckpt.meta["data"]["num_classes"] == 4 and ckpt.meta["data"]["in_channels"] == 3
    assert not (run / "supernet-state").exists()  # partial state cleaned up once the final checkpoint exists
    # The resumed run is the uninterrupted run: same batches, subnets, optimizer and scheduler state.
    straight = tmp_path / "straight"
    straight.mkdir()
    run_cli("train-supernet", str(write_recipe(straight, epochs=4)))
    resumed, uninterrupted = (load_safetensors(d / "supernet" / "supernet.safetensors") for d in (run, straight / "run"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)

    # Same recipe again: reused, not retrained.
    out = run_cli("train-supernet", str(recipe)).stdout
    assert "matches this recipe" in out

    # A different supernet setting in the same run dir: refused, the checkpoint stays intact.
    before = (run / "supernet" / "supernet.safetensors").read_bytes()
    other = write_recipe(tmp_path, epochs=3)
    proc = run_cli("train-supernet", str(other), check=False)
    assert proc.returncode == 2
    assert "holds a supernet trained from a different recipe" in proc.stderr
    assert (run / "supernet" / "supernet.safetensors").read_bytes() == before


def test_corrupted_checkpoints_are_refused(tmp_path, tiny_supernet):
    from compress.errors import CheckpointError
    from compress.supernet.checkpoint import save_supernet

    meta = {"data": {"in_channels": 3, "num_classes": 5, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}
    path = tmp_path / "ckpt"
    save_supernet(path, tiny_supernet, meta)
    assert load_supernet(path).supernet.state_dict().keys() == tiny_supernet.state_dict().keys()

    weights = path / "supernet.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_supernet(path)

    import torch

    torch.save(tiny_supernet.state_dict(), weights)  # a pickle where safetensors belong
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_supernet(path)

    weights.write_bytes(good)
    space_file = path / "space.yaml"
    space_file.write_text(space_file.read_text().replace("name: tiny", "name: other"))
    with pytest.raises(CheckpointError, match="space_fingerprint differs"):
        load_supernet(path)
