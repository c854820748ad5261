"""Search-space files: validation messages, sampling, Optuna suggestion, membership."""

import random

import optuna
import pytest

from compress.errors import RecipeError
from compress.space import Arch, SearchSpace


def _write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_shipped_spaces_load(tiny_space):
    from pathlib import Path

    for path in sorted(Path("search_spaces").glob("*.yaml")):
        space = SearchSpace.from_yaml(path)
        assert space.cardinality() > 1000
        assert space.problems(space.largest()) == []
        assert space.problems(space.smallest()) == []


@pytest.mark.parametrize(
    "body, expected",
    [
        ("name: x\nstem: {width: [8]}\nstages: []\n", "stages: Value error, a search space needs at least one stage"),
        ("name: x\nstem: {width: [8]}\nstages: [{blocks: [conv], depth: [1], width: [8], colour: red}]\n",
         "stages.0.colour: unknown key"),
        ("name: x\nstem: {width: [8]}\nstages: [{blocks: [mamba], depth: [1], width: [8]}]\n",
         "unknown block family 'mamba'"),
        ("name: x\nstem: {width: [8]}\nstages: [{blocks: [conv], depth: [1], width: [8], conv: {kernel_size: [4]}}]\n",
         "kernel sizes must be odd"),
        ("name: x\nstem: {width: [8]}\nstages: [{blocks: [conv], depth: [0], width: [8]}]\n",
         "depths must be between 1 and 32"),
        ("name: x\nstem: {width: eight}\nstages: [{blocks: [conv], depth: [1], width: [8]}]\n", "stem.width"),
        ("name: x\nstem: {width: [8]}\nstages: [{blocks: [conv], depth: [1], width: [8], attn: {heads: [2]}}]\n",
         "attn options given but 'attn' is not in blocks"),
        ("stem: {width: [8]}\nstages: [{blocks: [conv], depth: [1], width: [8]}]\n", "name: required field is missing"),
    ],
)
def test_invalid_spaces_name_the_file_and_field(tmp_path, body, expected):
    path = _write(tmp_path, body)
    with pytest.raises(RecipeError) as info:
        SearchSpace.from_yaml(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_sampling_is_seeded_and_stays_in_space(tiny_space):
    a = [tiny_space.sample(random.Random(7)).key() for _ in range(3)]
    assert len(set(a)) == 1
    rng = random.Random(0)
    archs = [tiny_space.sample(rng) for _ in range(200)]
    assert all(tiny_space.problems(x) == [] for x in archs)
    assert len({x.key() for x in archs}) > 150
    # both families occur in the hybrid stages
    assert {x.stages[1].block for x in archs} == {"conv", "attn"}


def test_largest_uses_first_family_and_max_values(tiny_space):
    big = tiny_space.largest()
    assert [s.block for s in big.stages] == [s.blocks[0] for s in tiny_space.stages]
    assert big.stages[2].depth == 2 and big.stages[2].width == 24 and big.stages[2].heads == (2, 2)
    assert Arch.from_dict(big.to_dict()) == big


def test_architectures_survive_pickle_and_deepcopy(tiny_space):
    # Worker processes receive architectures pickled; copy and pickle probe dunders before ``layers`` is set.
    import copy
    import pickle

    arch = tiny_space.sample(random.Random(3))
    for again in (pickle.loads(pickle.dumps(arch)), copy.deepcopy(arch)):
        assert again == arch and again.key() == arch.key()
        assert again.stages[2].layers_dict() == arch.stages[2].layers_dict()


def test_optuna_suggestion_has_a_fixed_genome(tiny_space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = []
    for _ in range(10):
        trial = study.ask()
        arch = tiny_space.suggest(trial)
        assert tiny_space.problems(arch) == []
        params.append(set(trial.params))
        study.tell(trial, 0.0)
    assert all(p == params[0] for p in params)  # same parameters whatever depth/family was drawn


def test_problems_explain_why_an_arch_is_not_in_the_space(tiny_space):
    arch = tiny_space.largest()
    bad = Arch(arch.stem_width, arch.stages[:2])
    assert "2 stages, the space has 3" in tiny_space.problems(bad)[0]
