"""Distillation runs: the distilled student against the same student fine-tuned without a teacher, and the
throughput of the loop with 1 and 2 processes on this machine. Everything goes through the real command line
(`compress distill`, `accelerate launch`).

The student is the smallest subnet of the recipe's space, INT8 (ort-static) everywhere, exported as an
artifact; every run re-quantizes it at the end with that policy. Each distillation setting (temperature T,
weight w on the soft labels) runs for two step budgets against fine-tuning on the labels only (w = 0) with the
same data order, optimizer, schedule and seed. (A first version pruned the student by half as well: it then
started at 15% accuracy and 300 steps from either teacher or labels only brought it to ~23%.)

    python scripts/bench_distill.py [--recipe recipes/mosaic.yaml] [--steps 300,1200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys

from benchlib import ROOT, environment, trained_context, write_results

from compress.export.artifact import write_artifact
from compress.policies import Policies, QuantPolicy
from compress.search.candidate import CandidateSpec, build_candidate, measure_candidate
from compress.search.suggest import space_units


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill(recipe: str, student, out, steps: int, *extra, processes: int = 1) -> dict:
    if out.exists():
        shutil.rmtree(out)
    args = ["-m", "compress", "distill", recipe, "--student", str(student), "--out", str(out), "--steps", str(steps),
            "--eval-every", str(steps), "--checkpoint-every", str(10 * steps), *extra]
    if processes > 1:
        args = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(max(1, 2 // processes)))
    subprocess.run([sys.executable, *args], check=True, env=env, cwd=ROOT)
    return json.loads((out / "config.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/mosaic.yaml")
    parser.add_argument("--run-dir")
    parser.add_argument("--steps", default="300,1200", help="step budgets, comma-separated")
    parser.add_argument("--throughput-steps", type=int, default=60)
    args = parser.parse_args()
    loaded, checkpoint, context = trained_context(args.recipe, args.run_dir)
    space = loaded.space
    bench = ROOT / "runs" / f"bench-distill-{loaded.name}"
    bench.mkdir(parents=True, exist_ok=True)
    spec = CandidateSpec(space.smallest(), Policies(quant=QuantPolicy("ort-static", tuple(space_units(space)))),
                         seed=loaded.recipe.seed)
    candidate = build_candidate(context, spec)
    student = write_artifact(bench / "student", candidate, measure_candidate(candidate, context), data=context.data,
                             target=context.target, provenance={"space": space.name,
                                                                "space_fingerprint": space.fingerprint()})
    parent = json.loads((student / "config.json").read_text())["metrics"]["accuracy"]
    budgets = [int(b) for b in args.steps.split(",")]
    settings = [("labels only", "labels", "1", "0"), ("T=4, w=0.9", "t4-w0.9", "4", "0.9"),
                ("T=2, w=0.5 (the default)", "t2-w0.5", "2", "0.5"), ("T=1, w=0.5", "t1-w0.5", "1", "0.5")]
    runs: dict[str, dict[int, dict]] = {}
    for name, slug, temperature, weight in settings:
        for steps in budgets:
            cfg = distill(args.recipe, student, bench / f"{slug}-{steps}", steps, "--temperature", temperature,
                          "--weight", weight)
            runs.setdefault(name, {})[steps] = {k: cfg["metrics"][k] for k in ("accuracy", "test_accuracy")}
    d = cfg["provenance"]["distillation"]  # batch and lr, the same in every run
    throughput = {}
    for processes in (1, 2):
        cfg = distill(args.recipe, student, bench / f"throughput-{processes}", args.throughput_steps,
                      processes=processes)
        run = cfg["provenance"]["distillation"]
        throughput[processes] = {"samples": sum(run["samples_per_rank"]), "seconds": run["seconds_this_session"],
                                 "samples_per_second": sum(run["samples_per_rank"]) / run["seconds_this_session"],
                                 "samples_per_rank": run["samples_per_rank"]}

    md = [f"## Distillation runs on `{loaded.name}`: student = smallest subnet, INT8 (ort-static), {100 * parent:.2f}% "
          "val before", "",
          "| fine-tuning | " + " | ".join(f"{b} steps: val / test acc" for b in budgets) + " |",
          "| --- | " + " | ".join("---" for _ in budgets) + " |"]
    for name, by_steps in runs.items():
        md.append(f"| {name} | " + " | ".join(f"{100 * by_steps[b]['accuracy']:.2f}% / {100 * by_steps[b]['test_accuracy']:.2f}%"
                                             for b in budgets) + " |")
    md += ["", f"Batch {d['batch_size']}, AdamW lr {d['lr']:g}, teacher: the largest subnet of the supernet; accuracy "
           "measured after re-quantization. Labels only = the same run with distillation weight 0 (same data order, "
           "optimizer, schedule and seed).", "",
           "| processes | samples | seconds | samples / s |", "| --- | --- | --- | --- |"]
    for p, t in throughput.items():
        md.append(f"| {p} | {t['samples']} | {t['seconds']:.1f} | {t['samples_per_second']:.0f} |")
    md += ["", f"Throughput: {args.throughput_steps} steps of the same student on this 2-core machine "
           "(2 processes: `accelerate launch --multi_gpu --num_processes 2`, gloo, one thread each); seconds "
           "count the whole loop of one session, evaluation included.", ""]
    write_results("distill", {"recipe": args.recipe, "student_accuracy": parent, "runs": runs,
                              "throughput": throughput, "environment": environment()}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
