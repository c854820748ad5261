"""Lowering to the target runtime: BN folding, INT8 with ONNX Runtime and bitsandbytes, and the rebuild
of the PyTorch model from the exact tensors an artifact stores."""


import numpy as np
import pytest
import torch

from compress.deploy import lower, rebuild_model
from compress.nn.fold import fold_batchnorm
from compress.policies.quantize import QuantPolicy, compact_names, model_units, weight_refs
from compress.export.onnx import export_onnx
from compress.supernet import extract_subnet


@pytest.fixture(scope="module")
def model(tiny_space, tiny_supernet):
    return extract_subnet(tiny_supernet, tiny_space.largest()).eval()


def calib():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(8, 3, 16, 16, generator=g) for _ in range(3)]


def test_fold_batchnorm_preserves_outputs(model):
    import copy

    x = torch.rand(5, 3, 16, 16)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_weight_refs_cover_every_weight_layer(model):
    import copy

    folded = fold_batchnorm(copy.deepcopy(model))
    refs = weight_refs(export_onnx(folded, torch.rand(1, 3, 16, 16)), folded)
    layers = {n for n, m in folded.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert {r.module for r in refs} == layers
    assert {r.kind for r in refs} == {"linear", "conv", "dwconv"}


@pytest.mark.parametrize("backend", ["ort-static", "ort-dynamic"])
def test_ort_int8_only_in_chosen_units_and_rebuild_matches(model, backend):
    shape = (1, 3, 16, 16)
    fp32 = lower(model, "onnxruntime", QuantPolicy(), calib(), shape)
    units = ("stages.2", "classifier")
    q = lower(model, "onnxruntime", QuantPolicy(backend, units), calib(), shape)
    layers = q.quantization_record()["int8_layers"]
    assert layers and all(l.startswith(units) for l in layers)
    kinds = {type(m).__name__ for n, m in q.model.named_modules() if n in layers}
    # Stage 2 of the largest subnet is attention: its Linear layers, plus (static only) its down-sampling conv.
    assert kinds == ({"Linear"} if backend == "ort-dynamic" else {"Linear", "Conv2d"})
    assert len(q.deployed_bytes()) < len(fp32.deployed_bytes())
    state = q.state_dict()
    for layer in layers:
        assert state[f"{layer}.weight_int8"].dtype == torch.int8
        assert f"{layer}.weight" not in state
    # The PyTorch rebuild holds exactly the int8 weights of the ONNX model (dequantized on the fly).
    rebuilt = rebuild_model(model.config(), q.quantization_record(), state)
    for layer in layers:
        mod = rebuilt.get_submodule(layer)
        assert torch.equal(mod.weight_int8, state[f"{layer}.weight_int8"])
        err = (mod.dequantized_weight() - q.model.get_submodule(layer).weight).abs().max()
        assert err <= mod.weight_scale.max() / 2 + 1e-6  # within half a quantization step
    x = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        ref = fp32.runner()(x)
        assert (q.runner()(x) - ref).abs().max() < 0.25 * ref.abs().max()
        assert (rebuilt(x) - ref).abs().max() < 0.25 * ref.abs().max()


def test_static_int8_quantizes_dense_convs_but_not_depthwise(model):
    q = lower(model, "onnxruntime", QuantPolicy("ort-static", tuple(model_units(model))), calib(), (1, 3, 16, 16))
    layers = set(q.quantization_record()["int8_layers"])
    modules = dict(q.model.named_modules())
    assert any(isinstance(modules[l], torch.nn.Conv2d) for l in layers)
    assert not any(isinstance(modules[l], torch.nn.Conv2d) and modules[l].groups > 1 for l in layers)


def test_compact_names_keep_io_and_shrink(model):
    import copy

    folded = fold_batchnorm(copy.deepcopy(model))
    proto = export_onnx(folded, torch.rand(1, 3, 16, 16))
    before = len(proto.SerializeToString())
    small = compact_names(proto)
    assert len(small.SerializeToString()) < before
    import onnxruntime as ort

    session = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 16, 16)
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], folded(x).detach().numpy(), atol=1e-4)


def test_compact_names_rename_subgraphs_that_read_the_outer_graph():
    """An If branch reads a tensor of the enclosing graph by name: both must be renamed alike."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["outer_value"], [f"{name}_out"], name=f"{name}_node")],
                                 name, [], [out])

    nodes = [
        helper.make_node("Relu", ["x"], ["outer_value"], name="a_long_descriptive_name"),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="greater"),
        helper.make_node("If", ["positive"], ["y"], then_branch=branch("then", "Identity"),
                         else_branch=branch("else", "Neg"), name="choose"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    proto = compact_names(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(proto)
    assert "outer_value" not in proto.SerializeToString().decode("latin-1")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in ([1.0, -2.0, 3.0], [-1.0, -2.0, 0.5]):
        x = np.array(x, dtype=np.float32)
        expected = np.maximum(x, 0) if x.sum() > 0 else -np.maximum(x, 0)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


@pytest.mark.parametrize("backend", ["bnb-int8", "bnb-nf4"])
def test_bitsandbytes_lowering_round_trips(backend):
    from compress.nn import HybridNet

    # Widths bitsandbytes' CPU NF4 kernel accepts: outputs in blocks of 32, inputs in blocks of 64.
    config = {"in_channels": 3, "num_classes": 5, "mean": [0.5] * 3, "std": [0.25] * 3,
              "stem": {"out": 16, "kernel_size": 3, "stride": 2},
              "stages": [{"type": "attn", "out": 64, "stride": 2, "blocks": [
                  {"type": "attn", "heads": 2, "head_dim": 32, "mlp_hidden": 128, "merge_r": 0}]}]}
    model = HybridNet(config).eval()
    q = lower(model, "torch", QuantPolicy(backend, tuple(model_units(model))), [], (1, 3, 16, 16))
    record = q.quantization_record()
    expected = {"stages.0.blocks.0.attn.qkv", "stages.0.blocks.0.attn.proj", "stages.0.blocks.0.fc1",
                "stages.0.blocks.0.fc2"}
    assert expected <= set(record["int8_layers"])
    assert ("classifier" in record["int8_layers"]) == (backend == "bnb-int8")  # 5 outputs: no NF4 on CPU
    rebuilt = rebuild_model(model.config(), record, q.state_dict())
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), q.runner()(x), atol=1e-5, rtol=1e-5)
