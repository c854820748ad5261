"""Weight sharing and extraction: standalone subnets equal the supernet and export to torch.export / ONNX."""

import itertools
import random

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.export.onnx import INPUT_NAME, export_onnx
from compress.nn import HybridNet, build_model
from compress.space import Arch
from compress.supernet import extract_subnet, subnet_config
from compress.weights import load_into, load_safetensors, save_safetensors


def _family_combos(space):
    """One architecture per combination of block families (conv/attn per stage), random otherwise."""
    rng = random.Random(1)
    archs = []
    for blocks in itertools.product(*[s.blocks for s in space.stages]):
        arch = space.sample(rng)
        stages = []
        for spec, stage, block in zip(space.stages, arch.stages, blocks):
            if stage.block != block:
                stage = space.make_stage(spec, block, stage.depth, stage.width, rng.choice)
            stages.append(stage)
        archs.append(Arch(arch.stem_width, tuple(stages)))
    return archs


def test_extraction_parity_50_random_architectures(tiny_space, tiny_supernet):
    rng = random.Random(0)
    x = torch.rand(6, 3, 16, 16)
    archs = [tiny_space.largest(), tiny_space.smallest()] + [tiny_space.sample(rng) for _ in range(48)]
    assert len({a.key() for a in archs}) > 40  # really different architectures
    with torch.no_grad():
        for arch in archs:
            tiny_supernet.set_active(arch)
            expected = tiny_supernet(x)
            static = extract_subnet(tiny_supernet, arch).eval()
            assert not any("Elastic" in type(m).__name__ for m in static.modules())
            torch.testing.assert_close(static(x), expected, atol=1e-5, rtol=0)


def test_extracted_subnet_is_smaller_and_config_round_trips(tiny_space, tiny_supernet, tmp_path):
    small, large = tiny_space.smallest(), tiny_space.largest()
    n_small = sum(p.numel() for p in extract_subnet(tiny_supernet, small).parameters())
    n_large = sum(p.numel() for p in extract_subnet(tiny_supernet, large).parameters())
    assert n_small < n_large < sum(p.numel() for p in tiny_supernet.parameters())

    arch = tiny_space.sample(random.Random(3))
    static = extract_subnet(tiny_supernet, arch).eval()
    assert static.config() == subnet_config(tiny_supernet, arch)
    # Rebuild from config + safetensors alone: no supernet involved.
    save_safetensors(static.state_dict(), tmp_path / "m.safetensors")
    rebuilt = build_model(static.config())
    load_into(rebuilt, load_safetensors(tmp_path / "m.safetensors"), tmp_path / "m.safetensors")
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), static(x), atol=0, rtol=0)


def test_architecture_outside_the_space_is_refused(tiny_space, tiny_supernet):
    from compress.errors import RecipeError

    bad = Arch(stem_width=999, stages=tiny_space.largest().stages)
    with pytest.raises(RecipeError, match="stem width 999"):
        extract_subnet(tiny_supernet, bad)


def test_every_family_combination_exports_with_torch_export_and_onnx(tiny_space, tiny_supernet):
    x = torch.rand(4, 3, 16, 16)
    archs = _family_combos(tiny_space)
    assert {tuple(s.block for s in a.stages) for a in archs} == set(itertools.product(*[s.blocks for s in tiny_space.stages]))
    for arch in archs:
        static = extract_subnet(tiny_supernet, arch).eval()
        with torch.no_grad():
            expected = static(x)
        exported = torch.export.export(static, (x,))
        torch.testing.assert_close(exported.module()(x), expected, atol=1e-5, rtol=0)

        proto = export_onnx(static, x)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        # A batch size other than the one exported with: the batch axis is dynamic.
        x2 = torch.rand(7, 3, 16, 16)
        with torch.no_grad():
            expected2 = static(x2).numpy()
        (got,) = session.run(None, {INPUT_NAME: x2.numpy()})
        np.testing.assert_allclose(got, expected2, atol=1e-4, rtol=1e-4)


def test_hybridnet_refuses_merging_outside_the_last_stage(tiny_space, tiny_supernet):
    arch = tiny_space.largest()
    config = subnet_config(tiny_supernet, arch)
    attn_stages = [i for i, s in enumerate(config["stages"]) if s["type"] == "attn"]
    config["stages"][0] = {"type": "attn", "out": 8, "stride": 1,
                           "blocks": [{"type": "attn", "heads": 1, "head_dim": 4, "mlp_hidden": 8, "merge_r": 2}]}
    with pytest.raises(ValueError, match="only possible in the last stage"):
        HybridNet(config)
    assert attn_stages  # the tiny space's largest subnet does use attention
