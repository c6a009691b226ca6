"""What `training.compile`'s persistent cache (training/compile_cache.py) saves a second run.

Three `leantune train` processes on SmolLM2-135M, sms-spam, LoRA r=8, micro-batch 8, 256 tokens, 8 steps: uncompiled;
compiled with an empty Inductor cache (a first run); compiled again over the cache the first one left (a second
run: a later experiment with the same shapes, or a resume). Reported per run: the first step's seconds (where the
compile is paid), the later steps' mean, and the process's wall time. One invocation, in that order: a first run
can only come before a second.

    python bench/compile_cache.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROVENANCE, REPO, provenance  # noqa: E402

WORK = REPO / "bench" / ".work" / "compile_cache"
OVERRIDES = ["model.base=smollm2-135m", "data.train=sms-spam", "data.max_seq_len=256", "data.max_train_examples=400",
             "method.name=lora", "method.r=8", "training.micro_batch_size=8", "training.max_steps=8",
             "training.checkpoint_every=1000", "eval.after_train=false", "data.eval_size=16"]


def run(name: str, compiled: bool, cache: Path) -> dict:
    runs = WORK / "runs"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    args = [sys.executable, "-m", "leantune", "train", *OVERRIDES, f"training.compile={str(compiled).lower()}",
            f"output.runs_dir={runs}", f"output.name={name}", "--allow-duplicate"]
    print(f"{name} ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    run_dir = max((p for p in runs.iterdir() if p.name.endswith(name)), key=lambda p: p.stat().st_mtime)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
    later = times[1:]  # steps 3.. (step 2 can still settle)
    result = {"first_step_s": round(steps[0]["elapsed_s"], 2), "later_step_s": round(sum(later) / len(later), 3),
              "wall_s": round(wall, 1), "losses": [round(s["loss"], 5) for s in steps],
              "cache_files": sum(1 for _ in cache.rglob("*") if _.is_file()) if cache.is_dir() else 0}
    print(f"  first step {result['first_step_s']} s, later steps {result['later_step_s']} s, wall {result['wall_s']} s",
          flush=True)
    return result


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cache = WORK / "inductor-cache"
    results = {"plain": run("plain", False, cache)}
    results["compiled, empty cache"] = run("first", True, cache)
    results["compiled, cache of the first"] = run("second", True, cache)
    first, second = results["compiled, empty cache"], results["compiled, cache of the first"]
    summary = {"second_run_first_step_vs_first": round(second["first_step_s"] / first["first_step_s"], 3),
               "compile_seconds_saved": round(first["first_step_s"] - second["first_step_s"], 1),
               "later_steps_vs_plain": round(second["later_step_s"] / results["plain"]["later_step_s"], 3),
               "same_losses_first_and_second": first["losses"] == second["losses"]}
    out = REPO / "bench" / "results" / "compile_cache.json"
    out.write_text(json.dumps({PROVENANCE: provenance(), "settings": OVERRIDES, "runs": results, "summary": summary},
                              indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
