"""Pruning, token merging and distillation as policies; a candidate using all four, exported and reloaded."""

import copy
import random
import subprocess
import sys

import pytest
import torch

from compress.nn import build_model, merge_tokens
from compress.nn.blocks import TransformerBlock
from compress.policies import DistillPolicy, MergePolicy, Policies, PrunePolicy, QuantPolicy
from compress.policies.distill import distill_loss, logit_kd_loss, similarity_loss
from compress.policies.prune import prune
from compress.policies.tome import apply_merge, merge_skip_reason
from compress.supernet import extract_subnet

# ---------------------------------------------------------------------------------------------- ToMe


def reference_merge(x, size, metric, r):
    """Bipartite soft matching written plainly with Python loops, straight from the paper's description."""
    out_x, out_size = [], []
    n = x.shape[1]
    r = min(r, n // 2)
    for b in range(x.shape[0]):
        m = metric[b] / metric[b].norm(dim=-1, keepdim=True)
        set_a, set_b = list(range(0, n, 2)), list(range(1, n, 2))
        edges = []
        for i in set_a:
            sims = [float(m[i] @ m[j]) for j in set_b]
            best = max(range(len(set_b)), key=lambda k: sims[k])
            edges.append((sims[best], i, set_b[best]))
        edges.sort(key=lambda e: -e[0])
        groups = {j: [j] for j in set_b}
        for _, i, j in edges[:r]:
            groups[j].append(i)
        tokens, sizes = [], []
        for _, i, _ in edges[r:]:
            tokens.append(x[b, i])
            sizes.append(size[b, i])
        for j in set_b:
            total = sum(size[b, k] for k in groups[j])
            tokens.append(sum(x[b, k] * size[b, k] for k in groups[j]) / total)
            sizes.append(total)
        out_x.append(torch.stack(tokens))
        out_size.append(torch.stack(sizes))
    return torch.stack(out_x), torch.stack(out_size)


@pytest.mark.parametrize("n, r", [(9, 3), (10, 5), (8, 1), (7, 10)])
def test_bipartite_matching_equals_brute_force(n, r):
    g = torch.Generator().manual_seed(n * 10 + r)
    x = torch.randn(3, n, 5, generator=g)
    metric = torch.randn(3, n, 4, generator=g)
    size = torch.randint(1, 4, (3, n, 1), generator=g).float()
    got_x, got_size = merge_tokens(x, size, metric, r)
    ref_x, ref_size = reference_merge(x, size, metric, r)
    assert got_x.shape == (3, n - min(r, n // 2), 5)
    torch.testing.assert_close(got_x, ref_x, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_size, ref_size)
    assert torch.allclose(got_size.sum(1), size.sum(1))  # every input token is accounted for


def test_merge_metric_is_the_keys_summed_over_heads():
    block = TransformerBlock(dim=12, num_heads=3, head_dim=4, mlp_hidden=16, merge_r=2).eval()
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        normed = block.norm1(x)
        _, metric = block.attn(normed, with_metric=True)
        keys = block.attn.qkv(normed).reshape(2, 10, 3, 3, 4)[:, :, 1]  # (B, N, heads, head_dim)
    torch.testing.assert_close(metric, keys.sum(dim=2))


def test_merging_tied_tokens_agrees_in_pytorch_and_onnx_runtime():
    """Images with blank backgrounds give many identical tokens: every tie must fall the same way in the
    exported model as in PyTorch (identical tokens merge to identical results whichever is picked)."""
    import io

    import onnxruntime as ort

    class Merge(torch.nn.Module):
        def forward(self, x, metric):
            return merge_tokens(x, None, metric, 6)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, generator=g)
    x[:, 4:12] = x[:, 4:5]  # eight identical "background" tokens
    metric = x[..., :4].clone()
    buffer = io.BytesIO()
    torch.onnx.export(Merge(), (x, metric), buffer, dynamo=False, opset_version=17, input_names=["x", "metric"],
                      dynamic_axes={"x": {0: "batch"}, "metric": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got_x, got_size = session.run(None, {"x": x.numpy(), "metric": metric.numpy()})
    want_x, want_size = merge_tokens(x, None, metric, 6)
    ref_x, ref_size = reference_merge(x, torch.ones_like(x[..., :1]), metric, 6)
    torch.testing.assert_close(torch.from_numpy(got_x), want_x, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got_size), want_size)
    torch.testing.assert_close(want_x, ref_x, atol=1e-6, rtol=1e-5)
    assert want_size.max() > 1  # tokens really merged


def _attn_last(tiny_space):
    rng = random.Random(0)
    while True:
        arch = tiny_space.sample(rng)
        if arch.stages[-1].block == "attn" and arch.stages[-1].depth == 2:
            return arch


def test_merge_r0_is_bit_identical_and_r_reduces_tokens(tiny_space, tiny_supernet):
    model = extract_subnet(tiny_supernet, _attn_last(tiny_space)).eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(apply_merge(copy.deepcopy(model), MergePolicy(0))(x), before)
        merged = apply_merge(copy.deepcopy(model), MergePolicy(4))
        seen = []
        hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o[0].shape[1]))
                 for b in merged.stages[-1].blocks]
        after = merged(x)
    for h in hooks:
        h.remove()
    assert seen == [16 - 4, 16 - 8]  # 4x4 tokens at the last stage, 4 merged per layer
    assert not torch.equal(after, before)
    # Merging approximates the unmerged model; its predictions mostly agree.
    assert (after.argmax(1) == before.argmax(1)).float().mean() >= 0.5
    # Carried by the config: rebuilt from config + weights, and exported to ONNX.
    rebuilt = build_model(merged.config())
    rebuilt.load_state_dict(merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), after)
    from compress.export.onnx import export_onnx
    import onnxruntime as ort

    session = ort.InferenceSession(export_onnx(merged, x).SerializeToString(), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), after, atol=1e-4,
                               rtol=1e-4)


def test_merge_is_skipped_with_a_reason_without_attention(tiny_space, tiny_supernet):
    arch = tiny_space.smallest(["conv", "conv", "conv"])
    model = extract_subnet(tiny_supernet, arch)
    assert "convolutional" in merge_skip_reason(model)
    with pytest.raises(ValueError):
        apply_merge(model, MergePolicy(2))


# ---------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruning_half_the_width_shrinks_the_model_physically(tiny_space, tiny_supernet, importance):
    arch = tiny_space.largest()
    model = extract_subnet(tiny_supernet, arch).eval()
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 5, (16,))
    n0 = sum(p.numel() for p in model.parameters())
    heads_before = [b.attn.num_heads for s in model.stages for b in s.blocks if isinstance(b, TransformerBlock)]
    prune(model, PrunePolicy((0.5, 0.5, 0.5), importance), x, y)
    n1 = sum(p.numel() for p in model.parameters())
    assert n1 <= 0.55 * n0
    heads_after = [b.attn.num_heads for s in model.stages for b in s.blocks if isinstance(b, TransformerBlock)]
    assert heads_after and all(a == b // 2 for a, b in zip(heads_after, heads_before))
    cfg = model.config()
    assert [s["out"] for s in cfg["stages"]] == [6, 8, 12]
    rebuilt = build_model(cfg)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x))
    assert model.classifier.out_features == 5 and model.stem.conv.in_channels == 3


def test_pruning_ratio_zero_leaves_the_stage_whole(tiny_space, tiny_supernet):
    model = extract_subnet(tiny_supernet, tiny_space.largest()).eval()
    before = model.config()
    prune(model, PrunePolicy((0.0, 0.5, 0.0)), torch.rand(8, 3, 16, 16), torch.randint(0, 5, (8,)))
    after = model.config()
    assert after["stages"][0]["blocks"] == before["stages"][0]["blocks"]
    assert after["stages"][2]["blocks"][0]["heads"] == before["stages"][2]["blocks"][0]["heads"]
    assert after["stages"][1]["out"] < before["stages"][1]["out"]


# ---------------------------------------------------------------------------------------------- distillation


def test_distillation_losses():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    teacher = torch.randn(8, 5, generator=g)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(distill_loss(DistillPolicy(weight=0.0), labels, logits, teacher), ce)
    assert logit_kd_loss(teacher, teacher, 4.0).abs() < 1e-6
    assert logit_kd_loss(logits, teacher, 4.0) > 0.01
    # The feature loss compares batch similarities, so it works across widths.
    fs, ft = torch.randn(8, 6, generator=g), torch.randn(8, 16, generator=g)
    assert similarity_loss(ft, ft).abs() < 1e-7
    assert similarity_loss(fs, ft) > 0
    assert similarity_loss(ft @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0], ft) < 1e-6  # rotation-invariant


# ---------------------------------------------------------------------------------------------- all four, exported


@pytest.mark.slow
def test_candidate_with_all_policies_exports_and_reproduces(tmp_path, trained_tiny):
    import compress
    from compress.export.artifact import write_artifact
    from compress.measure.accuracy import accuracy
    from compress.recipe import load_recipe
    from compress.search.candidate import BuildContext, CandidateSpec, build_candidate, measure_candidate
    from compress.supernet.checkpoint import load_supernet
    from tests.conftest import tiny_recipe

    loaded = load_recipe(tiny_recipe(tmp_path))
    ckpt = load_supernet(trained_tiny)
    data = loaded.load_data()
    context = BuildContext.create(ckpt.supernet, data, loaded.recipe.target, seed=0, bn_batches=2,
                                  calibration_batches_n=2)
    arch = _attn_last(ckpt.space)
    spec = CandidateSpec(arch, Policies(
        quant=QuantPolicy("ort-static", ("stages.1", "stages.2")),
        prune=PrunePolicy((0.25, 0.25, 0.5), "taylor"),
        merge=MergePolicy(3),
        distill=DistillPolicy(steps=15, temperature=2.0, weight=0.7, feature_weight=1.0, lr=1e-3, batch_size=32)))
    candidate = build_candidate(context, spec)
    metrics = measure_candidate(candidate, context)
    assert candidate.notes == {}
    cfg = candidate.model.config()
    assert [b["merge_r"] for b in cfg["stages"][-1]["blocks"]] == [3, 3]
    assert sum(p.numel() for p in candidate.model.parameters()) < \
        sum(p.numel() for p in extract_subnet(ckpt.supernet, arch).parameters())

    again = measure_candidate(build_candidate(context, spec), context)
    assert again.accuracy == metrics.accuracy  # deterministic: export rebuilds the same model

    path = write_artifact(tmp_path / "artifact", candidate, metrics, data=context.data, target=context.target, provenance={})
    assert accuracy(compress.load(path, runtime="onnxruntime"), data.val) == metrics.accuracy
    # The artifact loads in a process where torch-pruning cannot even be imported.
    code = ("import sys; sys.modules['torch_pruning'] = None\n"
            "import torch, compress\n"
            f"m = compress.load({str(path)!r})\n"
            "print(m(torch.rand(2, 3, 16, 16)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([2, 4])" in out.stdout  # the recipe's synthetic data has 4 classes
