"""LoRA over the GGUF's own blocks (`method.name=qlora-gguf`) against LoRA over the converted float32 weights, on
the bundled SmolLM2-135M (a Q4_1 GGUF) and sms-spam: peak resident memory, tokens/s and the losses (which must be
the same: the blocks de-quantise to exactly the converted weights).

Each job trains in a fresh process (its peak memory is its own); the two methods alternate for `--rounds`
rounds; medians and per-round ratios are reported. Short runs (`--steps`, default 12): this measures the cost of
a step, not what is learned.

    python bench/qlora_gguf.py              # ~6 min on 2 cores
    python bench/qlora_gguf.py --rounds 3 --steps 20

Writes bench/results/qlora_gguf.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results

RESULTS = HERE / "results" / "qlora_gguf.json"
WORK = work_dir("qlora_gguf")
METHODS = ("lora", "qlora-gguf")


def worker(method: str, steps: int, index: int) -> dict:
    import torch

    from leantune import train

    torch.manual_seed(0)
    result = train(None, ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=16",
                          "data.max_seq_len=128", f"training.max_steps={steps}", "training.micro_batch_size=8",
                          "training.lr=5e-4", "training.checkpoint_every=1000", "eval.after_train=false",
                          f"method.name={method}", "method.dropout=0.0", f"output.runs_dir={WORK / 'runs'}",
                          f"output.name={method}-{index}", "cost.usd_per_hour=0"], allow_duplicate=True)
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "tokens_per_s": round(result.tokens_per_s, 1), "losses": [m["loss"] for m in metrics],
            "quantized_bytes_per_param": json.loads((result.run_dir / "run.json").read_text()).get("quantized_bytes_per_param")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))), flush=True)
        return
    load_results(RESULTS)  # says when earlier results are from other code
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for method in METHODS if r % 2 == 0 else METHODS[::-1]:
            print(f"round {r + 1}/{args.rounds}: {method}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--worker", method, str(args.steps), str(r)],
                                  capture_output=True, text=True, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(proc.stderr[-3000:])
            runs[method].append(json.loads(lines[-1][7:]))
    summary = {m: {"peak_rss_gib": statistics.median(x["peak_rss_gib"] for x in runs[m]),
                   "tokens_per_s": statistics.median(x["tokens_per_s"] for x in runs[m])} for m in METHODS}
    summary["ratio"] = {
        "peak_rss": round(summary["qlora-gguf"]["peak_rss_gib"] / summary["lora"]["peak_rss_gib"], 3),
        "tokens_per_s": round(statistics.median(g["tokens_per_s"] / lo["tokens_per_s"]
                                                for g, lo in zip(runs["qlora-gguf"], runs["lora"])), 3),
        "max_loss_difference": max(abs(a - b) for g, lo in zip(runs["qlora-gguf"], runs["lora"])
                                   for a, b in zip(g["losses"], lo["losses"]))}
    write_results(RESULTS, {"runs": runs, "summary": summary, "steps": args.steps})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
