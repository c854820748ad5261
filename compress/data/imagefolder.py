"""A user's own images in class sub-folders.

Two layouts are accepted:

* ``path/train/<class>/*`` with optional ``path/val/<class>/*`` and ``path/test/<class>/*``; a missing val or
  test folder is carved from train with the configured fraction;
* flat ``path/<class>/*``, from which val and test are both carved.

Everything is decoded up front (not lazily): a corrupt file then fails the load with its name instead of
killing a training run hours later, and epochs never pay for decoding again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from compress.data.base import SourceData, Split
from compress.data.splits import carve
from compress.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = ("train", "val", "test")
DEFAULT_CHANNELS = 3
_PROGRESS_MIN_FILES = 2000
# Decoded images are held in memory together; photos at full size (12 Mpixel, 36 MB each) would exhaust it
# without a word. Above this the user is asked for data.image_size, which resizes while decoding.
MAX_DECODED_BYTES = 8 * 2**30


def _class_names(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store-like tool debris) are never classes.
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class name>/<image files>")
    return names


def _image_files(folder: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        # Dotfiles are tool debris, not images: macOS writes ._name.jpg beside every file on foreign disks.
        found = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(
                f"class folder {class_dir} has no image files (expected {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        files.extend((p, label) for p in found)
    return files


def _read(path: Path, mode: str, image_size: int | None = None) -> Image.Image:
    try:
        with Image.open(path) as image:
            if image_size is not None:  # JPEG decodes at a fraction of full size: a photo never fills memory
                image.draft(mode, (image_size, image_size))
            # Photos carry their rotation in EXIF; honour it so images look as they do in any viewer.
            return ImageOps.exif_transpose(image).convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _decode(paths: list[Path], channels: int, image_size: int | None) -> torch.Tensor:
    """Decode every file into one uint8 (N, C, S, S) tensor.

    Without ``image_size`` the first image sets the expected size, so a stray odd-sized file is reported by
    name instead of surfacing later as a shape error inside a model.
    """
    mode = "L" if channels == 1 else "RGB"
    out: np.ndarray | None = None
    with tqdm(paths, desc="decoding images", unit="img", disable=len(paths) <= _PROGRESS_MIN_FILES) as progress:
        for i, path in enumerate(progress):
            image = _read(path, mode, image_size)
            if image_size is not None:
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            if out is None:
                if image.width != image.height:
                    raise DataError(
                        f"image {path} is {image.width}x{image.height}, not square; "
                        "set data.image_size to resize all images to one square size"
                    )
                needed = len(paths) * channels * image.height * image.width
                if needed > MAX_DECODED_BYTES:
                    raise DataError(
                        f"images like {path} are {image.width}x{image.height}: {len(paths)} of them take "
                        f"{needed / 2**30:.1f} GiB decoded; set data.image_size (e.g. 224) to resize them while "
                        "decoding")
                out = np.empty((len(paths), channels, image.height, image.width), dtype=np.uint8)
            elif (image.width, image.height) != (out.shape[3], out.shape[2]):
                raise DataError(
                    f"image {path} is {image.width}x{image.height} but expected {out.shape[3]}x{out.shape[2]} "
                    f"(the size of {paths[0]}); set data.image_size to resize all images to one size"
                )
            pixels = np.asarray(image)
            out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(out)


def load_imagefolder_source(
    *,
    path: str,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> SourceData:
    root = Path(path)
    if not root.exists():
        raise DataError(f"data.path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a directory; expected a folder of class sub-folders")
    split_dirs = {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {'/, '.join(sorted(split_dirs))}/ but no train/ folder to train on")
    folders = split_dirs or {"train": root}

    class_names = _class_names(folders["train"])
    for folder in list(folders.values())[1:]:
        names = _class_names(folder)
        if names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            raise DataError(
                f"{folder} has a different class set than {folders['train']}: missing {missing}, extra {extra}; "
                "every split folder must hold the same class sub-folders"
            )

    files = {name: _image_files(folder, class_names) for name, folder in folders.items()}
    ordered = [item for name in folders for item in files[name]]
    images = _decode([p for p, _ in ordered], channels or DEFAULT_CHANNELS, image_size)
    labels = torch.tensor([label for _, label in ordered], dtype=torch.int64)

    given: dict[str, Split] = {}
    start = 0
    for name in folders:
        given[name] = Split(images[start : start + len(files[name])], labels[start : start + len(files[name])])
        start += len(files[name])
    val_carve = 0.0 if "val" in given else val_fraction
    test_carve = 0.0 if "test" in given else test_fraction
    train, val, test = carve(given["train"], val_carve, test_carve, seed)
    layout = "train/val/test folders" if split_dirs else "flat class folders"
    return SourceData(
        train=train,
        val=given.get("val", val),
        test=given.get("test", test),
        class_names=class_names,
        source=f"imagefolder ({root}, {len(ordered)} images, {layout})",
    )
