"""``load_dataset``: validate the options every source shares, then dispatch to the source's module."""

from __future__ import annotations

from compress.data.base import DatasetSplits, SourceData
from compress.data.cifar import load_cifar_source
from compress.data.clutter import load_clutter_source
from compress.data.digits import load_digits_source
from compress.data.imagefolder import load_imagefolder_source
from compress.data.mosaic import load_mosaic_source
from compress.data.splits import assemble
from compress.data.synthetic import load_synthetic_source
from compress.errors import DataError

SOURCES = ("digits", "digits-mosaic", "digits-clutter", "synthetic", "imagefolder", "cifar10")
PATH_SOURCES = ("imagefolder", "cifar10")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 4, 1024


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field: str, value: int | None, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DataError(f"{field} must be an integer {bounds}, got {value!r}")


def _check_options(
    *,
    source: str,
    path: str | None,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    size: int | None,
    num_classes: int | None,
) -> None:
    if source not in SOURCES:
        raise DataError(f"data.source {source!r} is not a known source; expected one of: {', '.join(SOURCES)}")
    for field, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 <= value < 0.5):
            raise DataError(f"{field} must be a number in [0, 0.5), got {value!r}")
    if val_fraction == 0:
        raise DataError("data.val_fraction must be > 0: a validation split is always needed to rank models")
    _check_int("data.image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if channels is not None and (not _is_int(channels) or channels not in (1, 3)):
        raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    _check_int("data.size", size, 1)
    _check_int("data.num_classes", num_classes, 2)
    if not _is_int(seed):
        raise DataError(f"data.seed must be an integer, got {seed!r}")
    if source in PATH_SOURCES and path is None:
        raise DataError(f"data.path is required for source {source!r}")


def load_dataset(
    source: str,
    *,
    path: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: dict | None = None,
    size: int | None = None,
    num_classes: int | None = None,
    grid: int = 3,
) -> DatasetSplits:
    """Load ``source`` into memory as train/val/test splits of uint8 images.

    ``normalize=None`` computes per-channel mean/std on the train split; ``{"mean": [...], "std": [...]}``
    declares them. Options a source has no use for are ignored (``path`` except for imagefolder/cifar10,
    ``size`` except for synthetic/digits-mosaic/digits-clutter, ``test_fraction`` for cifar10 whose test set is fixed);
    ``num_classes`` sets the class count of synthetic data and is checked against every other source.
    """
    _check_options(
        source=source,
        path=path,
        image_size=image_size,
        channels=channels,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        size=size,
        num_classes=num_classes,
    )
    if grid not in (2, 3):
        raise DataError(f"data.grid must be 2 or 3 (cells per mosaic side), got {grid!r}")
    fractions = {"val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    data: SourceData
    if source == "digits":
        data = load_digits_source(image_size=image_size, channels=channels, seed=seed, **fractions)
    elif source == "digits-mosaic":
        data = load_mosaic_source(image_size=image_size, channels=channels, seed=seed, size=size, grid=grid,
                                  **fractions)
    elif source == "digits-clutter":
        data = load_clutter_source(image_size=image_size, channels=channels, seed=seed, size=size, **fractions)
    elif source == "synthetic":
        data = load_synthetic_source(
            num_classes=num_classes, channels=channels, image_size=image_size, size=size, seed=seed, **fractions
        )
    elif source == "imagefolder":
        data = load_imagefolder_source(path=path, image_size=image_size, channels=channels, seed=seed, **fractions)
    else:
        data = load_cifar_source(
            path=path, image_size=image_size, channels=channels, val_fraction=fractions["val_fraction"], seed=seed
        )
    return assemble(data, normalize=normalize, num_classes=num_classes)
