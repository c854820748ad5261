"""Supernet training options meant to make inherited accuracy rank architectures (issue 11): each changes
what it should."""

import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F

from compress.policies.distill import alpha_divergence_loss, logit_kd_loss
from compress.supernet import HybridSupernet, extract_subnet
from compress.train.supernet import project_conflicts


def test_alpha_divergence_is_zero_on_agreement_and_at_least_kl_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(16, 5)
    assert alpha_divergence_loss(teacher.clone(), teacher).abs() < 1e-6
    student = torch.randn(16, 5)
    alpha = alpha_divergence_loss(student, teacher)
    assert alpha >= logit_kd_loss(student, teacher, 1.0) - 1e-6  # the max includes alpha = 1, which is KL(p || q)
    # a student that spreads mass over a class the teacher rules out: alpha = -1 punishes it harder than KL
    teacher, spread = torch.tensor([[8.0, 8.0, -8.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    assert alpha_divergence_loss(spread, teacher) > logit_kd_loss(spread, teacher, 1.0) + 0.1
    assert torch.isfinite(alpha_divergence_loss(torch.tensor([[-60.0, 60.0]]), torch.tensor([[60.0, -60.0]])))


def test_gradient_projection_removes_only_the_conflicting_component():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    g_large = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
    a.grad = torch.tensor([-1.0, 2.0])  # conflicts: dot = -1
    b.grad = torch.tensor([1.0, 2.0])   # agrees: left as it is
    assert project_conflicts([a, b], g_large) == 1
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 2.0]))  # (-1, 2) -> (0, 2), plus the largest's (1, 0)
    torch.testing.assert_close(b.grad, torch.tensor([2.0, 2.0]))


def test_few_shot_split_gives_each_family_its_own_downsampling_and_extracts_exactly(tiny_space):
    torch.manual_seed(0)
    net = HybridSupernet(tiny_space, 3, 5, [0.5] * 3, [0.25] * 3, few_shot=True)
    shared = HybridSupernet(tiny_space, 3, 5, [0.5] * 3, [0.25] * 3)
    assert set(net.stages[1].downsamples) == {"conv", "attn"} and set(net.stages[0].downsamples) == {"shared"}
    assert set(shared.stages[1].downsamples) == {"shared"}
    w_conv, w_attn = (net.stages[1].downsamples[f].weight for f in ("conv", "attn"))
    assert w_conv.data_ptr() != w_attn.data_ptr() and not torch.equal(w_conv, w_attn)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(4):
            net.set_active(tiny_space.sample(rng))
            net.train()(torch.rand(8, 3, 16, 16))
    net.eval()
    x = torch.rand(4, 3, 16, 16)
    for _ in range(10):
        arch = tiny_space.sample(rng)
        net.set_active(arch)
        with torch.no_grad():
            torch.testing.assert_close(extract_subnet(net, arch).eval()(x), net(x), atol=1e-5, rtol=0)


def test_size_sampling_spreads_subnets_over_the_size_range(tiny_space):
    from compress.search.features import ModelIO, SubnetCosts
    from compress.train.supernet import sample_random_subnets

    costs = SubnetCosts(tiny_space, ModelIO(3, 16, 5))
    lo, hi = costs(tiny_space.smallest()).total_macs, costs(tiny_space.largest()).total_macs
    size = lambda a: (costs(a).total_macs - lo) / (hi - lo)  # noqa: E731  (0 smallest, 1 largest)
    rng = random.Random(0)
    uniform = [size(a) for _ in range(300) for a in sample_random_subnets(tiny_space, rng, 2, "uniform")]
    steps = [sample_random_subnets(tiny_space, rng, 2, "size") for _ in range(300)]
    assert all(tiny_space.problems(a) == [] for pair in steps for a in pair)
    low, high = [size(p[0]) for p in steps], [size(p[1]) for p in steps]
    # the first of a step's two subnets is drawn from the lower half of the size range, the second from the upper
    assert sum(low) / len(low) < 0.3 < 0.5 < sum(high) / len(high)
    spread = low + high
    # both ends of the range are trained far more often than uniform choices, which land mid-sized
    ends = lambda xs: sum(x < 0.15 or x > 0.75 for x in xs) / len(xs)  # noqa: E731
    assert ends(spread) > 2 * ends(uniform)
    # block families stay uniform
    assert 0.35 < sum(a.stages[1].block == "attn" for p in steps for a in p) / 600 < 0.65


def test_a_supernet_option_added_later_keeps_earlier_checkpoints(tmp_path):
    import hashlib
    import json

    from compress.recipe import load_recipe
    from tests.conftest import tiny_recipe

    loaded = load_recipe(tiny_recipe(tmp_path))
    # the key a checkpoint stored before subnet_sampling, seed and teacher_families existed: the same hash
    # without those fields
    parts = {"data": {**loaded.recipe.data.model_dump(mode="json"), "path": loaded.data_fingerprint()},
             "space": loaded.space.to_dict(), "seed": loaded.recipe.seed,
             "supernet": loaded.recipe.supernet.model_dump(mode="json", exclude={"subnet_sampling", "seed",
                                                                               "teacher_families"})}
    before = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    assert loaded.supernet_key() == before
    (tmp_path / "b").mkdir()
    sized = load_recipe(tiny_recipe(tmp_path / "b", supernet={"subnet_sampling": "size"}))
    assert sized.supernet_key() != before


@pytest.mark.slow
def test_a_supernet_seed_trains_another_supernet_on_the_same_data(tmp_path):
    from compress.recipe import load_recipe
    from compress.supernet.checkpoint import load_supernet
    from compress.train.supernet import train_supernet
    from tests.conftest import tiny_recipe

    trained = {}
    for seed in (None, 0, 7):
        (tmp_path / str(seed)).mkdir()
        loaded = load_recipe(tiny_recipe(tmp_path / str(seed), supernet={"epochs": 1, "seed": seed}))
        ckpt = load_supernet(train_supernet(loaded, loaded.run_dir(None), log=lambda *_: None))
        trained[seed] = (loaded, ckpt.supernet.state_dict())
    (default, w_default), (same, w_same), (other, w_other) = trained.values()
    # The recipe's seed is the default training seed: seed 0 of a seed-0 recipe is the same training.
    assert all(torch.equal(w_default[k], w_same[k]) for k in w_default)
    assert not all(torch.equal(w_default[k], w_other[k]) for k in w_default)
    # The data is drawn by the recipe's seed alone: the same splits for every training seed.
    a, b = default.load_data(), other.load_data()
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert default.supernet_key() != other.supernet_key()


def test_split_stem_gives_each_stem_width_its_own_stem_and_first_downsampling_and_extracts_exactly(tiny_space):
    torch.manual_seed(0)
    net = HybridSupernet(tiny_space, 3, 5, [0.5] * 3, [0.25] * 3, split_stem=True, few_shot=True)
    assert set(net.stems) == {"4", "8"} and not hasattr(net, "stem")
    assert set(net.stages[0].downsamples) == {"shared@4", "shared@8"}  # stage 0 has one family
    assert set(net.stages[1].downsamples) == {"conv", "attn"}  # later stages split by family only
    assert net.stems["4"].weight.shape[0] == 4 and net.stages[0].downsamples["shared@4"].weight.shape[1] == 4
    shared = HybridSupernet(tiny_space, 3, 5, [0.5] * 3, [0.25] * 3)
    assert not shared.split_stem and set(shared.stages[0].downsamples) == {"shared"}

    rng = random.Random(0)
    archs = [tiny_space.sample(rng) for _ in range(12)]
    assert {a.stem_width for a in archs} == {4, 8}
    narrow = next(a for a in archs if a.stem_width == 4)
    # A step of a stem-4 subnet trains the stem-4 path and leaves the stem-8 one as it was.
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.set_active(narrow)
    net.train()(torch.rand(8, 3, 16, 16)).sum().backward()
    assert net.stems["4"].weight.grad is not None and net.stems["8"].weight.grad is None
    assert net.stages[0].downsamples["shared@8"].weight.grad is None
    with torch.no_grad():
        for a in archs[:4]:
            net.set_active(a)
            net.train()(torch.rand(8, 3, 16, 16))
    assert not torch.equal(net.stems["4"].bn.running_mean, before["stems.4.bn.running_mean"])
    net.eval()
    x = torch.rand(4, 3, 16, 16)
    for arch in archs:
        net.set_active(arch)
        with torch.no_grad():
            torch.testing.assert_close(extract_subnet(net, arch).eval()(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["size", "macs"])
def test_training_with_every_ranking_option_runs_and_reloads(tmp_path, sampling):
    from compress.recipe import load_recipe
    from compress.supernet.checkpoint import load_supernet
    from compress.train.supernet import train_supernet
    from tests.conftest import tiny_recipe

    loaded = load_recipe(tiny_recipe(tmp_path, supernet={"epochs": 1, "batch_size": 32, "lr": 0.005,
                                                         "random_subnets": 1, "bn_calibration_batches": 2,
                                                         "kd_loss": "alpha", "few_shot": True,
                                                         "split_stem": True, "gradient_projection": True,
                                                         "subnet_sampling": sampling}))
    run = loaded.run_dir(None)
    torch.manual_seed(0)
    initial = HybridSupernet(loaded.space, 3, 4, [0.5] * 3, [0.25] * 3, few_shot=True, split_stem=True)
    ckpt = load_supernet(train_supernet(loaded, run))
    assert ckpt.meta["few_shot"] is True and ckpt.supernet.few_shot
    assert ckpt.meta["split_stem"] is True and ckpt.supernet.split_stem
    stage = ckpt.supernet.stages[1]
    # both families' down-sampling convolutions were trained, separately; so were both stems
    for family in ("conv", "attn"):
        assert not torch.equal(stage.downsamples[family].weight, initial.stages[1].downsamples[family].weight)
    for width in ("4", "8"):
        assert not torch.equal(ckpt.supernet.stems[width].weight, initial.stems[width].weight)
    assert all(0 <= v <= 1 for v in ckpt.meta["metrics"].values())


@pytest.mark.slow
def test_train_supernet_checks_its_ranking_on_request(tiny_run, compress_cli, monkeypatch):
    monkeypatch.setattr("compress.train.ranking_check.POOL", 40)  # random architectures to spread from (200)
    recipe = tiny_run()  # the session's trained supernet: train-supernet reuses it, then checks its ranking
    proc = compress_cli("train-supernet", recipe, "--check-ranking", 4, "--check-steps", 5)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "matches this recipe" in out
    assert "ranking check over 4 architectures (5 stand-alone steps each): Spearman" in out
    assert out.count("inherited ") >= 4 and "ranks " in out
    bad = compress_cli("train-supernet", recipe, "--check-ranking", 0)
    assert bad.returncode == 2 and "--check-ranking: must be at least 1, got 0" in bad.stderr


def test_spread_covers_both_last_stage_families_and_sizes(tiny_space, tiny_supernet, monkeypatch):
    from compress.train.ranking_check import spread_architectures

    # Each pooled architecture is extracted and run once to count its MACs: 40 of them instead of 200 still
    # hold both families of the last stage at several sizes.
    monkeypatch.setattr("compress.train.ranking_check.POOL", 40)
    archs = spread_architectures(tiny_supernet, 8, torch.rand(1, 3, 16, 16), seed=0)
    assert len(archs) == 8 and len({a.key() for a in archs}) == 8
    assert {a.stages[-1].block for a in archs} == {"conv", "attn"}
    assert tiny_space.smallest() in archs and tiny_space.largest() in archs


def test_macs_sampling_spreads_subnets_without_tying_their_choices(tiny_space):
    from compress.search.features import ModelIO, SubnetCosts
    from compress.train.supernet import sample_random_subnets

    costs = SubnetCosts(tiny_space, ModelIO(3, 16, 5))
    macs = lambda a: costs(a).total_macs  # noqa: E731
    lo, hi = math.log(macs(tiny_space.smallest())), math.log(macs(tiny_space.largest()))
    level = lambda a: (math.log(macs(a)) - lo) / (hi - lo)  # noqa: E731  (0 smallest, 1 largest)

    def draw(how):
        rng = random.Random(0)
        return [sample_random_subnets(tiny_space, rng, 2, how, macs) for _ in range(300)]

    def depth_width_correlation(steps):
        archs = [a for pair in steps for a in pair]
        return statistics.mean(statistics.correlation([a.stages[i].depth for a in archs],
                                                      [a.stages[i].width for a in archs])
                               for i in range(len(tiny_space.stages)))

    steps = draw("macs")
    assert all(tiny_space.problems(a) == [] for pair in steps for a in pair)
    low, high = [level(p[0]) for p in steps], [level(p[1]) for p in steps]
    # one MACs target in each half of the (log) range
    assert statistics.mean(low) < 0.35 < 0.65 < statistics.mean(high)
    ends = lambda xs: sum(x < 0.15 or x > 0.75 for x in xs) / len(xs)  # noqa: E731
    assert ends(low + high) > 2 * ends([level(a) for pair in draw("uniform") for a in pair])
    # unlike "size", a subnet's choices stay nearly independent: deep-but-narrow subnets are still trained
    assert depth_width_correlation(steps) < 0.5 * depth_width_correlation(draw("size"))


def test_cycled_teachers_are_the_largest_of_every_family_combination(tiny_space):
    from compress.train.supernet import teacher_archs

    assert teacher_archs(tiny_space, "first") == [tiny_space.largest()]
    cycle = teacher_archs(tiny_space, "cycle")
    # tiny: stage 0 conv only, stages 1 and 2 conv or attn -> 4 combinations, the space's largest first
    assert cycle[0] == tiny_space.largest() and len(cycle) == len(set(a.key() for a in cycle)) == 4
    assert {tuple(s.block for s in a.stages) for a in cycle} == {("conv", b1, b2) for b1 in ("conv", "attn")
                                                                   for b2 in ("attn", "conv")}
    for arch in cycle:  # each at every range's maximum
        assert arch == tiny_space.largest([s.block for s in arch.stages])


@pytest.mark.slow
def test_cycled_teachers_train_the_widest_weights_of_every_family(tmp_path):
    """With the first family as the only teacher, stage 1's attention channels beyond the smallest width are
    never trained with no random subnets; cycling the teacher's families trains them."""
    from accelerate.utils import set_seed

    from compress.recipe import load_recipe
    from compress.supernet.checkpoint import load_supernet
    from compress.train.supernet import train_supernet
    from tests.conftest import tiny_recipe

    trained = {}
    for families in ("first", "cycle"):
        (tmp_path / families).mkdir()
        # 200 images: 4 steps of 32 (70% train), one per combination of families
        loaded = load_recipe(tiny_recipe(tmp_path / families, data={"size": 200}, supernet={
            "epochs": 1, "random_subnets": 0, "weight_decay": 0.0, "teacher_families": families}))
        set_seed(0)  # the initial weights, made as train_supernet makes them
        data = loaded.load_data()
        initial = HybridSupernet(loaded.space, data.in_channels, data.num_classes, data.mean, data.std)
        ckpt = load_supernet(train_supernet(loaded, loaded.run_dir(None), log=lambda *_: None))
        trained[families] = (initial, ckpt.supernet)
    for families, (initial, net) in trained.items():
        before, after = (dict(n.stages[1].families["attn"].named_parameters()) for n in (initial, net))
        # rows beyond the smallest width (8 of 16) of the tensors the stage width sizes: wide subnets' only
        wide = [name for name, p in after.items() if p.dim() >= 1 and p.shape[0] == 16]
        assert wide
        changed = any(not torch.equal(before[name][8:], after[name][8:]) for name in wide)
        assert changed == (families == "cycle"), families


@pytest.mark.slow
def test_label_trained_students_are_never_distilled(tmp_path, monkeypatch):
    """``kd_loss: labels``: the sampled subnets learn from the labels; the default distils every one of them."""
    import compress.train.supernet as trainer
    from compress.recipe import load_recipe
    from tests.conftest import tiny_recipe

    calls = {"n": 0}

    def counted(student, teacher, temperature):
        calls["n"] += 1
        return logit_kd_loss(student, teacher, temperature)

    monkeypatch.setattr(trainer, "logit_kd_loss", counted)
    seen = {}
    for kd in ("labels", "kl"):
        (tmp_path / kd).mkdir()
        calls["n"] = 0
        loaded = load_recipe(tiny_recipe(tmp_path / kd, data={"size": 200}, supernet={
            "epochs": 1, "batch_size": 32, "random_subnets": 1, "kd_loss": kd}))
        trainer.train_supernet(loaded, loaded.run_dir(None), log=lambda *_: None)
        seen[kd] = calls["n"]
    # 200 images, 70% for training: 4 steps of 32, each with the smallest and one random student
    assert seen == {"labels": 0, "kl": 8}
