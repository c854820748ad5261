"""Build a real-image classification task in the user's format (an ImageFolder tree) from photographs that
ship inside installed Python packages, so it needs no download at run time.

The task: which of 10 photographs a 32x32 RGB patch was cut from. Each patch is a square of random side
(32 to 96 pixels of the photo, rescaled to 32x32) at a random place, so a class is a mix of scales and of
the photo's regions (sky, face, fur, text, stars...), not one texture. Nearly flat patches (pixel standard
deviation under 8 of 255) are rejected: a black square from a starfield and one from a retina's border carry
no information about their source.

Train and val come from DISJOINT parts of each photo: the photo is cut into a grid of 96x96 tiles, a
quarter of them (a chequered pattern, so val tiles are spread over the whole photo) hold the val patches,
another quarter the test patches and the other half the train patches, and a patch never crosses a tile border. Val therefore measures how well a model
generalises to unseen parts of a photo, not how well it remembers pixels.

Sources (all real photographs): scikit-image's bundled ``astronaut``, ``chelsea``, ``coffee``,
``hubble_deep_field``, ``immunohistochemistry``, ``retina``, ``rocket``; scikit-learn's ``china`` and
``flower`` sample images; matplotlib's ``grace_hopper``. scikit-image comes with the ``bench`` extra
(``pip install -e .[bench]``).

    python scripts/make_photo_task.py [--out data/photo-patches] [--train-per-class 400] [--val-per-class 100]
                                      [--name photos] [--epochs 60]

More patches per class make a task whose stand-alone accuracies depend less on the seed (more distinct crops
to learn from, more val images to measure on); ``--name`` and ``--epochs`` go into its recipe, so a larger
tree gets its own results files and a supernet budget in steps like the default one's. The larger tree the
ranking benchmark uses (``photos-large``)::

    python scripts/make_photo_task.py --out data/photo-patches-large --train-per-class 1500 \
        --val-per-class 400 --name photos-large --epochs 4

Also writes ``recipe.yaml`` into the tree: the recipe a user would write for it (``compress train-supernet
DIR/recipe.yaml``), which ``bench_supernet_ranking.py --task DIR`` uses.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PATCH = 32
TILE = 96
SHORT_SIDE = 480  # every photo is rescaled to this shorter side first, so each gives a similar number of tiles
MIN_SIDE, MAX_SIDE = 32, 96
MIN_STD = 8.0
MAX_TRIES = 200
TASK_VERSION = 1  # bump when the way patches are cut changes; recorded in task.json


def _sklearn_photo(name: str):
    from sklearn.datasets import load_sample_image

    return lambda: load_sample_image(name)


def _matplotlib_photo(name: str):
    def load():
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


def _skimage_photo(name: str):
    def load():
        try:
            import skimage.data
        except ImportError:
            raise SystemExit("scikit-image is needed for the photo task: pip install -e '.[bench]'") from None
        return getattr(skimage.data, name)()

    return load


PHOTOS = {
    "astronaut": _skimage_photo("astronaut"),
    "chelsea": _skimage_photo("chelsea"),
    "coffee": _skimage_photo("coffee"),
    "hubble": _skimage_photo("hubble_deep_field"),
    "ihc": _skimage_photo("immunohistochemistry"),
    "retina": _skimage_photo("retina"),
    "rocket": _skimage_photo("rocket"),
    "china": _sklearn_photo("china.jpg"),
    "flower": _sklearn_photo("flower.jpg"),
    "hopper": _matplotlib_photo("grace_hopper.jpg"),
}


def rescaled(photo: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(photo[..., :3]).astype(np.uint8)).convert("RGB")
    scale = SHORT_SIDE / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def tiles(width: int, height: int) -> dict[str, list[tuple[int, int]]]:
    """Top-left corners of the whole TILE x TILE tiles, split by a chequered pattern: 1 in 4 val, 1 in 4 test."""
    out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    for row in range(height // TILE):
        for col in range(width // TILE):
            split = {0: "val", 2: "test"}.get((row + 2 * col) % 4, "train")
            out[split].append((col * TILE, row * TILE))
    return out


def cut_patches(image: Image.Image, corners: list[tuple[int, int]], count: int,
                rng: np.random.Generator) -> list[Image.Image]:
    """``count`` non-flat patches, each inside one tile of ``corners``, of random side, rescaled to PATCH."""
    pixels = np.asarray(image)
    out = []
    for _ in range(count):
        for _ in range(MAX_TRIES):
            x0, y0 = corners[rng.integers(len(corners))]
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            x = x0 + int(rng.integers(TILE - side + 1))
            y = y0 + int(rng.integers(TILE - side + 1))
            crop = pixels[y:y + side, x:x + side]
            if crop.std() >= MIN_STD:
                break
        else:
            raise RuntimeError(f"no patch with pixel std >= {MIN_STD} found in {MAX_TRIES} tries")
        out.append(Image.fromarray(crop).resize((PATCH, PATCH), Image.Resampling.BOX))
    return out


def build(out: Path, train_per_class: int, val_per_class: int, seed: int = 0, photos=None, name: str = "photos",
          epochs: int = 60) -> dict:
    """Write ``out/{train,val,test}/<photo>/*.png`` (test as large as val) and ``out/recipe.yaml``; return the task's description."""
    photos = photos or PHOTOS
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    counts = {}
    for label, (photo, load) in enumerate(sorted(photos.items())):
        image = rescaled(load())
        corners = tiles(*image.size)
        rng = np.random.default_rng([seed, label])
        for split, n in (("train", train_per_class), ("val", val_per_class), ("test", val_per_class)):
            folder = staging / split / photo
            folder.mkdir(parents=True)
            for i, patch in enumerate(cut_patches(image, corners[split], n, rng)):
                patch.save(folder / f"{i:05d}.png")
        counts[photo] = {"size": list(image.size), **{f"{split}_tiles": len(c) for split, c in corners.items()}}
    task = {"version": TASK_VERSION, "seed": seed, "patch": PATCH, "tile": TILE, "short_side": SHORT_SIDE,
            "side": [MIN_SIDE, MAX_SIDE], "min_std": MIN_STD, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "name": name, "epochs": epochs, "photos": counts}
    (staging / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    (staging / "recipe.yaml").write_text(recipe_text(name, epochs))
    # Built aside and moved in one step: an interrupted build never leaves a half-written tree behind.
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return task


def recipe_text(name: str = "photos", epochs: int = 60) -> str:
    """The recipe a user would write for this tree: the mosaic recipe's settings, with this data."""
    space = (ROOT / "search_spaces" / "digits_small.yaml").resolve()
    return f"""# Generated by scripts/make_photo_task.py: 10 classes of 32x32 RGB patches, one class per photograph.
version: 1
name: {name}
seed: 0
space: {space}

data:
  source: imagefolder
  path: .               # this folder: train/, val/ and test/ from disjoint tiles of each photo
  image_size: 32
  augment: {{crop_padding: 2, hflip: true}}

supernet:
  epochs: {epochs}
  batch_size: 64
  lr: 0.003
  random_subnets: 2
  bn_calibration_batches: 10
  gradient_projection: true

search:
  n_trials: 60
  sampler: {{name: predictor, warmup: 16, seed: 0}}
  objectives: [accuracy, latency_ms, size_mb]

target:
  device: cpu
  runtime: onnxruntime
  batch_size: 1
  threads: 1
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "data" / "photo-patches"))
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="photos", help="the recipe's name (and so its results files' names)")
    parser.add_argument("--epochs", type=int, default=60, help="the recipe's supernet epochs")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        print(f"error: --name must be letters, digits, '.', '_' or '-', got {args.name!r}", file=sys.stderr)
        return 2
    for field in ("train_per_class", "val_per_class", "epochs"):
        if getattr(args, field) < 1:
            print(f"error: --{field.replace('_', '-')} must be at least 1, got {getattr(args, field)}", file=sys.stderr)
            return 2
    task = build(Path(args.out), args.train_per_class, args.val_per_class, args.seed, name=args.name,
                 epochs=args.epochs)
    print(f"wrote {args.out}: {len(task['photos'])} classes, {args.train_per_class} train and "
          f"{args.val_per_class} val patches each; recipe {args.out}/recipe.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
