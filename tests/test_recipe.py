"""Recipe validation: every bad input is refused with a message naming the file and the field."""

from pathlib import Path

import pytest
import yaml

from compress.errors import RecipeError
from compress.recipe import load_recipe

FIXTURES = Path(__file__).parent / "fixtures"


def _recipe(tmp_path, **overrides):
    base = {
        "version": 1,
        "name": "t",
        "space": str(FIXTURES / "tiny_space.yaml"),
        "data": {"source": "synthetic", "image_size": 16, "channels": 3, "size": 200, "num_classes": 4},
    }
    for key, value in overrides.items():
        node = base
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


_DELETE = object()


def test_quickstart_recipe_is_valid():
    loaded = load_recipe("recipes/quickstart.yaml")
    assert loaded.recipe.version == 1
    assert loaded.space.name == "digits-small"


def test_every_shipped_recipe_is_valid():
    for path in sorted(Path("recipes").glob("*.yaml")):
        try:
            load_recipe(path)
        except RecipeError as exc:
            # Recipes for data users bring themselves (CIFAR-10) fail only on the missing data directory.
            assert "data.path:" in str(exc) and "does not exist" in str(exc), exc


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"data.colour": "red"}, "data.colour: unknown key"),
        ({"supernet.epochs": "many"}, "supernet.epochs: Input should be a valid integer"),
        ({"supernet.epochs": -3}, "supernet.epochs: Input should be greater than or equal to 1"),
        ({"supernet.batch_size": 10**9}, "supernet.batch_size: Input should be less than or equal to 65536"),
        ({"search.n_trials": 0}, "search.n_trials: Input should be greater than or equal to 1"),
        ({"search.objectives": ["accuracy", "happiness"]}, "search.objectives.1.metric: Value error, unknown metric"),
        ({"search.constraints": ["joules <= 3"]}, "constraint on unknown metric 'joules'"),
        ({"search.constraints": ["latency_ms is small"]}, "is not of the form"),
        ({"search.sampler": {"name": "annealing"}}, "search.sampler.name: Input should be 'nsga2', 'tpe', 'random', 'gp' or 'predictor'"),
        ({"target.runtime": "tflite"}, "target.runtime: Value error, unknown runtime"),
        ({"target.device": "tpu"}, "target.device: Input should be 'cpu', 'cuda' or 'remote'"),
        ({"data.source": "imagenet"}, "data.source: Value error, unknown data source"),
        ({"data.val_fraction": 0.9}, "data.val_fraction: Input should be less than 0.5"),
        ({"data.source": "imagefolder"}, "needs data.path"),
        ({"search.policies.quantize.backends": ["bnb-int8"]}, "not available for runtime 'onnxruntime'"),
        ({"search.n_trials": None}, "give n_trials, timeout_s, or both"),
        ({"name": "has spaces"}, "name: String should match pattern"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path, overrides, expected):
    path = _recipe(tmp_path, **overrides)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_missing_files_and_versions(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"space: search space file .*nope.yaml' not found"):
        load_recipe(_recipe(tmp_path, space="nope.yaml"))
    with pytest.raises(RecipeError, match=r"data.path: .* does not exist"):
        load_recipe(_recipe(tmp_path, **{"data.source": "imagefolder", "data.path": "no/such/dir"}))
    with pytest.raises(RecipeError, match="version: required field is missing"):
        load_recipe(_recipe(tmp_path, version=_DELETE))
    with pytest.raises(RecipeError, match="version: 7 is not supported"):
        load_recipe(_recipe(tmp_path, version=7))
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_supernet_key_ignores_the_search_section(tmp_path):
    a = load_recipe(_recipe(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path))
    (tmp_path / "b").mkdir()
    b = load_recipe(_recipe(tmp_path / "b", **{"search.n_trials": 7}))
    (tmp_path / "c").mkdir()
    c = load_recipe(_recipe(tmp_path / "c", **{"supernet.epochs": 3}))
    assert a.supernet_key() == b.supernet_key() != c.supernet_key()
    assert a.recipe_hash() != b.recipe_hash()
