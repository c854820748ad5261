"""The model card (README.md) written into every artifact, from its config.json."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def model_card(config: dict[str, Any], name: str) -> str:
    m = config["metrics"]
    lat = m.get("latency", {})
    target = config.get("target", {})
    prov = config.get("provenance", {})
    quant = config["quantization"]
    precision = (f"INT8 ({quant['backend']}) in {', '.join(quant['int8_units'])}; "
                 f"{len(quant['int8_layers'])} layers stored as int8" if quant.get("int8_layers") else "fp32")
    lines = [
        f"# {name}",
        "",
        "A standalone image classifier exported by compress. Loading it needs no supernet code:",
        "",
        "```python",
        "import compress",
        f'model = compress.load("{name}")                       # PyTorch, from model.safetensors',
        f'model = compress.load("{name}", runtime="onnxruntime") # model.onnx, the measured deployable',
        "logits = model(images)  # float32 (N, " + ", ".join(map(str, config["input"]["shape"])) + ") in [0, 1]",
        "```",
        "",
        "## Measured metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| val accuracy | {_fmt(m['accuracy'])} |",
    ]
    if "test_accuracy" in m:
        lines.append(f"| test accuracy (never used for selection) | {_fmt(m['test_accuracy'])} |")
    lines += [
        f"| latency, median | {_fmt(m['latency_ms'], 3)} ms |",
        f"| latency, p90 | {_fmt(m['latency_p90_ms'], 3)} ms |",
        f"| latency run-to-run spread | {100 * lat.get('ratio_spread', lat.get('spread', 0)):.1f} % |",
        f"| deployed file size | {_fmt(m['size_mb'], 3)} MB |",
        f"| parameters | {_fmt(m['params'])} |",
        f"| MACs per image | {_fmt(m['macs'])} |",
        "",
        f"Latency: {target.get('runtime')} on {target.get('device')}, batch {target.get('batch_size')}, "
        f"{target.get('threads')} thread(s), {target.get('warmup')} warm-up runs then {lat.get('repeats')} timed runs "
        f"in {len(lat.get('round_medians_ms', []))} rounds; measured on {prov.get('machine', {}).get('processor', '?')}."
        + (f" Drift-corrected: timed in alternating rounds against the largest fp32 subnet, {lat['ratio']:.3f}x its "
           f"latency (raw median of this measurement: {lat['median_ms']:.3f} ms)." if "ratio" in lat else ""),
        "",
        "## What it is",
        "",
        f"- precision: {precision}",
        f"- policies: `{config.get('policies')}`",
        f"- architecture: `{config.get('arch')}`",
        f"- input: {config['input']['shape']} float32 in [0, 1]; normalization "
        f"(mean {config['input']['normalization']['mean']}, std {config['input']['normalization']['std']}) is part of the model",
        f"- classes: {', '.join(config.get('classes', []))}",
        "",
        "## Provenance",
        "",
    ]
    for key in ("recipe", "recipe_hash", "supernet_key", "study", "trial", "parent_artifact", "teacher", "exported_at"):
        if key in prov:
            lines.append(f"- {key}: `{prov[key]}`")
    if "versions" in prov:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()))
    lines.append("")
    return "\n".join(lines)
