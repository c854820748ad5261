"""The ranking benchmark's parts: which architectures it picks, its statistics, its stand-alone cache, and the
real-image task it builds (train and val from disjoint parts of each photo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_supernet_ranking as bench  # noqa: E402
import benchlib  # noqa: E402
import make_photo_task  # noqa: E402

from compress.space import SearchSpace  # noqa: E402
from compress.supernet.hybrid import HybridSupernet  # noqa: E402


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_yaml(ROOT / "search_spaces" / "digits_small.yaml")


@pytest.mark.slow  # counts the MACs of ~30 subnets
def test_spread_covers_every_family_combination_and_the_mac_range(space):
    supernet = HybridSupernet(space, 1, 10, [0.5], [0.25])
    chosen = bench.spread_architectures(space, supernet, 24, (1, 1, 32, 32), seed=0, pool_size=6)
    assert len(chosen) == 24 and len({a.key() for a, _ in chosen}) == 24
    patterns = [bench.pattern(a) for a, _ in chosen]
    # digits_small: stage 0 conv only, stages 1 and 2 conv or attn -> 4 combinations, 6 each.
    assert sorted(set(patterns)) == ["conv-attn-attn", "conv-attn-conv", "conv-conv-attn", "conv-conv-conv"]
    assert all(patterns.count(p) == 6 for p in set(patterns))
    kinds = {bench.family_kind(a) for a, _ in chosen}
    assert {"conv-ending", "conv-ending, mixed", "attn-ending, mixed"} == kinds  # stage 0 is always conv
    macs = [m for _, m in chosen]
    assert macs == sorted(macs)
    # Both ends of each combination are included: the space's smallest and largest are among them.
    keys = {a.key() for a, _ in chosen}
    assert space.largest().key() in keys and space.smallest().key() in keys
    assert all(space.problems(a) == [] for a, _ in chosen)
    again = bench.spread_architectures(space, supernet, 24, (1, 1, 32, 32), seed=0, pool_size=6)
    assert [a.key() for a, _ in again] == [a.key() for a, _ in chosen]  # deterministic


def test_rank_statistics_intervals_and_top_quarter():
    x = [float(i) for i in range(24)]
    perfect = benchlib.rank_statistics(x, [2 * v for v in x], resamples=300)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall"] == pytest.approx(1.0)
    assert perfect["spearman_90"][0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = list(np.asarray(x) + rng.normal(0, 8, size=24))
    s = benchlib.rank_statistics(x, noisy, resamples=300)
    lo, hi = s["spearman_90"]
    assert lo < s["spearman"] < hi and hi - lo > 0.1  # a real interval around the point estimate
    assert benchlib.top_overlap(x, x) == (6, 6)
    assert benchlib.top_overlap(x, [-v for v in x]) == (0, 6)


def test_noise_ceiling():
    sd, ceiling = benchlib.noise_ceiling([0.02, -0.02], [0.80, 0.90, 0.85, 0.95])
    assert sd == pytest.approx(0.02 / 2**0.5)
    assert 0 < ceiling < 1
    assert benchlib.noise_ceiling([0.0], [0.8, 0.9])[1] == pytest.approx(1.0)


def test_cache_key_changes_with_the_trainer_source(tmp_path, monkeypatch):
    cache = benchlib.ResultCache(tmp_path / "cache.json")
    key = benchlib.ResultCache.key(code=bench.code_version(), arch="a", seed=0)
    cache.put(key, {"standalone": 0.5})
    assert benchlib.ResultCache(tmp_path / "cache.json").get(key) == {"standalone": 0.5}  # persisted
    # A changed trainer source gives another code version, so the cached result is not found.
    fake_root = tmp_path / "root"
    for name in bench.TRAINING_SOURCES:
        src = ROOT / name
        files = sorted(src.rglob("*.py")) if src.is_dir() else [src]
        for f in files:
            dst = fake_root / f.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    monkeypatch.setattr(bench, "ROOT", fake_root)
    monkeypatch.setattr(benchlib, "ROOT", fake_root)
    same = bench.code_version()
    # a new data source leaves every task's ground truth valid (a task's images are keyed by content) ...
    (fake_root / "compress" / "data" / "another_source.py").write_text("X = 1\n")
    assert bench.code_version() == same
    # ... while a change to what training reads of the data package does not
    loaders = fake_root / "compress" / "data" / "loaders.py"
    original = loaders.read_text()
    loaders.write_text(original + "\n# a change\n")
    assert bench.code_version() != same
    loaders.write_text(original)
    trainer = fake_root / "compress" / "policies" / "finetune.py"
    trainer.write_text(trainer.read_text() + "\n# a change\n")
    changed = bench.code_version()
    assert same != changed
    assert cache.get(benchlib.ResultCache.key(code=changed, arch="a", seed=0)) is None


def _photo(seed: int, w: int, h: int):
    # Smooth random colour fields: real enough to pass the flat-patch filter, cheap to make.
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return lambda: np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def test_photo_task_splits_come_from_disjoint_tiles(tmp_path):
    photos = {"a": _photo(1, 500, 400), "b": _photo(2, 640, 480), "c": _photo(3, 400, 400)}
    out = tmp_path / "task"
    task = make_photo_task.build(out, train_per_class=12, val_per_class=5, seed=0, photos=photos)
    for split, n in (("train", 12), ("val", 5), ("test", 5)):
        for name in photos:
            files = sorted((out / split / name).glob("*.png"))
            assert len(files) == n
            assert Image.open(files[0]).size == (32, 32) and Image.open(files[0]).mode == "RGB"
    assert json.loads((out / "task.json").read_text())["photos"].keys() == photos.keys()
    assert (out / "recipe.yaml").is_file() and not out.with_name("task.partial").exists()
    assert task["photos"]["a"]["val_tiles"] >= 1
    # The tiles of the three splits never share a pixel.
    corners = make_photo_task.tiles(600, 480)
    owner = np.full((480, 600), "", dtype=object)
    T = make_photo_task.TILE
    for split, cs in corners.items():
        for x, y in cs:
            assert (owner[y:y + T, x:x + T] == "").all()
            owner[y:y + T, x:x + T] = split
    assert len(corners["val"]) and len(corners["test"]) and len(corners["train"]) > len(corners["val"])


def test_photo_task_tree_loads_as_an_imagefolder_recipe(tmp_path):
    from compress.recipe import load_recipe

    photos = {name: _photo(i, 480, 480) for i, name in enumerate("abcd")}
    out = tmp_path / "task"
    make_photo_task.build(out, train_per_class=10, val_per_class=4, seed=0, photos=photos)
    loaded = load_recipe(bench.resolve_task(str(out)))
    data = loaded.load_data()
    assert (len(data.train), len(data.val), len(data.test)) == (40, 16, 16)
    assert data.in_channels == 3 and data.num_classes == 4
    assert bench.data_fingerprint(data) != ""
    assert bench.with_epochs(loaded, 3).recipe.supernet.epochs == 3
    assert bench.with_epochs(loaded, 3).supernet_key() != loaded.supernet_key()
    assert (loaded.name, loaded.recipe.supernet.epochs) == ("photos", 60)


def test_a_larger_photo_task_gets_its_own_name_and_budget(tmp_path):
    from compress.recipe import load_recipe

    photos = {name: _photo(i, 480, 480) for i, name in enumerate("ab")}
    out = tmp_path / "large"
    task = make_photo_task.build(out, train_per_class=20, val_per_class=8, seed=0, photos=photos,
                                 name="photos-large", epochs=4)
    loaded = load_recipe(bench.resolve_task(str(out)))
    assert (loaded.name, loaded.recipe.supernet.epochs) == ("photos-large", 4)
    assert (task["name"], task["epochs"]) == ("photos-large", 4)
    assert len(loaded.load_data().val) == 16


def test_bad_arguments_exit_2_with_one_line(capsys):
    assert bench.main(["--task", "no-such-task"]) == 2
    assert "no-such-task" in capsys.readouterr().err
    assert bench.main(["--archs", "1"]) == 2
    assert bench.main(["--ablation", "nodir"]) == 2
    assert "NAME=CHECKPOINT_DIR" in capsys.readouterr().err
    assert make_photo_task.main(["--val-per-class", "0", "--out", "/nonexistent/x"]) == 2
    assert make_photo_task.main(["--name", "../up", "--out", "/nonexistent/x"]) == 2
    assert "--name" in capsys.readouterr().err
    assert make_photo_task.main(["--epochs", "0", "--out", "/nonexistent/x"]) == 2


def test_standalone_accuracy_trains_a_fresh_model(space):
    from compress.data import load_dataset
    from compress.recipe import load_recipe

    loaded = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    data = load_dataset("synthetic", num_classes=3, size=96, image_size=32, channels=1, seed=0)
    supernet = HybridSupernet(space, data.in_channels, data.num_classes, data.mean, data.std)
    torch.manual_seed(0)
    acc, seconds = bench.standalone_accuracy(space.smallest(), supernet, data, loaded.recipe, steps=3, seed=0)
    assert 0.0 <= acc <= 1.0 and seconds >= 0


def test_ground_truth_is_keyed_by_the_model_not_only_the_architecture(space, tmp_path):
    """Regrouped heads build another stand-alone model from the same genes (own ground truth); a few-shot
    supernet builds the same models as a plain one (shared ground truth, trained once)."""
    from compress.data import load_dataset
    from compress.recipe import load_recipe

    loaded = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    data = load_dataset("synthetic", num_classes=3, size=32, image_size=32, channels=1, seed=0)
    raw = space.to_dict()
    for stage in raw["stages"]:
        if "attn" in stage:
            stage["attn"]["heads_mode"] = "regroup"
    regroup_space = SearchSpace.from_dict(raw)
    cache = benchlib.ResultCache(tmp_path / "cache.json")
    truths = {name: bench.GroundTruth(loaded, data, HybridSupernet(s, 1, 3, data.mean, data.std, few_shot=fs),
                                      cache)
              for name, s, fs in (("plain", space, False), ("few_shot", space, True), ("regroup", regroup_space, False))}
    attn = space.largest(["conv", "attn", "attn"])
    conv = space.largest(["conv", "conv", "conv"])
    assert truths["plain"].key(attn, 0) == truths["few_shot"].key(attn, 0)
    assert truths["plain"].key(attn, 0) != truths["regroup"].key(attn, 0)
    assert truths["plain"].key(conv, 0) == truths["regroup"].key(conv, 0)  # no attention: the same model
    assert truths["plain"].key(attn, 0) != truths["plain"].key(attn, 1)


def test_noise_picks_spread_over_the_mac_sorted_architectures():
    assert bench.noise_picks(24, 6) == [0, 5, 9, 14, 18, 23]  # both ends, evenly between
    assert bench.noise_picks(24, 1) == [12]
    assert bench.noise_picks(24, 0) == []
    assert bench.noise_picks(3, 6) == [0, 1, 2]  # never more than there are


def test_bad_jobs_exit_2(capsys):
    assert bench.main(["--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_bad_recovery_steps_exit_2(capsys):
    for bad in ("0", "50,x", "-5"):
        assert bench.main(["--recovery-steps", bad]) == 2
        assert "--recovery-steps" in capsys.readouterr().err


def test_recovery_ranking_reads_the_recovered_accuracy():
    # Inherited accuracy ranks these four backwards; after recovery they rank exactly as stand-alone.
    rows = [{"inherited": 0.9 - 0.1 * i, "standalone": 0.5 + 0.1 * i, "recovered": {50: 0.45 + 0.1 * i},
             "last": "conv" if i % 2 else "attn"} for i in range(4)]
    assert bench.summarize(rows)["spearman"] == pytest.approx(-1.0)
    after = bench.summarize(rows, 50)
    assert after["spearman"] == pytest.approx(1.0) and after["top_quarter"] == [1, 1]
    assert after["gap_by_last_family"]["conv-ending"]["mean"] == pytest.approx(-0.05)
    md, stats = bench.recovery_lines(rows, (50,))
    assert set(stats) == {"50"} and any(line.startswith("| 50 | 1.000") for line in md)


def test_calibration_draws_are_ranked_one_by_one():
    # The search's own draw ranks these four perfectly; a second draw reverses two of them.
    rows = [{"inherited": 0.5 + 0.1 * i, "standalone": 0.5 + 0.1 * i, "recovered": {},
             "inherited_draws": [0.5 + 0.1 * i, [0.6, 0.5, 0.7, 0.8][i]], "last": "conv"} for i in range(4)]
    s = bench.summarize(rows)
    assert s["spearman"] == pytest.approx(1.0)
    assert s["spearman_draws"]["values"] == pytest.approx([1.0, 0.8])
    assert bench.fmt_draws(s) == "0.900 (0.80 to 1.00)"
    assert "spearman_draws" not in bench.summarize([{**r, "inherited_draws": r["inherited_draws"][:1]} for r in rows])


def test_bad_calibration_draws_exit_2(capsys):
    assert bench.main(["--calibration-draws", "0"]) == 2
    assert "--calibration-draws" in capsys.readouterr().err


def _option(name: str, archs: list[str], spearman: float, draws: list[float] | None = None) -> dict:
    rows = [{"arch": a, "inherited": 0.9 + 0.01 * i, "standalone": 0.9 + 0.01 * i, "recovered": {}, "last": "conv"}
            for i, a in enumerate(archs)]
    out = {"option": name, "epochs": 3, "train_seconds": 1.0, "resumed_from_epoch": None,
           "metrics": {"largest": 0.9, "smallest_conv": 0.8}, "rows": rows, "spearman": spearman,
           "spearman_90": [spearman - 0.1, spearman + 0.1], "kendall": spearman, "kendall_90": [0.0, 1.0],
           "top_quarter": [1, 1], "gap_by_last_family": {"conv-ending": {"n": 2, "mean": 0.0, "min": 0.0, "max": 0.0}},
           "recovery": {}}
    if draws:
        out["spearman_draws"] = {"values": draws, "min": min(draws), "median": float(np.median(draws)),
                                 "max": max(draws)}
    return out


def test_ablation_table_keeps_the_options_measured_earlier(space, tmp_path, capsys):
    models = [space.smallest(), space.largest()]
    archs = [a.describe() for a in models]
    earlier = [_option("baseline", archs, 0.3), _option("few_shot", archs, 0.2)]
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps({"task": "mosaic", "epochs": 3, "options": earlier}))
    kept = bench.read_options(path, "mosaic", 3, archs)
    assert [o["option"] for o in kept] == ["baseline", "few_shot"]
    # measured again under the same name: replaced in its place; a new name: appended
    merged = bench.merge_options(kept, [_option("longer", archs, 0.7, [0.6, 0.7, 0.8]), _option("few_shot", archs, 0.5)])
    assert [(o["option"], o["spearman"]) for o in merged] == [("baseline", 0.3), ("few_shot", 0.5), ("longer", 0.7)]
    md = bench.ablation_markdown("mosaic", 3, models, merged)
    table = md[:next(i for i, line in enumerate(md) if line.startswith("Mean gap"))]  # before the bias table
    assert len([line for line in table if line.startswith("| ")]) == 2 + 3
    assert next(line for line in md if line.startswith("| longer")).endswith("0.700 (0.60 to 0.80) |")
    assert next(line for line in md if line.startswith("| baseline")).endswith("| - |")  # no draws then
    # Another set of architectures (or task, or budget): the earlier rows cannot share a table with these.
    assert bench.read_options(path, "mosaic", 3, archs[::-1]) == []
    assert "replaced" in capsys.readouterr().out
    assert bench.read_options(path, "mosaic", 4, archs) == [] and bench.read_options(tmp_path / "none", "m", 3, archs) == []


def test_ground_truth_only_trains_each_model_once_without_a_supernet(tmp_path, monkeypatch, capsys):
    photos = {name: _photo(i, 480, 480) for i, name in enumerate("abcd")}
    task = tmp_path / "task"
    make_photo_task.build(task, train_per_class=16, val_per_class=4, seed=0, photos=photos)  # 64: one step an epoch
    monkeypatch.setattr(bench, "CACHE", tmp_path / "standalone.json")
    argv = ["--task", str(task), "--ground-truth-only", "--archs", "2", "--noise-archs", "1", "--epochs", "2",
            "--pool", "2"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 stand-alone models (2 steps each), 0 cached" in out
    cache = json.loads((tmp_path / "standalone.json").read_text())
    assert sorted(e["seed"] for e in cache.values()) == [0, 0, 1] and all(e["steps"] == 2 for e in cache.values())

    def untrained(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(bench, "finetune", untrained)  # not standalone_accuracy: its source is in the key
    assert bench.main(argv) == 0
    assert "3 cached" in capsys.readouterr().out


def test_cached_only_ranks_what_is_cached_and_trains_nothing(tmp_path, monkeypatch, capsys):
    photos = {name: _photo(i, 480, 480) for i, name in enumerate("abcd")}
    task = tmp_path / "task"
    make_photo_task.build(task, train_per_class=16, val_per_class=4, seed=0, photos=photos)
    monkeypatch.setattr(bench, "CACHE", tmp_path / "standalone.json")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(benchlib, "RESULTS", tmp_path / "results")
    common = ["--task", str(task), "--archs", "4", "--noise-archs", "2", "--epochs", "2", "--pool", "2"]
    assert bench.main([*common, "--ground-truth-only"]) == 0
    cache = json.loads((tmp_path / "standalone.json").read_text())
    assert len(cache) == 6
    # Drop the first seed of one architecture that was also trained with a second seed: it leaves the ranking,
    # and so does its noise pair; the other noise pair stays.
    dropped = next(k for k, e in cache.items() if e["seed"] == 0 and any(
        o["seed"] == 1 and o["arch"] == e["arch"] for o in cache.values()))
    arch = cache.pop(dropped)["arch"]
    (tmp_path / "standalone.json").write_text(json.dumps(cache))

    def untrained(*args, **kwargs):
        raise AssertionError("--cached-only trained a model")

    monkeypatch.setattr(bench, "finetune", untrained)
    capsys.readouterr()
    assert bench.main([*common, "--cached-only", "--run-dir", str(tmp_path / "run")]) == 0
    assert "3 of 4 architectures have a cached stand-alone result, 1 of them a second seed too" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "supernet_ranking_photos_2ep.json").read_text())
    assert result["architectures_planned"] == 4 and len(result["rows"]) == 3 and len(result["noise"]) == 1
    assert arch not in {r["arch"] for r in result["rows"]} and all(r["cached"] for r in result["rows"])
    assert "**Partial**: only the 3 of the 4" in (tmp_path / "results" / "supernet_ranking_photos_2ep.md").read_text()
    assert bench.main([*common, "--cached-only", "--ablation", f"x={tmp_path}"]) == 2


def test_choice_bias_averages_the_gap_per_value_of_a_choice(space):
    # Four architectures: those with attention in stage 1 inherit 2 points below stand-alone, conv ones exactly;
    # every other choice is balanced between the two, so only the family shows a difference.
    archs = [space.smallest(["conv", b, "conv"]) for b in ("attn", "conv")]
    archs += [space.largest(["conv", b, "conv"]) for b in ("attn", "conv")]
    rows = []
    for i, a in enumerate(archs):
        inherited = 0.9 + 0.01 * i - (0.02 if a.stages[1].block == "attn" else 0.0)
        rows.append({"inherited": inherited, "standalone": 0.9 + 0.01 * i, "inherited_draws": [inherited] * 2})
    bias = bench.choice_bias(rows, archs)
    assert bias["stage 1 family"] == pytest.approx({"attn": -0.02, "conv": 0.0})
    assert bias["stem width"] == pytest.approx({"8": -0.01, "16": -0.01})
    assert "stage 0 family" not in bias  # one value only: nothing to compare
    md = bench.bias_markdown(archs, [{"option": "a", "rows": rows, "spearman": 0.1},
                                     {"option": "b", "rows": rows, "spearman": 0.2}])
    assert "| stage 1 family attn | -2.00 | -2.00 |" in md
