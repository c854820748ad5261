"""Tests for the data layer (compress.data): every source, the splits, loaders and user-facing errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import (
    SOURCES,
    ImageDataset,
    Split,
    augment_batch,
    calibration_batches,
    load_dataset,
    make_loader,
)
from compress.data.cifar import RECORD_BYTES
from compress.data.digits import base_digits, digit_split_indices
from compress.data.images import to_uint8
from compress.data.clutter import DIGIT_SIZE, build_clutter_splits, clutter_counts, compose_clutter
from compress.data.mosaic import build_mosaic_splits, compose_mosaics, mosaic_counts
from compress.errors import DataError

# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_total():
    data = load_dataset("digits")
    splits = (data.train, data.val, data.test)
    assert sum(len(s) for s in splits) == 1797
    for s in splits:
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert s.images.shape[1:] == (1, 8, 8)
        assert len(s) > 0
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 8)
    assert data.class_names == [str(d) for d in range(10)]
    assert len(data.val) == len(data.test) == 270
    # 16 (sklearn's max) maps to 255: the scaling to [0, 1] happened.
    assert int(data.train.images.max()) == 255


def test_digits_pixels_match_sklearn():
    images, labels = base_digits()
    data = load_dataset("digits")
    index = digit_split_indices(labels, 0.15, 0.15, 0)["test"]
    assert torch.equal(data.test.labels, labels[index])
    assert torch.equal(data.test.images, to_uint8(images[index]))


def test_digits_deterministic_and_seed_dependent():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)
    assert not torch.equal(a.val.images, c.val.images)


def test_digits_splits_are_disjoint_and_stratified():
    _, labels = base_digits()
    parts = digit_split_indices(labels, 0.15, 0.15, 7)
    all_idx = torch.cat(list(parts.values()))
    assert all_idx.unique().numel() == all_idx.numel() == 1797
    overall = torch.bincount(labels, minlength=10).float() / 1797
    for name, idx in parts.items():
        counts = torch.bincount(labels[idx], minlength=10)
        assert (counts > 0).all(), name
        # Each class's share of the split is within a couple of images of its share overall.
        assert torch.allclose(counts.float() / idx.numel(), overall, atol=2.0 / idx.numel() + 1e-6), name


def test_digits_resize_and_channels():
    data = load_dataset("digits", image_size=32, channels=3)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.image_size == 32 and data.in_channels == 3
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])
    small = load_dataset("digits", image_size=4)
    assert small.test.images.shape[1:] == (1, 4, 4)


def test_mean_std_computed_on_train():
    data = load_dataset("digits", image_size=16, channels=3)
    x = data.train.images.double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert data.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_declared_normalize_used_and_validated():
    data = load_dataset("digits", normalize={"mean": [0.5], "std": [0.25]})
    assert (data.mean, data.std) == ([0.5], [0.25])
    with pytest.raises(DataError, match=r"data\.normalize\.mean.*1 numbers"):
        load_dataset("digits", normalize={"mean": [0.5, 0.5, 0.5], "std": [0.2]})
    with pytest.raises(DataError, match=r"data\.normalize\.std must be positive"):
        load_dataset("digits", normalize={"mean": [0.5], "std": [0.0]})
    with pytest.raises(DataError, match=r"data\.normalize"):
        load_dataset("digits", normalize={"mean": [0.5]})


def test_describe_is_json_able():
    data = load_dataset("digits")
    summary = json.loads(json.dumps(data.describe()))
    assert summary["sizes"] == {"train": 1257, "val": 270, "test": 270}
    assert summary["num_classes"] == 10 and summary["in_channels"] == 1 and summary["image_size"] == 8
    assert summary["mean"] == data.mean and "digits" in summary["source"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 0.5}, "data.val_fraction"),
        ({"test_fraction": -0.1}, "data.test_fraction"),
        ({"image_size": 2}, "data.image_size"),
        ({"image_size": 2048}, "data.image_size"),
        ({"channels": 2}, "data.channels"),
        ({"num_classes": 5}, "data.num_classes"),
    ],
)
def test_option_validation(kwargs, field):
    with pytest.raises(DataError, match=field.replace(".", r"\.")):
        load_dataset("digits", **kwargs)


def test_empty_test_split_is_an_error():
    with pytest.raises(DataError, match="test split is empty"):
        load_dataset("digits", test_fraction=0.0)


def test_unknown_source_lists_valid_ones():
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "'mnist'" in message
    for source in SOURCES:
        assert source in message


# ---------------------------------------------------------------- digits-mosaic


def _assert_repeated_digit_rule(m, labels):
    for cells, label in zip(m.cells.tolist(), m.labels.tolist()):
        cell_labels = labels[torch.tensor(cells)].tolist()
        counts = sorted(cell_labels.count(c) for c in set(cell_labels))
        assert counts == [1, 1, 2], cell_labels  # one digit twice, two other distinct digits once
        assert cell_labels.count(label) == 2
        twins = [c for c, cl in zip(cells, cell_labels) if cl == label]
        assert twins[0] != twins[1]  # two different images of the label digit


def test_compose_mosaics_label_rule_and_layout():
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous() * 20
    labels = torch.tensor([3, 9, 4, 7, 0, 5, 3, 9, 4, 7, 0, 5])
    m = compose_mosaics(images, labels, 300, seed=1)
    assert m.images.shape == (300, 1, 4, 4) and m.cells.shape == (300, 4)
    _assert_repeated_digit_rule(m, labels)
    # Cell order is top-left, top-right, bottom-left, bottom-right.
    quadrants = [m.images[:, :, :2, :2], m.images[:, :, :2, 2:], m.images[:, :, 2:, :2], m.images[:, :, 2:, 2:]]
    for k, quadrant in enumerate(quadrants):
        assert torch.equal(quadrant, images[m.cells[:, k]])
    # Labels are spread over the classes and the repeated digit sits in every position.
    assert set(m.labels.tolist()) == {0, 3, 4, 5, 7, 9}
    positions = {k for cells, label in zip(m.cells.tolist(), m.labels.tolist())
                 for k, c in enumerate(cells) if labels[c] == label}
    assert positions == {0, 1, 2, 3}


def test_compose_mosaics_respects_pool():
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    pool = torch.tensor([1, 2, 5, 6, 7])
    m = compose_mosaics(images, torch.arange(10) % 5, 50, seed=0, pool=pool)
    assert set(m.cells.flatten().tolist()) <= {1, 2, 5, 6, 7}


def test_mosaic_splits_share_no_base_digit_and_match_loader():
    images, labels = base_digits()
    pools = digit_split_indices(labels, 0.15, 0.15, 5)
    counts = mosaic_counts(300)
    cells = to_uint8(torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False))
    built = build_mosaic_splits(cells, labels, pools, counts, seed=5)
    used = {name: set(m.cells.flatten().tolist()) for name, m in built.items()}
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    for m in built.values():
        _assert_repeated_digit_rule(m, labels)

    data = load_dataset("digits-mosaic", size=300, seed=5, grid=2)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(data, name).images, built[name].images)
        assert torch.equal(getattr(data, name).labels, built[name].labels)


def test_mosaic_sizes_and_resize():
    data = load_dataset("digits-mosaic", size=600, image_size=24, channels=3, grid=2)
    assert (len(data.train), len(data.val), len(data.test)) == (600, 200, 200)
    assert data.train.images.shape[1:] == (3, 24, 24)
    assert data.num_classes == 10
    assert mosaic_counts(None) == {"train": 6000, "val": 1000, "test": 1000}
    assert mosaic_counts(12000) == {"train": 12000, "val": 1000, "test": 1000}
    default = load_dataset("digits-mosaic", size=300)
    assert default.train.images.shape[1:] == (1, 30, 30)  # 3x3 cells of 10 pixels
    assert load_dataset("digits-mosaic", size=300, grid=2).train.images.shape[1:] == (1, 32, 32)
    with pytest.raises(DataError, match="data.grid must be 2 or 3"):
        load_dataset("digits-mosaic", size=300, grid=5)


def test_clutter_holds_the_whole_digit_and_fragments_of_others():
    # base "digits": digit i is a 16x16 square of value 10 * i + 5, so every pixel says which digit it came from
    n = 12
    values = torch.arange(n, dtype=torch.uint8) * 10 + 5
    images = values.view(n, 1, 1, 1).expand(n, 1, DIGIT_SIZE, DIGIT_SIZE).contiguous()
    labels = torch.arange(n) % 10
    pool = torch.tensor([0, 2, 3, 7, 11])
    c = compose_clutter(images, labels, 200, seed=4, pool=pool, fragments=3)
    assert c.images.shape == (200, 1, 32, 32) and c.fragments.shape == (200, 3)
    assert set(c.digits.tolist()) <= set(pool.tolist()) and set(c.fragments.flatten().tolist()) <= set(pool.tolist())
    assert torch.equal(c.labels, labels[c.digits])
    for i in range(200):
        (y, x), whole = c.positions[i].tolist(), int(c.digits[i])
        window = c.images[i, 0, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
        # the whole digit is drawn last, by pixel-wise maximum: nothing darker covers it
        assert bool((window >= values[whole]).all())
        # outside it, every lit pixel comes from one of this field's fragments
        rest = c.images[i, 0].clone()
        rest[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = 0
        assert set(rest.unique().tolist()) <= {0, *values[c.fragments[i]].tolist()}
    # the digit lands all over the field, and the fields differ
    assert c.positions.min() == 0 and c.positions.max() == 32 - DIGIT_SIZE
    assert len({c.images[i].sum().item() for i in range(200)}) > 100


def test_clutter_splits_share_no_base_digit_and_match_loader():
    images, labels = base_digits()
    pools = digit_split_indices(labels, 0.15, 0.15, 5)
    counts = clutter_counts(300)
    assert counts == {"train": 300, "val": 100, "test": 100}
    digits = to_uint8(torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False,
                                                      antialias=False))
    built = build_clutter_splits(digits, labels, pools, counts, seed=5)
    used = {name: set(c.digits.tolist()) | set(c.fragments.flatten().tolist()) for name, c in built.items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    data = load_dataset("digits-clutter", size=300, seed=5)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(data, name).images, built[name].images)
        assert torch.equal(getattr(data, name).labels, built[name].labels)
    assert data.train.images.shape[1:] == (1, 32, 32)
    assert load_dataset("digits-clutter", size=300, image_size=24, channels=3).train.images.shape[1:] == (3, 24, 24)
    assert clutter_counts(None) == {"train": 3000, "val": 600, "test": 600}


def test_three_by_three_mosaics_follow_the_rule():
    images, labels = base_digits()
    cells = to_uint8(torch.nn.functional.interpolate(images, size=(10, 10), mode="bilinear", align_corners=False))
    m = compose_mosaics(cells, labels, 200, seed=3, grid=3)
    assert m.images.shape == (200, 1, 30, 30) and m.cells.shape == (200, 9)
    for row_cells, label in zip(m.cells.tolist(), m.labels.tolist()):
        cell_labels = labels[torch.tensor(row_cells)].tolist()
        assert cell_labels.count(label) == 2 and len(set(cell_labels)) == 8
    # Row-major layout: cell k sits at row k // 3, column k % 3.
    for k in range(9):
        r, c = divmod(k, 3)
        assert torch.equal(m.images[:, :, 10 * r:10 * r + 10, 10 * c:10 * c + 10], cells[m.cells[:, k]])


def test_mosaic_deterministic():
    a, b = load_dataset("digits-mosaic", size=300, seed=2), load_dataset("digits-mosaic", size=300, seed=2)
    c = load_dataset("digits-mosaic", size=300, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_shaped():
    a = load_dataset("synthetic", seed=11, num_classes=5, channels=3, image_size=20, size=200)
    b = load_dataset("synthetic", seed=11, num_classes=5, channels=3, image_size=20, size=200)
    c = load_dataset("synthetic", seed=12, num_classes=5, channels=3, image_size=20, size=200)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape[1:] == (3, 20, 20)
    assert sum(len(s) for s in (a.train, a.val, a.test)) == 200
    assert a.num_classes == 5 and a.class_names == ["0", "1", "2", "3", "4"]


def test_synthetic_defaults():
    data = load_dataset("synthetic")
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 512
    assert data.train.images.shape[1:] == (1, 16, 16) and data.num_classes == 4


def test_synthetic_is_learnable_by_nearest_class_mean():
    data = load_dataset("synthetic", seed=0)
    x_train = data.train.images.float().flatten(1) / 255
    x_test = data.test.images.float().flatten(1) / 255
    centroids = torch.stack([x_train[data.train.labels == k].mean(0) for k in range(data.num_classes)])
    predicted = torch.cdist(x_test, centroids).argmin(1)
    accuracy = (predicted == data.test.labels).float().mean().item()
    assert accuracy > 0.8


# ---------------------------------------------------------------- imagefolder

COLORS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "eel": (10, 10, 200)}


def _write_class_images(folder: Path, n: int, size: int = 12) -> None:
    for name, color in COLORS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), color).save(folder / name / f"{i}.png")


def test_imagefolder_flat_layout(tmp_path):
    _write_class_images(tmp_path, 5)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    data = load_dataset("imagefolder", path=str(tmp_path))
    assert data.num_classes == 3 and data.class_names == ["cat", "dog", "eel"]
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 15
    assert (len(data.val), len(data.test)) == (2, 2)
    for s in (data.train, data.val, data.test):
        assert s.images.shape[1:] == (3, 12, 12) and s.images.dtype == torch.uint8
        for image, label in zip(s.images, s.labels, strict=True):
            color = COLORS[data.class_names[label]]
            assert image[:, 5, 5].tolist() == list(color)


def test_imagefolder_split_layout_grayscale_and_resize(tmp_path):
    _write_class_images(tmp_path / "train", 5)
    _write_class_images(tmp_path / "val", 2)
    data = load_dataset("imagefolder", path=str(tmp_path), channels=1, image_size=8)
    assert data.class_names == ["cat", "dog", "eel"]
    assert len(data.val) == 6  # from val/, not carved
    assert len(data.train) + len(data.test) == 15 and len(data.test) == 2
    assert data.train.images.shape[1:] == (1, 8, 8)
    assert data.in_channels == 1 and data.image_size == 8


def test_imagefolder_errors_missing_path_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", path=str(tmp_path / "nope"))
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("imagefolder", path=str(file))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", path=str(tmp_path))
    with pytest.raises(DataError, match=r"data\.path is required"):
        load_dataset("imagefolder")


def test_imagefolder_empty_class_folder(tmp_path):
    _write_class_images(tmp_path, 3)
    (tmp_path / "fox").mkdir()
    (tmp_path / "fox" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=r"fox.*no image files"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_imagefolder_corrupt_image_named(tmp_path):
    _write_class_images(tmp_path, 3)
    (tmp_path / "dog" / "x.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*dog.x\.png"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_imagefolder_mismatched_sizes_named(tmp_path):
    _write_class_images(tmp_path, 3)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "eel" / "big.png")
    with pytest.raises(DataError, match=r"big\.png is 16x16 but expected 12x12"):
        load_dataset("imagefolder", path=str(tmp_path))
    # Resizing makes the same tree loadable.
    assert load_dataset("imagefolder", path=str(tmp_path), image_size=12).image_size == 12


def test_imagefolder_non_square_without_image_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (12, 10)).save(tmp_path / "a" / "0.png")
    Image.new("RGB", (12, 10)).save(tmp_path / "b" / "0.png")
    with pytest.raises(DataError, match=r"0\.png is 12x10, not square"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_imagefolder_class_set_must_match_across_splits(tmp_path):
    _write_class_images(tmp_path / "train", 5)
    _write_class_images(tmp_path / "test", 2)
    (tmp_path / "test" / "yak").mkdir()
    with pytest.raises(DataError, match=r"test has a different class set.*extra \['yak'\]"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_imagefolder_split_folders_without_train(tmp_path):
    _write_class_images(tmp_path / "val", 2)
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_imagefolder_normalize_wrong_length(tmp_path):
    _write_class_images(tmp_path, 5)
    with pytest.raises(DataError, match=r"data\.normalize\.std must be a list of 3"):
        load_dataset("imagefolder", path=str(tmp_path), normalize={"mean": [0.5] * 3, "std": [0.5]})


# ---------------------------------------------------------------- cifar10


def _records(n: int, label_offset: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR records plus their (3, 32, 32) images; red/green/blue planes hold distinct value ranges."""
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    images[:, 0] = rng.integers(0, 80, size=(n, 32, 32))
    images[:, 1] = rng.integers(90, 170, size=(n, 32, 32))
    images[:, 2] = rng.integers(180, 256, size=(n, 32, 32))
    labels = (np.arange(n) + label_offset) % 10
    records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(n, -1)], axis=1)
    return records, images


def _write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for k, name in enumerate(("data_batch_1.bin", "data_batch_2.bin", "test_batch.bin")):
        records, images = _records(20, k, rng)
        records.tofile(folder / name)
        written[name] = (records, images)
    return written


def test_cifar_load_exact_pixels_and_channel_order(tmp_path):
    written = _write_cifar(tmp_path)
    data = load_dataset("cifar10", path=str(tmp_path), val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20)
    assert data.class_names[0] == "airplane" and data.num_classes == 10
    assert data.train.images.shape[1:] == (3, 32, 32)

    records, images = written["test_batch.bin"]
    assert torch.equal(data.test.images[7], torch.from_numpy(images[7]))
    assert int(data.test.labels[7]) == records[7, 0] == (7 + 2) % 10
    # Channel order: the first 1024 pixel bytes are red, row-major.
    assert data.test.images[7, 0].flatten().tolist() == records[7, 1:1025].tolist()
    assert data.test.images[:, 0].max() < 80 and data.test.images[:, 2].min() >= 180

    # Every train record lands in train or val exactly once, with its label.
    pool = {}
    for name in ("data_batch_1.bin", "data_batch_2.bin"):
        recs, imgs = written[name]
        for r, img in zip(recs, imgs, strict=True):
            pool[img.tobytes()] = int(r[0])
    loaded = {}
    for split in (data.train, data.val):
        for img, label in zip(split.images, split.labels, strict=True):
            loaded[img.numpy().tobytes()] = int(label)
    assert loaded == pool


def test_cifar_nested_folder_meta_names_and_resize(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-bin")
    names = [f"c{k}" for k in range(10)]
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    data = load_dataset("cifar10", path=str(tmp_path), image_size=16, val_fraction=0.25)
    assert data.class_names == names
    assert data.test.images.shape == (20, 3, 16, 16)


def test_cifar_truncated_file(tmp_path):
    _write_cifar(tmp_path)
    raw = (tmp_path / "data_batch_2.bin").read_bytes()
    (tmp_path / "data_batch_2.bin").write_bytes(raw[:-5])
    size = 20 * RECORD_BYTES - 5
    with pytest.raises(DataError, match=rf"data_batch_2\.bin is {size} bytes, not a positive multiple of 3073"):
        load_dataset("cifar10", path=str(tmp_path))


def test_cifar_bad_label_missing_test_and_channels(tmp_path):
    written = _write_cifar(tmp_path)
    records = written["data_batch_1.bin"][0].copy()
    records[3, 0] = 12
    records.tofile(tmp_path / "data_batch_1.bin")
    with pytest.raises(DataError, match=r"data_batch_1\.bin: record 3 has label 12"):
        load_dataset("cifar10", path=str(tmp_path))
    with pytest.raises(DataError, match="3 channels"):
        load_dataset("cifar10", path=str(tmp_path), channels=1)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin does not exist"):
        load_dataset("cifar10", path=str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no data_batch_\*\.bin"):
        load_dataset("cifar10", path=str(empty))


# ---------------------------------------------------------------- loaders and helpers


def _small_split(n: int = 37) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=generator)
    return Split(images, torch.arange(n))


def test_image_dataset_converts_to_float():
    split = _small_split()
    image, label = ImageDataset(split)[5]
    assert image.dtype == torch.float32 and image.shape == (1, 4, 4)
    assert torch.allclose(image * 255, split.images[5].float())
    assert label == 5 and isinstance(label, int)


def test_make_loader_deterministic_from_seed():
    split = _small_split()

    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in make_loader(split, 8, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(37))
    unshuffled = [y for _, y in make_loader(split, 8, shuffle=False)]
    assert torch.cat(unshuffled).tolist() == list(range(37))
    assert len(list(make_loader(split, 8, shuffle=True, drop_last=True))) == 4
    x, _ = next(iter(make_loader(split, 8, shuffle=False)))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_augment_batch_identity_when_disabled():
    x = torch.rand(4, 3, 8, 8)
    assert augment_batch(x) is x


def test_augment_batch_crop_is_a_translation():
    x = torch.rand(16, 2, 6, 6) + 1  # strictly positive, so zero padding is recognisable
    out = augment_batch(x, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = []
    for i in range(16):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert matches, f"sample {i} is not a crop of its padded input"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # offsets are per sample
    again = augment_batch(x, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_batch_hflip_per_sample():
    x = torch.rand(32, 1, 5, 5)
    out = augment_batch(x, hflip=True, generator=torch.Generator().manual_seed(3))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(32)]
    kept = [torch.equal(out[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_calibration_batches_deterministic():
    split = _small_split()
    a = calibration_batches(split, 3, 8, seed=4)
    b = calibration_batches(split, 3, 8, seed=4)
    c = calibration_batches(split, 3, 8, seed=5)
    assert len(a) == 3 and all(t.shape == (8, 1, 4, 4) and t.dtype == torch.float32 for t in a)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert not all(torch.equal(s, t) for s, t in zip(a, c, strict=True))
    assert all(t.min() >= 0 and t.max() <= 1 for t in a)
    # Within one pass over the split no image is drawn twice.
    rows = torch.cat(a).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == 24
    # Asking for more than the split holds still yields full batches.
    many = calibration_batches(split, 10, 8)
    assert len(many) == 10 and all(t.shape[0] == 8 for t in many)
