"""What each method buys: full fine-tuning, LoRA, QLoRA (NF4 and over the GGUF's own blocks), DoRA, AdaLoRA and IA3
on SmolLM2-135M and sms-spam, plus LoRA with EWC and with replay, under the same examples, optimizer steps, batch and seed.

Each configuration trains in a fresh process (so its peak memory is its own) and is then scored on
- the task: held-out SMS accuracy and balanced accuracy (log-likelihood of 'spam' vs 'ham' as the reply);
- general knowledge: 4-way multiple choice over 95 of the built-in trivia questions (other questions' answers as
  distractors), compared with the base model's score: a drop is forgetting. The other 95 are what EWC estimates
  its Fisher on and what replay mixes in, so the score never rewards memorising its own questions.
The learning rate is each method's usual one (full fine-tuning moves every weight and needs a ~10x smaller one),
or its default where it has a measured one (AdaLoRA, config.METHOD_LR) or none yet (IA3); everything else is shared.

    python bench/quality.py            # every configuration; ones this commit already measured are kept
    python bench/quality.py --fresh    # measure everything again
    python bench/quality.py --only lora,full --results bench/results/quality_some.json   # a subset, in its own file

Writes bench/results/quality.json and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results  # noqa: E402

RESULTS = HERE / "results" / "quality.json"
WORK = work_dir("quality")  # runs and the general-knowledge file of this commit only

SHARED = {
    "model.base": "smollm2-135m",
    "data.train": "sms-spam",
    "data.eval_size": 200,
    "data.max_seq_len": 128,
    "training.max_steps": 40,
    "training.micro_batch_size": 8,
    "training.warmup_ratio": 0.1,
    "training.seed": 0,
    "training.checkpoint_every": 1000,
}
CONFIGS = {
    "base": None,  # no training: the base model's scores
    "full": {"method.name": "full", "training.lr": 5e-5},
    "lora": {"method.name": "lora", "training.lr": 5e-4},
    "qlora": {"method.name": "qlora", "training.lr": 5e-4},
    "qlora-gguf": {"method.name": "qlora-gguf", "training.lr": 5e-4},  # LoRA over the GGUF's own 4-bit blocks
    "dora": {"method.name": "dora", "training.lr": 5e-4},
    "adalora": {"method.name": "adalora", "method.r": 12, "method.target_r": 8},  # its measured default lr (config.METHOD_LR)
    "ia3": {"method.name": "ia3"},  # at its default learning rate
    # IA3 scales activations by learned vectors starting at 1: candidates for its default learning rate
    "ia3@3e-3": {"method.name": "ia3", "training.lr": 3e-3},
    "ia3@1e-2": {"method.name": "ia3", "training.lr": 1e-2},
    "lora+ewc": {"method.name": "lora", "training.lr": 5e-4, "forgetting.ewc_lambda": 1e4},
    "lora+replay": {"method.name": "lora", "training.lr": 5e-4, "forgetting.replay_fraction": 0.1},
}
# The trivia questions are split in two: EWC's Fisher and replay use one half (written to a data file), the
# general-knowledge score is measured on the other, so protection is not confused with memorising the test.
GENERAL_FILE = WORK / "trivia-general.jsonl"
for _name in ("lora+ewc", "lora+replay"):
    CONFIGS[_name].update({"forgetting.ewc_data": str(GENERAL_FILE), "forgetting.replay_data": str(GENERAL_FILE)})


def trivia_halves():
    from leantune.data import load_examples

    examples = load_examples("trivia")
    return examples[0::2], examples[1::2]  # (for EWC / replay, for scoring)


def write_general_file() -> None:
    general, _ = trivia_halves()
    GENERAL_FILE.parent.mkdir(parents=True, exist_ok=True)
    GENERAL_FILE.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in general))


def trivia_score(model, tokenizer) -> float:
    from leantune.evaluation.multiple_choice import multiple_choice_accuracy, questions_with_distractors

    _, held = trivia_halves()
    return multiple_choice_accuracy(model, tokenizer, questions_with_distractors(held, n_choices=4, seed=0))


def worker(name: str) -> dict:
    """Runs in a fresh process: train (unless base), score, print one JSON line."""
    import torch

    from leantune.data import load_splits
    from leantune.data.builtin import SMS_LABELS
    from leantune.evaluation.classify import classification_accuracy
    from leantune.models.adapters import trainable_parameter_count
    from leantune.models.loading import load_base

    torch.manual_seed(0)
    write_general_file()
    out: dict = {"name": name}
    started = time.perf_counter()
    if CONFIGS[name] is None:
        base = load_base(SHARED["model.base"], "auto")
        model, tokenizer = base.model, base.tokenizer
        eval_examples = load_splits("sms-spam", None, SHARED["data.eval_size"], SHARED["training.seed"]).eval
    else:
        from leantune import train

        overrides = {**SHARED, **CONFIGS[name], "output.runs_dir": str(WORK / "runs"), "output.name": name.replace("+", "-"),
                     "cost.usd_per_hour": 0}  # the price of a machine we own: billed time is still recorded
        result = train(None, [f"{k}={v}" for k, v in overrides.items()])
        model, tokenizer, eval_examples = result.model, result.tokenizer, result.eval_examples
        trainable, total = trainable_parameter_count(model)
        info = json.loads((result.run_dir / "run.json").read_text())
        out.update(trainable=trainable, total_params=total, trainable_pct=100 * trainable / total,
                   train_seconds=round(result.elapsed_s, 1), tokens_per_s=round(result.tokens_per_s, 1),
                   final_loss=result.final_loss, eval_loss=result.eval_loss,
                   quantized_bytes_per_param=info.get("quantized_bytes_per_param"),
                   billed_seconds=info["billed"]["seconds"], run_dir=str(result.run_dir))
    task = classification_accuracy(model, tokenizer, eval_examples, list(SMS_LABELS))
    out.update(accuracy=task.accuracy, balanced_accuracy=task.balanced_accuracy,
               trivia_accuracy=trivia_score(model, tokenizer),
               wall_seconds=round(time.perf_counter() - started, 1),
               peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="results file (a subset measured at another commit must not replace the whole table)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker) | {"trivia_questions": 95}), flush=True)
        return

    results = {} if args.fresh else load_results(args.results)  # only what this commit measured is kept
    results.pop("_provenance", None)
    names = [n for n in args.only.split(",") if n]
    for i, name in enumerate(names, 1):
        if name in results:
            print(f"[{i}/{len(names)}] {name}: measured at this commit, kept", file=sys.stderr)
            continue
        print(f"[{i}/{len(names)}] {name}: training and scoring in a fresh process ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", name], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "120"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name} failed (exit {proc.returncode})")
        results[name] = json.loads(line[len("RESULT "):])
        write_results(args.results, results)  # after each one: an interrupted bench resumes
        r = results[name]
        print(f"    accuracy {r['accuracy']:.1%}, trivia {r['trivia_accuracy']:.1%}, {r['wall_seconds']:.0f}s", file=sys.stderr)
    print_table(results)


def print_table(results: dict) -> None:
    base = results.get("base", {})
    full = results.get("full", {})
    print("| method | accuracy | balanced | vs full | trainable | peak RSS GiB | tokens/s | train s | trivia, 95 questions (base "
          f"{base.get('trivia_accuracy', float('nan')):.1%}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        if name == "base":
            print(f"| base (no training) | {r['accuracy']:.1%} | {r['balanced_accuracy']:.1%} | | | {r['peak_rss_gib']} | | | "
                  f"{r['trivia_accuracy']:.1%} |")
            continue
        versus = f"{r['balanced_accuracy'] / full['balanced_accuracy']:.0%}" if full else ""
        drop = r["trivia_accuracy"] - base.get("trivia_accuracy", r["trivia_accuracy"])
        print(f"| {name} | {r['accuracy']:.1%} | {r['balanced_accuracy']:.1%} | {versus} | {r['trainable_pct']:.2f}% | "
              f"{r['peak_rss_gib']} | {r['tokens_per_s']:.0f} | {r['train_seconds']:.0f} | {r['trivia_accuracy']:.1%} "
              f"({drop:+.1%}) |")


if __name__ == "__main__":
    main()
