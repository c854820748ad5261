"""Block families as plugins: the registry, the gated-attention family end to end, a family added by a test
through registration alone, and the genome's two directions derived from one declaration."""

import random

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

from compress.errors import RecipeError
from compress.export.onnx import INPUT_NAME, export_onnx
from compress.nn import build_model
from compress.policies.prune import PrunePolicy, prune
from compress.policies.quantize import QuantPolicy
from compress.registry import family_names, get_family
from compress.space import Arch, SearchSpace, StageArch
from compress.supernet import HybridSupernet, extract_subnet

SPACE = {
    "name": "families",
    "stem": {"width": [4, 8], "kernel_size": 3, "stride": 2},
    "stages": [
        {"blocks": ["conv"], "stride": 1, "depth": [1, 2], "width": [8, 12],
         "conv": {"kernel_size": [3, 5], "expand_ratio": [1, 2]}},
        # two attention families in one stage: their shared dimension names get per-family genes
        {"blocks": ["gated_attn", "attn", "conv"], "stride": 2, "depth": [1, 2], "width": [8, 16],
         "gated_attn": {"heads": [1, 2], "head_dim": 4, "mlp_ratio": [1, 2]},
         "attn": {"heads": [1, 2, 3], "head_dim": 4, "mlp_ratio": [1]}},
        {"blocks": ["gated_attn", "linear_attn", "conv"], "stride": 1, "depth": [1, 2], "width": [16, 24],
         "gated_attn": {"heads": [1, 2], "head_dim": 8, "mlp_ratio": [1, 2]},
         "linear_attn": {"heads": [1, 2], "head_dim": 8, "mlp_ratio": [1, 2]}},
    ],
}


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_dict(SPACE, "families.yaml")


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    net = HybridSupernet(space, in_channels=3, num_classes=5, mean=[0.5] * 3, std=[0.25] * 3)
    rng = random.Random(0)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(6):
            net.set_active(space.sample(rng))
            net(torch.rand(8, 3, 16, 16))
    return net.eval()


def test_registry_knows_the_built_in_families_and_names_the_unknown():
    assert {"conv", "attn", "gated_attn", "linear_attn"} <= set(family_names())
    with pytest.raises(KeyError, match="unknown block family 'mamba'"):
        get_family("mamba")


def test_family_options_are_validated_where_they_stand(space):
    bad = {**SPACE, "stages": [{**SPACE["stages"][2], "gated_attn": {"heads": [0]}}]}
    with pytest.raises(RecipeError, match=r"stages\.0\.gated_attn\.heads.*heads must be between 1 and 64"):
        SearchSpace.from_dict(bad, "x.yaml")
    assert space.stages[1].options("attn").heads == [1, 2, 3]


def test_gated_attention_extracts_exactly_and_exports(space, supernet):
    rng = random.Random(1)
    x = torch.rand(4, 3, 16, 16)
    seen = set()
    for _ in range(30):
        arch = space.sample(rng)
        seen.add(arch.stages[2].block)
        supernet.set_active(arch)
        with torch.no_grad():
            expected = supernet(x)
            static = extract_subnet(supernet, arch).eval()
            torch.testing.assert_close(static(x), expected, atol=1e-5, rtol=0)
            # the config alone rebuilds the same network (compress.load's path)
            rebuilt = build_model(static.config())
            rebuilt.load_state_dict(static.state_dict())
            torch.testing.assert_close(rebuilt.eval()(x), expected, atol=1e-5, rtol=0)
    assert seen == {"gated_attn", "linear_attn", "conv"}
    arch = space.largest()
    assert [s.block for s in arch.stages] == ["conv", "gated_attn", "gated_attn"]
    static = extract_subnet(supernet, arch).eval()
    assert static.config()["stages"][2]["type"] == "gated_attn"
    gates = [m.attn.gate for m in static.stages[2].blocks]
    assert all(g.out_features == 2 for g in gates)
    session = ort.InferenceSession(export_onnx(static, x).SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], static(x).numpy(), atol=1e-4)


def test_gated_attention_prunes_width_and_keeps_its_heads(space, supernet):
    arch = space.largest()
    model = extract_subnet(supernet, arch).eval()
    before = sum(p.numel() for p in model.parameters())
    x = torch.rand(4, 3, 16, 16)
    prune(model, PrunePolicy((0.0, 0.5, 0.5), "magnitude"), x, torch.zeros(4, dtype=torch.long))
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before
    for block in model.stages[2].blocks:
        assert block.attn.num_heads == 2 and block.attn.gate.out_features == 2
        assert block.attn.gate.in_features == model.stages[2].downsample.conv.out_channels
    with torch.no_grad():
        assert model(x).shape == (4, 5)
    rebuilt = build_model(model.config())  # the pruned sizes are read back from the shapes
    rebuilt.load_state_dict(model.state_dict())


def test_linear_attention_prunes_heads_merges_tokens_and_exports(space, supernet):
    from compress.policies.tome import MergePolicy, apply_merge

    big = space.largest()
    arch = Arch(big.stem_width, big.stages[:2] + (space.make_stage(space.stages[2], "linear_attn", 2, 24, max),))
    model = extract_subnet(supernet, arch).eval()
    x = torch.rand(4, 3, 16, 16)
    prune(model, PrunePolicy((0.0, 0.0, 0.5), "magnitude"), x, torch.zeros(4, dtype=torch.long))
    assert [b.attn.num_heads for b in model.stages[2].blocks] == [1, 1]
    apply_merge(model, MergePolicy(4))
    assert model.config()["stages"][2]["blocks"][0] == {"type": "linear_attn", "heads": 1, "head_dim": 8,
                                                       "mlp_hidden": 24, "merge_r": 4}
    with torch.no_grad():
        expected = model(x)
    rebuilt = build_model(model.config())
    rebuilt.load_state_dict(model.state_dict())
    session = ort.InferenceSession(export_onnx(rebuilt, x).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], expected.numpy(), atol=1e-4)
    ops = {n.op_type for n in export_onnx(rebuilt, x).graph.node}
    assert "Relu" in ops


def test_gated_attention_quantizes_with_onnx_runtime(space, supernet):
    from compress.deploy import lower

    model = extract_subnet(supernet, space.largest()).eval()
    x = torch.rand(8, 3, 16, 16)
    policy = QuantPolicy("ort-static", ("stem", "stages.0", "stages.1", "stages.2", "classifier"))
    deployed = lower(model, "onnxruntime", policy, [x], (1, 3, 16, 16))
    assert any(".attn.gate" in layer for layer in deployed.quantization_record()["int8_layers"])
    with torch.no_grad():
        ref = model(x)
        assert (deployed.runner()(x) - ref).abs().max() < 0.25 * ref.abs().max()


def test_genome_round_trips_architectures_and_trials(space):
    genes = {g.name for g in space.genes()}
    # shared dimension names get one gene per family; a name only one family has keeps the short form
    assert {"s1.l0.gated_attn.heads", "s1.l0.attn.heads", "s1.l0.kernel_size", "s2.l1.linear_attn.heads", "s0.l1.expand_ratio"} <= genes
    rng = random.Random(3)
    for _ in range(200):
        arch = space.sample(rng)
        assert space.decode(space.encode(arch)) == arch
        assert space.suggest(optuna.trial.FixedTrial(space.params_of(arch))) == arch
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        trial = study.ask()
        arch = space.suggest(trial)
        encoded = space.params_of(arch)
        # every parameter the architecture uses comes back with the value the trial drew
        assert all(trial.params[k] == v for k, v in encoded.items() if _active(k, arch))
        study.tell(trial, 0.0)


def _active(name: str, arch: Arch) -> bool:
    parts = name.split(".")
    if parts[0] == "stem" or len(parts) == 2:
        return True
    stage = arch.stages[int(parts[0][1:])]
    layer = int(parts[1][1:])
    family = parts[2] if len(parts) == 4 else None
    dim = parts[-1]
    return layer < stage.depth and (family in (None, stage.block)) and dim in dict(stage.layers)


def test_old_records_with_every_familys_dimensions_still_load(space):
    arch = space.largest()
    old = arch.to_dict()
    old["stages"][0].update(heads=[], mlp_ratio=[])  # how records looked before families were plugins
    assert Arch.from_dict(old) == arch


def test_policy_genome_round_trips_random_trials(tmp_path):
    from tests.conftest import tiny_recipe

    from compress.recipe import load_recipe
    from compress.search.suggest import decode_policies, encode_policies, params_of, policy_genes, suggest_spec

    loaded = load_recipe(tiny_recipe(tmp_path, search={
        "n_trials": 6, "sampler": {"name": "random"},
        "policies": {"quantize": {"enabled": True, "backends": ["ort-static", "ort-dynamic"]},
                     "prune": {"enabled": True, "ratios": [0.0, 0.25, 0.5], "importance": ["magnitude", "taylor"]},
                     "merge": {"enabled": True, "r": [0, 2]},
                     "distill": {"enabled": True, "steps": [0, 5], "temperature": [1.0, 2.0]}}}))
    recipe, space = loaded.recipe, loaded.space
    genes = policy_genes(space, recipe)
    assert {"p.importance", "p.s0", "m.r", "d.steps", "q.backend", "q.stem"} <= {g.name for g in genes}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_enabled = set()
    for _ in range(60):
        trial = study.ask()
        spec = suggest_spec(trial, space, recipe)
        p = spec.policies
        seen_enabled |= {name for name, on in (("prune", p.prune.enabled), ("distill", p.distill.enabled),
                                                ("quant", p.quant.enabled), ("merge", p.merge.enabled)) if on}
        again = suggest_spec(optuna.trial.FixedTrial(params_of(spec, space, recipe)), space, recipe)
        assert again == spec  # params_of is the inverse of suggest_spec on what the spec uses
        assert decode_policies(encode_policies(p, space, recipe), space, recipe) == p
        study.tell(trial, 0.0)
    assert seen_enabled == {"prune", "distill", "quant", "merge"}


@pytest.mark.parametrize("granularity, allowed", [("unit", {"uniform", "contiguous", "fragmented"}),
                                                   ("contiguous", {"uniform", "contiguous"}), ("uniform", {"uniform"})])
def test_int8_granularity_limits_the_unit_sets_a_trial_can_choose(tmp_path, granularity, allowed):
    from tests.conftest import tiny_recipe

    from compress.recipe import load_recipe
    from compress.search.suggest import baseline_specs, params_of, space_units, suggest_spec

    loaded = load_recipe(tiny_recipe(tmp_path, search={"policies": {"quantize": {"granularity": granularity}}}))
    recipe, space = loaded.recipe, loaded.space
    units = space_units(space)

    def kind(chosen):
        mask = [u in chosen for u in units]
        runs = sum(1 for i, q in enumerate(mask) if q and (i == 0 or not mask[i - 1]))
        return "uniform" if runs == 0 or all(mask) else "contiguous" if runs == 1 else "fragmented"

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        spec = suggest_spec(trial, space, recipe)
        seen.add(kind(spec.policies.quant.int8_units))
        assert suggest_spec(optuna.trial.FixedTrial(params_of(spec, space, recipe)), space, recipe) == spec
        study.tell(trial, 0.0)
    assert seen == allowed
    # The fully-INT8 baselines are choices under every granularity, so they are queued exactly as they are.
    for spec in baseline_specs(space, recipe).values():
        again = suggest_spec(optuna.trial.FixedTrial(params_of(spec, space, recipe)), space, recipe)
        assert again == spec


def _readme_block(marker: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index(marker)
    return text[start:text.index("```", start)]


def test_the_readme_adds_a_family_with_one_file_and_a_registration():
    namespace: dict = {}
    exec(compile(_readme_block("# README example: adding a block family"), "README.md", "exec"), namespace)
    assert "sepconv" in family_names()
    space = SearchSpace.from_dict({
        "name": "sep", "stem": {"width": [4, 8]},
        "stages": [{"blocks": ["sepconv", "conv"], "depth": [1, 2], "width": [8, 12], "sepconv": {"kernel_size": [3, 5]}},
                   {"blocks": ["attn", "sepconv"], "stride": 2, "depth": [1, 2], "width": [8, 16],
                    "attn": {"heads": [1, 2], "head_dim": 4}, "sepconv": {"kernel_size": [3, 7]}}]}, "sep.yaml")
    assert space.largest().describe() == "stem8 | sepconv d2 w12 k5,5 | attn d2 w16 h2,2 m2,2"
    torch.manual_seed(0)
    net = HybridSupernet(space, in_channels=3, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(4):
            net.set_active(space.sample(rng))
            net(torch.rand(8, 3, 16, 16))
    net.eval()
    x = torch.rand(3, 3, 16, 16)
    for _ in range(12):
        arch = space.sample(rng)
        net.set_active(arch)
        with torch.no_grad():
            static = extract_subnet(net, arch).eval()
            torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=0)
    arch = space.smallest(["sepconv", "sepconv"])
    static = extract_subnet(net, arch).eval()
    prune(static, PrunePolicy((0.5, 0.0), "magnitude"), x, torch.zeros(3, dtype=torch.long))
    rebuilt = build_model(static.config())
    rebuilt.load_state_dict(static.state_dict())
    session = ort.InferenceSession(export_onnx(rebuilt, x).SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], static(x).numpy(), atol=1e-4)


def test_regrouped_heads_share_every_weight_and_extract_exactly():
    stage = {"blocks": ["attn"], "stride": 2, "depth": [1, 2], "width": [8, 16],
             "attn": {"heads": [1, 2, 4], "mlp_ratio": [1, 2], "heads_mode": "regroup"}}
    space = SearchSpace.from_dict({"name": "regroup", "stem": {"width": [8]}, "stages": [stage]}, "regroup.yaml")
    with pytest.raises(RecipeError, match="width 6 is not divisible by 4 heads"):
        SearchSpace.from_dict({"name": "bad", "stem": {"width": [8]}, "stages": [{**stage, "width": [6, 8]}]}, "bad.yaml")
    torch.manual_seed(0)
    net = HybridSupernet(space, in_channels=3, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3).eval()
    x = torch.rand(2, 3, 16, 16)
    qkv = {}
    for heads in (1, 2, 4):
        arch = Arch(8, (StageArch.of("attn", 1, 16, heads=[heads], mlp_ratio=[2]),))
        net.set_active(arch)
        static = extract_subnet(net, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=0)
        attn = static.stages[0].blocks[0].attn
        assert (attn.num_heads, attn.head_dim) == (heads, 16 // heads)
        qkv[heads] = attn.qkv.weight
    # every head count reads all 3 x 16 rows: the same tensor, regrouped
    assert qkv[1].shape == (48, 16) and torch.equal(qkv[1], qkv[4]) and torch.equal(qkv[1], qkv[2])
