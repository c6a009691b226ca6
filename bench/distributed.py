"""One process against two (`leantune train --nproc 2`, fsdp2 and ddp) on this machine's CPU: tokens/s, each
process's peak resident memory against the planner's per-process prediction, with glibc's default allocator and
with `training.release_memory` (training/allocator.py) (the run's plan.json, the same
`Setup` as `leantune plan --sharding fsdp --gpus 2`), and the losses (which must agree: two processes train what
one does). The bundled SmolLM2-135M, LoRA r=8, sms-spam, the same global batch (micro-batch 8 x 2 accumulation).

Settings alternate for `--rounds` rounds, each run in fresh processes; one process gets every core's thread, each
of two gets half (the CPU is shared: on one machine two processes cannot be faster than one, the measurement is of
the overhead sharding adds). On a GPU machine, with `--nproc-max 1`, it measures the one-GPU case only (several GPUs
are needed for the rest).

    python bench/distributed.py               # ~13 min on 2 cores
    python bench/distributed.py --rounds 3 --steps 8

Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results

RESULTS = HERE / "results" / "distributed.json"
WORK = work_dir("distributed")
# (label, processes, strategy, training.release_memory)
SETTINGS = (("1 process", 1, "fsdp2", False), ("1 process, release_memory", 1, "fsdp2", True),
            ("2 processes fsdp2", 2, "fsdp2", False), ("2 processes fsdp2, release_memory", 2, "fsdp2", True),
            ("2 processes ddp", 2, "ddp", False))


def run_once(label: str, nproc: int, strategy: str, release: bool, steps: int, index: int) -> dict:
    runs = WORK / "runs" / f"{label.replace(' ', '-').replace(',', '')}-{index}"
    shutil.rmtree(runs, ignore_errors=True)  # a fresh runs directory: this run is the only one in it
    args = ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=16", "data.max_seq_len=128",
            f"training.max_steps={steps}", "training.micro_batch_size=8", "training.grad_accum=2",
            "training.checkpoint_every=1000", "eval.after_train=false", "method.dropout=0.0",
            f"training.distributed.strategy={strategy}", f"output.runs_dir={runs}", "cost.usd_per_hour=0",
            f"training.threads={max(1, (os.cpu_count() or 1) // nproc)}", f"training.release_memory={release}"]
    command = [sys.executable, "-m", "leantune", "train", *args, "--allow-duplicate", "--nproc", str(nproc)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    info = json.loads((run / "run.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    step_s = sum(m["elapsed_s"] - p["elapsed_s"] for p, m in zip(metrics, metrics[1:]))  # after the first step
    tokens = metrics[-1]["tokens"] - metrics[0]["tokens"]
    peaks = info.get("peak_memory_mb_per_process") or [metrics[-1]["peak_memory_mb"]]
    plan = json.loads((run / "plan.json").read_text())
    return {"tokens_per_s": round(tokens / step_s, 1), "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_gib_per_process": [round(p / 1024, 3) for p in peaks],
            "planned_gib_per_process": round(plan["memory_gib"]["total"], 3), "losses": [m["loss"] for m in metrics]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc-max", type=int, default=2)
    args = parser.parse_args()
    load_results(RESULTS)  # says when earlier results are from other code
    settings = [s for s in SETTINGS if s[1] <= args.nproc_max]
    runs: dict[str, list[dict]] = {label: [] for label, *_ in settings}
    for index in range(args.rounds):
        for label, nproc, strategy, release in settings:
            print(f"round {index + 1}/{args.rounds}: {label} ...", flush=True)
            result = run_once(label, nproc, strategy, release, args.steps, index)
            runs[label].append(result)
            print(f"  {result['tokens_per_s']} tokens/s, peak {result['peak_rss_gib_per_process']} GiB per process "
                  f"(planned {result['planned_gib_per_process']})", flush=True)
    one = statistics.median(r["tokens_per_s"] for r in runs["1 process"])
    summary = {}
    for label, results in runs.items():
        peaks = [p for r in results for p in r["peak_rss_gib_per_process"]]
        planned = results[0]["planned_gib_per_process"]
        summary[label] = {
            "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in results),
            "speed_x_one_process": round(statistics.median(r["tokens_per_s"] for r in results) / one, 3),
            "peak_rss_gib_per_process_max": max(peaks), "planned_gib_per_process": planned,
            "plan_error": round(planned / max(peaks) - 1, 3),
            "losses_equal_one_process_1e-4": all(
                abs(a - b) < 1e-4 for r in results for a, b in zip(r["losses"], runs["1 process"][0]["losses"])),
        }
    write_results(RESULTS, {"settings": {"model": "smollm2-135m", "data": "sms-spam", "method": "lora r=8",
                                         "global_batch": "8 x 2 accumulation", "steps": args.steps,
                                         "rounds": args.rounds},
                            "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
