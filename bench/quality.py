"""What each method buys, with seeds: full fine-tuning, LoRA, DoRA, QLoRA (NF4 and over the GGUF's own blocks),
AdaLoRA, IA3, and LoRA with EWC and with replay, on SmolLM2-135M and three tasks, each at its defaults, under the
same examples, optimizer steps, batch and seed.

Tasks (each holds out 200 examples, split by the seed):
- sms-spam: spam / ham, scored by balanced accuracy (log-likelihood of each label as the reply);
- tweets-sentiment: negative / neutral / positive, balanced accuracy likewise;
- word-forms: free-text one-word answers ("walk is to walking as swim is to"), exact match of the greedy reply.
Every configuration also gets the general suite: 4-way multiple choice over 95 trivia questions and 240 word
analogies (capitals, currency, family); its change from the untrained base at the same seed is forgetting. The
other 95 trivia questions are what EWC estimates its Fisher on and what replay mixes in, so the score never rewards
memorising its own questions.

A job (task, method, seed) trains and scores in a fresh process, so its peak memory is its own. Jobs run in
parallel (--jobs); tokens/s is reported only by jobs that ran alone (--jobs 1, or --solo-speed: every method on
the first task at the first seed alone, first). Per task and method: mean and 95% t-interval over the seeds of the task score and of the
general-suite change, trainable parameters, peak memory, tokens/s, and dollars per run at the price used (a GPU:
the run's catalog price; a CPU job that ran alone: CPU_USD_PER_HOUR).

    python bench/quality.py --jobs 8                         # everything; jobs this commit already measured are kept
    python bench/quality.py --only lora,full --tasks sms-spam --results bench/results/quality_some.json
    python bench/quality.py --table                          # print the README tables from the results

Writes bench/results/quality.json after each job (an interrupted run resumes) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results  # noqa: E402

RESULTS = HERE / "results" / "quality.json"
WORK = work_dir("quality")  # runs and the general-knowledge file of this commit only

TASKS = ("sms-spam", "tweets-sentiment", "word-forms")
SEEDS = (0, 1, 2)
SHARED = {
    "model.base": "smollm2-135m",
    "data.eval_size": 200,
    "data.max_seq_len": 128,
    "training.max_steps": 40,
    "training.micro_batch_size": 8,
    "training.warmup_ratio": 0.1,
    "training.checkpoint_every": 1000,
}
# Each method at its defaults: the learning rate is config.METHOD_LR's unless stated here (full fine-tuning moves
# every weight and takes a ~20x smaller one than the LoRA family; not yet swept).
METHODS = {
    "base": None,  # no training: the base model's scores
    "full": {"method.name": "full", "training.lr": 5e-5},
    "lora": {"method.name": "lora"},  # the LoRA family at its measured default (config.METHOD_LR; 5e-4 until 6afc735)
    "dora": {"method.name": "dora"},
    "qlora": {"method.name": "qlora"},  # NF4 over the de-quantised GGUF (bitsandbytes)
    "qlora-gguf": {"method.name": "qlora-gguf"},  # LoRA over the GGUF's own 4-bit blocks
    "adalora": {"method.name": "adalora", "method.r": 12, "method.target_r": 8},
    "ia3": {"method.name": "ia3"},
    "lora+ewc": {"method.name": "lora", "forgetting.ewc_lambda": 1e4},
    "lora+replay": {"method.name": "lora", "forgetting.replay_fraction": 0.1},
}
DEFAULT_METHODS = tuple(METHODS)
# Learning-rate candidates for the LoRA family's default (run with --only; not in the default set)
METHODS.update({f"lora@{lr}": {"method.name": "lora", "training.lr": float(lr)} for lr in ("2e-4", "5e-4", "1e-3", "2e-3", "4e-3")})
# LoRA dropout's quality effect, for its default (issue 23; run with --only lora,lora-dropout-0)
METHODS["lora-dropout-0"] = {"method.name": "lora", "method.dropout": 0.0}
# EWC strengths below the table's 1e4 (run with --only lora,lora+ewc@1e3,lora+ewc@3e3): at 1e4 EWC kept every trivia
# point on sms-spam and 92% of LoRA's task score, against a bar of at most 1 point lost and 95% kept
METHODS.update({f"lora+ewc@{lam}": {"method.name": "lora", "forgetting.ewc_lambda": float(lam)} for lam in ("1e3", "3e3")})
# A larger replay share (run with --only lora,lora+replay,lora+replay@0.25): at 10% of the trained tokens replay kept
# 99% of LoRA's sms-spam score but lost 5.3 trivia points (one seed 12.6; quality_ewc_sweep.json, cf02b98)
METHODS["lora+replay@0.25"] = {"method.name": "lora", "forgetting.replay_fraction": 0.25}
# The trivia questions are split in two: EWC's Fisher and replay use one half (written to a data file), the
# general suite scores the other, so protection is not confused with memorising the test.
GENERAL_FILE = WORK / "trivia-general.jsonl"
for _name in [m for m in METHODS if m.startswith(("lora+ewc", "lora+replay"))]:
    METHODS[_name].update({"forgetting.ewc_data": str(GENERAL_FILE), "forgetting.replay_data": str(GENERAL_FILE)})
# A CPU run has no catalog price: the tables bill a job that ran alone on the 2-core machine at the on-demand price of
# a cloud VM of that size (AWS m7g.large, 2 vCPU / 8 GiB, us-east-1, $0.0816/h as published in June 2026). A job
# that shared the CPU with others gets no dollars, as it gets no tokens/s: its wall time was not its own.
CPU_USD_PER_HOUR = 0.0816
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student's t, two-sided 95%, by degrees of freedom


def job_id(task: str, method: str, seed: int) -> str:
    return f"{task}/{method}/{seed}"


def trivia_halves():
    from leantune.data import load_examples

    examples = load_examples("trivia")
    return examples[0::2], examples[1::2]  # (for EWC / replay, for scoring)


def write_general_file() -> None:
    general, _ = trivia_halves()
    GENERAL_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = GENERAL_FILE.with_suffix(f".{os.getpid()}.tmp")  # parallel workers: each writes its own, then renames
    tmp.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in general))
    tmp.replace(GENERAL_FILE)


def general_scores(model, tokenizer) -> dict:
    from leantune.evaluation.general import analogy_questions
    from leantune.evaluation.multiple_choice import multiple_choice_correct, questions_with_distractors

    _, held = trivia_halves()
    trivia = multiple_choice_correct(model, tokenizer, questions_with_distractors(held, n_choices=4, seed=0))
    analogies = multiple_choice_correct(model, tokenizer, analogy_questions())
    every = trivia + analogies
    return {"trivia": sum(trivia) / len(trivia), "analogies": sum(analogies) / len(analogies),
            "general": sum(every) / len(every), "general_items": len(every)}


def task_scores(task: str, model, tokenizer, examples) -> dict:
    from leantune.data.builtin import SMS_LABELS, TWEETS_LABELS
    from leantune.evaluation.classify import classification_accuracy
    from leantune.evaluation.generation import greedy_answers
    from leantune.evaluation.metrics import exact_match

    if task == "word-forms":
        replies = greedy_answers(model, tokenizer, examples, max_new_tokens=8, batch_size=50)
        hits = [exact_match(reply, ex.answer) for reply, ex in zip(replies, examples)]
        return {"score": sum(hits) / len(hits), "metric": "exact match", "accuracy": sum(hits) / len(hits)}
    labels = {"sms-spam": SMS_LABELS, "tweets-sentiment": TWEETS_LABELS}[task]
    result = classification_accuracy(model, tokenizer, examples, list(labels))
    return {"score": result.balanced_accuracy, "metric": "balanced accuracy", "accuracy": result.accuracy}


def worker(task: str, method: str, seed: int) -> dict:
    """Runs in a fresh process: train (unless base), score, return one result."""
    import torch

    from leantune.data import load_splits
    from leantune.models.adapters import trainable_parameter_count
    from leantune.models.loading import detected_device, load_base

    torch.manual_seed(seed)
    write_general_file()
    out: dict = {"task": task, "method": method, "seed": seed}
    started = time.perf_counter()
    if METHODS[method] is None:
        device, _ = detected_device()
        base = load_base(SHARED["model.base"], "auto", device)
        model, tokenizer = base.model, base.tokenizer
        eval_examples = load_splits(task, None, SHARED["data.eval_size"], seed).eval
    else:
        from leantune import train

        steps = {"training.max_steps": int(os.environ["QUALITY_STEPS"])} if os.environ.get("QUALITY_STEPS") else {}
        overrides = {**SHARED, **steps, **METHODS[method], "data.train": task, "training.seed": seed,
                     "output.runs_dir": str(WORK / "runs"), "output.name": f"{task}-{method.replace('+', '-')}-{seed}"}
        result = train(None, [f"{k}={v}" for k, v in overrides.items()])
        model, tokenizer, eval_examples = result.model, result.tokenizer, result.eval_examples
        trainable, total = trainable_parameter_count(model)
        info = json.loads((result.run_dir / "run.json").read_text())
        out.update(trainable=trainable, total_params=total, trainable_pct=100 * trainable / total,
                   train_seconds=round(result.elapsed_s, 1), tokens_per_s=round(result.tokens_per_s, 1),
                   final_loss=result.final_loss, eval_loss=result.eval_loss, peak_memory_mib=round(result.peak_memory_mb),
                   device=info.get("device"), price=info.get("price"),
                   cost_usd=result.cost_usd, billed_seconds=info["billed"]["seconds"])
    out.update(task_scores(task, model, tokenizer, eval_examples))
    out.update(general_scores(model, tokenizer))
    out.update(eval_items=len(eval_examples), wall_seconds=round(time.perf_counter() - started, 1),
               peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
    return out


def run_job(task: str, method: str, seed: int, threads: int) -> dict:
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, "--worker", task, method, str(seed)], capture_output=True,
                          text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"task": task, "method": method, "seed": seed, "failed": f"exit {proc.returncode}",
                "stderr_tail": proc.stderr[-2500:]}
    return json.loads(line[len("RESULT "):])


def available_methods(requested: list[str]) -> list[str]:
    """NF4 QLoRA needs bitsandbytes: without it the row says so instead of failing the whole benchmark."""
    import importlib.util

    if "qlora" in requested and importlib.util.find_spec("bitsandbytes") is None:
        print("qlora: bitsandbytes is not installed here, skipped", file=sys.stderr)
        return [m for m in requested if m != "qlora"]
    return requested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "METHOD", "SEED"))
    parser.add_argument("--only", default=",".join(DEFAULT_METHODS), help=f"methods, comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time")
    parser.add_argument("--solo-speed", action="store_true",
                        help="first run every method on the first task and seed alone: only those report tokens/s")
    parser.add_argument("--deadline-s", type=float, default=None, help="start no job after this many seconds")
    parser.add_argument("--steps", type=int, help="optimizer steps (a smoke test; write it to its own --results)")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--table", action="store_true", help="only print the tables of the results file")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="results file (a subset measured at another commit must not replace the whole table)")
    args = parser.parse_args()
    if args.steps:
        os.environ["QUALITY_STEPS"] = str(args.steps)  # the workers read it
    if args.worker:
        task, method, seed = args.worker
        print("RESULT " + json.dumps(worker(task, method, int(seed))), flush=True)
        return
    if args.table:
        print_tables(json.loads(args.results.read_text()))
        return

    import torch  # noqa: F401  (so the provenance records the GPU the workers will see)

    from leantune.models.loading import hf_dir_for

    started = time.monotonic()
    hf_dir_for(SHARED["model.base"])  # convert the GGUF once, before parallel workers would race to
    results = {} if args.fresh else load_results(args.results)  # only what this commit measured is kept
    jobs_done = results.setdefault("jobs", {})
    methods = available_methods([m for m in args.only.split(",") if m])
    tasks, seeds = [t for t in args.tasks.split(",") if t], [int(s) for s in args.seeds.split(",")]
    # seed by seed, so a run cut by --deadline-s leaves whole seeds missing, not whole tasks
    todo = [(t, m, s) for s in seeds for t in tasks for m in methods if job_id(t, m, s) not in jobs_done]
    # speed runs first, alone: every trained method on the first task at the first seed
    solo = [j for j in todo if j[0] == tasks[0] and j[2] == seeds[0] and j[1] != "base"] if args.solo_speed else []
    rest = [j for j in todo if j not in solo]
    threads = max(1, (os.cpu_count() or 2) // max(1, args.jobs))
    print(f"{len(todo)} jobs ({len(solo)} alone for speed, then {len(rest)} by {args.jobs})", file=sys.stderr, flush=True)

    def record(result: dict, alone: bool) -> None:
        result["alone"] = alone
        if not alone:
            result.pop("tokens_per_s", None)  # shared with other jobs: not a speed
        jobs_done[job_id(result["task"], result["method"], result["seed"])] = result
        results["price_note"] = "cost_usd: billed wall time at the run's price (the GPU catalog's on-demand price)"
        write_results(args.results, results)
        status = result.get("failed") or f"score {result['score']:.3f}, general {result['general']:.3f}, {result['wall_seconds']:.0f}s"
        print(f"[{len(jobs_done)}] {job_id(result['task'], result['method'], result['seed'])}: {status}  "
              f"({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)

    for task, method, seed in solo:
        if args.deadline_s and time.monotonic() - started > args.deadline_s:
            break
        record(run_job(task, method, seed, os.cpu_count() or 2), alone=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = []
        for task, method, seed in rest:
            futures.append(pool.submit(
                lambda t=task, m=method, s=seed: None if args.deadline_s and time.monotonic() - started > args.deadline_s
                else run_job(t, m, s, threads)))
        for future in as_completed(futures):
            if (result := future.result()) is not None:
                record(result, alone=args.jobs == 1)
    results["summary"] = summarise(jobs_done)
    write_results(args.results, results)
    print_tables(results)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 with one value: no spread to estimate)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, T_975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def suite_changes(rows: list[dict], base: dict) -> dict:
    out = {}
    for suite in ("general", "trivia", "analogies"):
        paired = [r[suite] - base[r["seed"]][suite] for r in rows if r["seed"] in base]
        mean, ci = interval(paired) if paired else (float("nan"), float("nan"))
        out.update({f"{suite}_change_mean": mean, f"{suite}_change_ci95": ci})
    return out


def job_cost_usd(result: dict) -> float | None:
    """The run's own bill where it had a price (a GPU's catalog price); on a CPU its billed seconds at
    CPU_USD_PER_HOUR when it ran alone."""
    if result.get("cost_usd") is not None:
        return result["cost_usd"]
    if result.get("device") == "cpu" and result.get("alone") and result.get("billed_seconds"):
        return result["billed_seconds"] * CPU_USD_PER_HOUR / 3600
    return None


def paired_difference(rows: list[dict], reference: dict) -> tuple[float, float]:
    """Mean and 95% half-width of (this method's score - the reference's) seed by seed: the seed draws the held-out
    examples and the data order, so a paired difference removes what the draw does to both."""
    paired = [r["score"] - reference[r["seed"]]["score"] for r in rows if r["seed"] in reference]
    return interval(paired) if paired else (float("nan"), float("nan"))


def summarise(jobs: dict) -> dict:
    summary: dict = {}
    for result in jobs.values():
        if "failed" in result:
            continue
        summary.setdefault(result["task"], {}).setdefault(result["method"], []).append(result)
    out: dict = {}
    order = {name: i for i, name in enumerate([*TASKS, *METHODS])}  # the tables in the order of the lists above
    summary = {t: dict(sorted(m.items(), key=lambda kv: order.get(kv[0], 99))) for t, m in
               sorted(summary.items(), key=lambda kv: order.get(kv[0], 99))}
    for task, by_method in summary.items():
        base = {r["seed"]: r for r in by_method.get("base", [])}
        full = by_method.get("full", [])
        full_mean = sum(r["score"] for r in full) / len(full) if full else None
        lora = {r["seed"]: r for r in by_method.get("lora", [])}
        lora_mean = sum(r["score"] for r in lora.values()) / len(lora) if lora else None
        out[task] = {}
        for method, rows in by_method.items():
            score, score_ci = interval([r["score"] for r in rows])
            speed = [r["tokens_per_s"] for r in rows if r.get("alone") and r.get("tokens_per_s")]
            costs = [cost for cost in map(job_cost_usd, rows) if cost is not None]
            out[task][method] = {
                "seeds": sorted(r["seed"] for r in rows), "metric": rows[0]["metric"],
                "score_mean": score, "score_ci95": score_ci, "scores": [r["score"] for r in rows],
                "vs_full": score / full_mean if full_mean else None,
                # EWC and replay are held to LoRA's score (the issue's 95% bar): the ratio and the paired difference
                "vs_lora": score / lora_mean if lora_mean else None,
                **dict(zip(("minus_lora_mean", "minus_lora_ci95"), paired_difference(rows, lora))),
                "general_mean": sum(r["general"] for r in rows) / len(rows),
                # the whole suite and each part: trivia is knowledge the model had (EWC and replay see its other
                # half); the analogies share the one-word answer form of the tasks, so training can raise them
                # (word-forms most: same prompt form)
                **suite_changes(rows, base),
                "trainable": rows[0].get("trainable"), "trainable_pct": rows[0].get("trainable_pct"),
                "peak_memory_mib": max((r.get("peak_memory_mib") or 0) for r in rows) or None,
                "peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
                "tokens_per_s": speed[0] if speed else None,
                "cost_usd_mean": sum(costs) / len(costs) if costs else None,
            }
    return out


def print_tables(results: dict) -> None:
    # from the jobs, not a stored summary: a file written by older code of this script lacks the newer columns
    summary = summarise(results["jobs"]) if results.get("jobs") else results.get("summary", {})
    for task, rows in summary.items():
        metric = next(iter(rows.values()))["metric"]
        print(f"\n**{task}** ({metric}, mean of seeds with 95% interval; the general suite's change from the base at the "
              "same seed, paired, with its interval)\n")
        # the whole suite's change (335 questions) is what the issue's 1-point bar names; trivia is the knowledge the
        # base had, the analogies can rise with the task (they share its one-word answers), so both are shown too
        print("| method | seeds | score | vs full | vs LoRA (paired, pt) | general change (335) | trivia change (95) | "
              "analogies change (240) | trainable | peak memory MiB | tokens/s | $ per run |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for method, r in rows.items():
            def pct(x, ci=None):
                return "" if x is None or x != x else f"{100 * x:.1f}%" + ("" if ci is None or ci != ci else f" ± {100 * ci:.1f}")
            def change(suite):
                mean, ci = r.get(f"{suite}_change_mean"), r.get(f"{suite}_change_ci95")
                if method == "base" or mean is None or mean != mean:
                    return ""
                return f"{100 * mean:+.1f}" + ("" if ci != ci else f" ± {100 * ci:.1f}") + " pt"
            versus = "" if r["vs_full"] is None or method == "base" else f"{r['vs_full']:.0%}"
            diff, diff_ci = r.get("minus_lora_mean"), r.get("minus_lora_ci95")
            versus_lora = ("" if method in ("base", "lora") or r.get("vs_lora") is None or diff != diff else
                           f"{r['vs_lora']:.0%}: {100 * diff:+.1f}" + ("" if diff_ci != diff_ci else f" ± {100 * diff_ci:.1f}"))
            trainable = "" if r["trainable_pct"] is None else f"{r['trainable_pct']:.2f}%"
            speed = "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}"
            cost = "" if r["cost_usd_mean"] is None else f"{r['cost_usd_mean']:.4f}"
            print(f"| {method} | {len(r['seeds'])} | {pct(r['score_mean'], r['score_ci95'])} | {versus} | {versus_lora} | "
                  f"{change('general')} | {change('trivia')} | "
                  f"{change('analogies')} | "
                  f"{trainable} | {r['peak_memory_mib'] or ''} | {speed} | {cost} |")


if __name__ == "__main__":
    main()
