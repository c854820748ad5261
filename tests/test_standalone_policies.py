"""``compress.quantize_`` and ``compress.prune_`` on models that are not compress's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
from compress import PrunePolicy, QuantPolicy


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


class TokenMLP(nn.Module):
    """A transformer-style MLP over tokens: (B, T, D) -> (B, classes)."""

    def __init__(self, dim: int = 32, hidden: int = 128, classes: int = 7):
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_quantize_dynamic_on_a_token_mlp_with_a_filter():
    torch.manual_seed(0)
    model = TokenMLP().eval()
    x = torch.randn(4, 9, 32)
    reference = model(x).detach()
    q = compress.quantize_(model, QuantPolicy(backend="ort-dynamic"), x, filter_fn=lambda m, fqn: fqn != "head")
    assert isinstance(q, nn.Module)
    assert q.int8_layers == ["embed", "mlp.1", "mlp.3"]  # every Linear but the filtered-out head
    ops = {n.op_type for n in q.onnx_model.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    out = q(torch.cat([x, x]))  # the batch axis stays dynamic
    assert out.shape == (8, 7)
    error = (out[:4] - reference).abs().max()
    assert 0 < error < 0.25 * reference.abs().max()  # INT8 arithmetic: close to the float model, not equal
    none = compress.quantize_(model, QuantPolicy(backend="ort-dynamic"), x, filter_fn=lambda m, fqn: False)
    assert none.int8_layers == [] and torch.allclose(none(x), reference, atol=1e-5)  # the filter admits nothing
    assert torch.equal(model(x).detach(), reference)  # the source model is left as it was


def test_quantize_static_on_a_cnn_with_calibration_batches_and_units():
    model = small_cnn()
    calibration = [torch.rand(8, 3, 16, 16) for _ in range(4)]
    reference = model(calibration[0]).detach()
    q = compress.quantize_(model, QuantPolicy(backend="ort-static", int8_units=("0", "3")), calibration)
    assert q.int8_layers == ["0", "3"]  # the units admit the two convolutions, not the classifier
    assert sum(n.op_type == "QuantizeLinear" for n in q.onnx_model.graph.node) >= 2
    out = q(calibration[0])
    assert (out - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_quantize_refuses_no_backend():
    with pytest.raises(ValueError, match="name a backend"):
        compress.quantize_(small_cnn(), QuantPolicy(), torch.rand(1, 3, 16, 16))


def test_prune_a_cnn_keeps_the_output_and_honours_the_filter():
    model = small_cnn()
    x = torch.rand(4, 3, 16, 16)
    before = params(model)
    pruned = compress.prune_(model, PrunePolicy(ratio=0.5), x)
    assert pruned is model
    assert params(model) < 0.6 * before
    assert model[0].out_channels == 8 and model[3].out_channels == 16
    assert model[7].out_features == 10 and model(x).shape == (4, 10)

    model = small_cnn()
    compress.prune_(model, PrunePolicy(ratio=0.5), x, filter_fn=lambda m, fqn: fqn != "0")
    assert model[0].out_channels == 16 and model[3].out_channels == 16
    # the pruned model is still an ordinary exportable module
    q = compress.quantize_(model, QuantPolicy(backend="ort-dynamic"), x)
    assert q(x).shape == (4, 10)


def test_prune_a_token_mlp_with_taylor_importance():
    torch.manual_seed(0)
    model = TokenMLP()
    x, y = torch.randn(6, 9, 32), torch.randint(0, 7, (6,))
    with pytest.raises(ValueError, match="needs labels"):
        compress.prune_(model, PrunePolicy(ratio=0.25, importance="taylor"), x)
    compress.prune_(model, PrunePolicy(ratio=0.25, importance="taylor"), x, labels=y)
    assert model.mlp[1].out_features == 96  # the hidden width shrank by the global ratio
    assert model.head.out_features == 7 and model(x).shape == (6, 7)


def test_policies_are_frozen_and_checked():
    with pytest.raises(ValueError, match="ratios must lie"):
        PrunePolicy(ratio=1.0)
    with pytest.raises(ValueError, match="unknown importance"):
        PrunePolicy(ratio=0.2, importance="random")
    policy = PrunePolicy(ratio=0.3)
    with pytest.raises(AttributeError):
        policy.ratio = 0.5
    assert PrunePolicy.from_dict(policy.to_dict()) == policy
    assert PrunePolicy((0.5, 0.0)).to_dict() == {"ratios": [0.5, 0.0], "importance": "magnitude"}
    with pytest.raises(ValueError, match="HybridNet"):
        compress.prune_(small_cnn(), PrunePolicy((0.5,)), torch.rand(1, 3, 16, 16))
