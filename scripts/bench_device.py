"""Latency through the device server against local timing of the same models on the same machine, in one run.

    python scripts/bench_device.py [--pairs 5] [--repeats 200]

Starts a device server on loopback (a real process, as a user would), builds three subnets of the
cifar-hybrid space (smallest, a random one, largest; fp32 ONNX, 1 thread, batch 1; weights do not matter for
timing), and times each model in ``pairs`` alternating pairs: locally with ``measure_latency``, then through
the server, which runs the same function in a child process. The agreement is the median remote/local ratio
over pairs; the noise band it is judged against is what two *local* measurements of the same model differ by
(the same model timed locally twice, back to back, in the same pairs). Figures go to bench_results/device.*.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ROOT, environment, write_results

READY = "compress device server listening on"


def start_server(state: Path, log: Path):
    proc = subprocess.Popen([sys.executable, "-m", "compress.serve", "--port", "0", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    if not line or READY not in line[0]:
        proc.kill()
        raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")
    return proc, line[0].split()[len(READY.split())], (state / "token").read_text().strip()


def models() -> dict[str, bytes]:
    import torch

    from compress.deploy import lower
    from compress.policies import QuantPolicy
    from compress.space import SearchSpace
    from compress.supernet import HybridSupernet
    from compress.supernet.subnet import calibrated_subnet

    torch.manual_seed(0)
    space = SearchSpace.from_yaml(ROOT / "search_spaces" / "cifar_hybrid.yaml")
    supernet = HybridSupernet(space, in_channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3).eval()
    bn = [torch.rand(8, 3, 32, 32)]
    archs = {"smallest": space.smallest(), "random": space.sample(random.Random(3)), "largest": space.largest()}
    return {name: lower(calibrated_subnet(supernet, arch, bn), "onnxruntime", QuantPolicy(), [], (1, 3, 32, 32))
            .onnx_bytes() for name, arch in archs.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    from compress.measure.latency import measure_latency
    from compress.measure.remote import RemoteDevice, RemoteModel, RemoteTimer
    from compress.measure.runtime import OrtRunner

    import numpy as np

    blobs = models()
    example = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, token = start_server(Path(tmp) / "state", Path(tmp) / "server.log")
        device = RemoteDevice(url, token)
        timer = RemoteTimer(device)
        fingerprint = device.fingerprint()
        rows = {}
        try:
            for name, blob in blobs.items():
                runner, remote = OrtRunner(blob, threads=1), RemoteModel("onnxruntime", blob, 1, "cpu")
                local, local_again, through, wall_local, wall_remote = [], [], [], [], []
                for pair in range(args.pairs):
                    kwargs = dict(warmup=args.warmup, repeats=args.repeats, rounds=5)
                    started = time.perf_counter()
                    local.append(measure_latency(runner, example, **kwargs).median_ms)
                    wall_local.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    # A new repeats count per pair keeps the server's cache out of the comparison.
                    through.append(timer.latency(remote, example, warmup=args.warmup, repeats=args.repeats + pair,
                                                 rounds=5).median_ms)
                    wall_remote.append(time.perf_counter() - started)
                    local_again.append(measure_latency(runner, example, **kwargs).median_ms)
                ratios = [r / l for r, l in zip(through, local)]
                noise = [b / a for a, b in zip(local, local_again)]
                rows[name] = {
                    "onnx_kb": len(blob) / 1024, "local_ms": local, "local_again_ms": local_again,
                    "remote_ms": through, "remote_over_local": ratios, "local_over_local": noise,
                    "median_ratio": statistics.median(ratios), "median_noise": statistics.median(noise),
                    "ratio_range": [min(ratios), max(ratios)], "noise_range": [min(noise), max(noise)],
                    "wall_s_local": statistics.median(wall_local), "wall_s_remote": statistics.median(wall_remote),
                }
                print(name, {k: v for k, v in rows[name].items() if not isinstance(v, list)}, flush=True)
        finally:
            device.close()
            proc.terminate()
            proc.wait()

    lines = ["# Latency through the device server vs local timing (same machine, same models)", "",
             f"`python scripts/bench_device.py --pairs {args.pairs} --repeats {args.repeats}`: cifar-hybrid subnets "
             "(fp32 ONNX, ONNX Runtime, 1 thread, batch 1), each timed in alternating pairs: locally "
             "(`measure_latency`), through a loopback device server (the same function in the server's child "
             "process), and locally again. *Noise* is local-again / local: how far two local measurements of the "
             "same model differ here.", "",
             f"Device fingerprint: {fingerprint['cpu_model']}, {fingerprint['cpu_count']} CPUs, "
             f"onnxruntime {fingerprint['versions'].get('onnxruntime')}, governor {fingerprint['governor']}.", "",
             "| model | ONNX KB | local ms (median of pairs) | remote ms | remote / local: median [range] | "
             "local / local (noise): median [range] | wall s local / remote |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['onnx_kb']:.0f} | {statistics.median(r['local_ms']):.3f} | "
                     f"{statistics.median(r['remote_ms']):.3f} | {r['median_ratio']:.3f} "
                     f"[{r['ratio_range'][0]:.2f}, {r['ratio_range'][1]:.2f}] | {r['median_noise']:.3f} "
                     f"[{r['noise_range'][0]:.2f}, {r['noise_range'][1]:.2f}] | "
                     f"{r['wall_s_local']:.1f} / {r['wall_s_remote']:.1f} |")
    lines.append("")
    write_results("device", {"args": vars(args), "fingerprint": fingerprint, "models": rows,
                             "environment": environment()}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
