"""What each export format costs and buys: file size, bytes/parameter, load time, CPU generation speed (batch 1
and 8), held-out accuracy and loss against the unquantised merged model, and export time.

For each task a LoRA run is trained once (SmolLM2-135M, the same settings for every task), then exported in
every format by `leantune.export` in a fresh process (its held-out check scores the export and the tuned model
on the same items). Speed is measured in separate processes, one per format and round, in alternating order
over several rounds; the table reports medians and the ratio to the float32 merged model (`hf`) measured in
the same rounds. GGUF files run in llama-cpp-python when it is installed (`make test-llama-cpp` builds it);
its API decodes one sequence at a time, so GGUF rows have batch-1 speed only.

A QLoRA run on the first task is exported to `hf` twice: merged into the de-quantised NF4 weights it trained
over (the default) and into the original float weights.

    python bench/export.py                          # everything; jobs this commit already finished are kept
    python bench/export.py --tasks sms-spam --rounds 2
    python bench/export.py --fresh

Writes bench/results/export.json and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import job_key, load_results, work_dir, write_results

RESULTS = HERE / "results" / "export.json"
QLORA_RESULTS = HERE / "results" / "export_qlora.json"
WORK = work_dir("export")
TRAIN = {
    "model.base": "smollm2-135m",
    "data.eval_size": 100,
    "data.max_seq_len": 128,
    "training.max_steps": 40,
    "training.micro_batch_size": 8,
    "training.lr": 5e-4,
    "training.seed": 0,
    "training.checkpoint_every": 1000,
    "cost.usd_per_hour": 0,
}
TASKS = ("sms-spam", "tweets-sentiment")
FORMATS = {  # row name -> (format, quant)
    "hf": ("hf", None), "int8": ("int8", None), "int4": ("int4", None),
    "gguf-f16": ("gguf", "f16"), "gguf-q8_0": ("gguf", "q8_0"), "gguf-q5_1": ("gguf", "q5_1"),
    "gguf-q4_1": ("gguf", "q4_1"), "gguf-q4_0": ("gguf", "q4_0"), "gguf-lora": ("gguf-lora", None),
}
NEW_TOKENS = 48
CHECK_ITEMS = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_worker(*args: str, timeout: int = 1800) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---- workers (each in its own process) -------------------------------------------------------------------------

def train_worker(task: str, method: str) -> dict:
    from leantune import train

    name = f"{task}-{method}"
    overrides = {**TRAIN, "data.train": task, "method.name": method, "output.runs_dir": str(WORK / "runs"),
                 "output.name": name}
    result = train(None, [f"{k}={v}" for k, v in overrides.items()])
    return {"run_dir": str(result.run_dir), "train_seconds": round(result.elapsed_s, 1), "eval_loss": result.eval_loss}


def export_worker(run_dir: str, fmt: str, quant: str, out: str, merge_into: str) -> dict:
    from leantune.export.api import export

    record = export(run_dir, fmt, quant or None, out=out, force=True, merge_into=merge_into, check_items=CHECK_ITEMS,
                    say=lambda m: log("   " + m))
    return {"bytes": record.size, "bytes_per_parameter": round(record.bytes_per_parameter, 4),
            "parameters": record.parameters, "export_seconds": round(record.seconds, 1),
            "held_out": record.check["held_out"], "check": {k: record.check[k] for k in
                                                           ("how", "mean_kl", "top1_agreement", "passed")},
            "quality": record.check.get("quality"), "notes": record.notes}


def _prompts(run_dir: str, tokenizer, n: int) -> list[str]:
    from leantune.evaluation.tasks import held_out_examples
    from leantune.runs.rundir import open_run_dir

    examples = held_out_examples(open_run_dir(run_dir).config())[:n]
    return [tokenizer.apply_chat_template([m for m in e.messages if m["role"] != "assistant"], tokenize=False,
                                          add_generation_prompt=True) for e in examples]


def speed_worker(run_dir: str, row: str, folder: str) -> dict:
    """Load time and greedy generation tokens/s (batch 1 and 8) of one export."""
    import torch

    torch.set_num_threads(2)
    fmt, _ = FORMATS[row]
    started = time.perf_counter()
    if fmt == "gguf" or fmt == "gguf-lora":
        return _gguf_speed(run_dir, row, Path(folder), started)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt == "int4":
        sys.path.insert(0, folder)
        from load_int4 import load

        model, tokenizer = load(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    load_seconds = time.perf_counter() - started
    tokenizer.padding_side = "left"
    prompts = _prompts(run_dir, tokenizer, 8)
    out = {"load_seconds": round(load_seconds, 2)}
    for batch in (1, 8):
        enc = tokenizer(prompts[:batch], return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False,
                  "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=kwargs["pad_token_id"])
            t = time.perf_counter()
            model.generate(**enc, **kwargs)
        out[f"tokens_per_s_b{batch}"] = round(batch * NEW_TOKENS / (time.perf_counter() - t), 2)
    return out


def _gguf_speed(run_dir: str, row: str, folder: Path, started: float) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python not installed (make test-llama-cpp builds it)"}
    from leantune.export.writers import source_gguf
    from leantune.models.loading import load_tokenizer
    from leantune.runs.rundir import open_run_dir

    if FORMATS[row][0] == "gguf-lora":
        base = source_gguf(open_run_dir(run_dir).config()) or folder / "base-f16.gguf"
        llm = Llama(model_path=str(base), lora_path=str(folder / "adapter.gguf"), n_threads=2, n_ctx=512, verbose=False)
    else:
        llm = Llama(model_path=str(next(folder.glob("*.gguf"))), n_threads=2, n_ctx=512, verbose=False)
    load_seconds = time.perf_counter() - started
    tokenizer = load_tokenizer(open_run_dir(run_dir).config().model.base)
    prompt = llm.tokenize(_prompts(run_dir, tokenizer, 1)[0].encode(), add_bos=False, special=True)
    t, count = time.perf_counter(), 0
    for _token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        count += 1
        if count == NEW_TOKENS:
            break
    return {"load_seconds": round(load_seconds, 2), "tokens_per_s_b1": round(count / (time.perf_counter() - t), 2),
            "tokens_per_s_b8": None}


# ---- driver -----------------------------------------------------------------------------------------------------

def cached(key: dict, *worker_args: str) -> dict:
    """run_worker(*worker_args), or what it returned when this commit ran the same job before."""
    path = WORK / "jobs" / (job_key(key) + ".json")
    if path.is_file():
        return json.loads(path.read_text())
    value = run_worker(*worker_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--only", choices=("formats", "qlora"), help="one part; qlora goes to export_qlora.json")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = {"train": train_worker, "export": export_worker, "speed": speed_worker}[kind](*rest)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.fresh:
        import shutil

        shutil.rmtree(WORK / "jobs", ignore_errors=True)
    tasks = [t for t in args.tasks.split(",") if t]
    if args.only == "qlora":
        write_results(QLORA_RESULTS, {"qlora-merge": qlora_merges(tasks[0])})
        print_table(load_results(QLORA_RESULTS))
        return
    results = load_results(RESULTS)
    for task in tasks:
        log(f"{task}: training a LoRA run")
        run = cached({"id": "train", "task": task, **TRAIN}, "train", task, "lora")
        rows = {}
        for row, (fmt, quant) in FORMATS.items():
            folder = WORK / "exports" / task / row
            log(f"{task}: export {row}")
            rows[row] = cached({"id": "export", "task": task, "row": row, **TRAIN},
                               "export", run["run_dir"], fmt, quant or "", str(folder), "nf4")
            rows[row]["folder"] = folder
        speeds: dict[str, list[dict]] = {row: [] for row in FORMATS}
        for r in range(args.rounds):
            order = list(FORMATS) if r % 2 == 0 else list(reversed(FORMATS))  # alternate which goes first
            for row in order:
                log(f"{task}: speed {row} (round {r + 1}/{args.rounds})")
                speeds[row].append(run_worker("speed", run["run_dir"], row, str(rows[row]["folder"])))
        results[task] = {"run": {"train_seconds": run["train_seconds"], "eval_loss": run["eval_loss"]},
                         "rows": {row: summarise(rows[row], speeds[row]) for row in FORMATS}}
        ratios(results[task]["rows"])
        write_results(RESULTS, results)
    if args.only != "formats" and "qlora-merge" not in results:
        results["qlora-merge"] = qlora_merges(tasks[0])
        write_results(RESULTS, results)
    print_table(results)


def qlora_merges(task: str) -> dict:
    log(f"{task}: training a QLoRA run")
    run = cached({"id": "train-qlora", "task": task, **TRAIN}, "train", task, "qlora")
    merges = {}
    for target in ("nf4", "original"):
        log(f"{task}: QLoRA export hf merged into {target}")
        merges[target] = cached({"id": "qlora-merge", "task": task, "into": target, **TRAIN},
                                "export", run["run_dir"], "hf", "", str(WORK / "qlora" / target), target)
    return {"task": task, "merged_into": {k: {"held_out": v["held_out"], "check": v["check"],
                                              "quality": v.get("quality")} for k, v in merges.items()}}


def summarise(export: dict, speeds: list[dict]) -> dict:
    out = {k: v for k, v in export.items() if k not in ("folder",)}
    skipped = next((s["skipped"] for s in speeds if "skipped" in s), None)
    if skipped:
        out["speed"] = {"skipped": skipped}
        return out
    speed = {}
    for key in ("load_seconds", "tokens_per_s_b1", "tokens_per_s_b8"):
        values = [s[key] for s in speeds if s.get(key) is not None]
        speed[key] = {"median": statistics.median(values), "runs": values} if values else None
    out["speed"] = speed
    return out


def ratios(rows: dict) -> None:
    """Speed as a ratio to the float32 merged model, per round (the same round's hf run), then the median."""
    base = rows["hf"].get("speed", {})
    for row in rows.values():
        speed = row.get("speed", {})
        for key in ("tokens_per_s_b1", "tokens_per_s_b8"):
            if speed.get(key) and base.get(key):
                per_round = [a / b for a, b in zip(speed[key]["runs"], base[key]["runs"])]
                speed[key]["ratio_to_hf_fp32"] = round(statistics.median(per_round), 3)


def print_table(results: dict) -> None:
    for task, data in results.items():
        if task in ("_provenance", "qlora-merge"):
            continue
        rows = data["rows"]
        f16 = rows["gguf-f16"]["bytes"]
        print(f"\n{task}  (LoRA r=8, {TRAIN['training.max_steps']} steps; held-out {CHECK_ITEMS} items)")
        print("| format | size MB | x f16 | bytes/param | load s | tok/s b1 (x fp32) | tok/s b8 (x fp32) | accuracy | "
              "balanced acc. | loss | export s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            held = row["held_out"] or {}
            speed = row.get("speed", {})

            def tps(key, speed=speed):
                v = speed.get(key) if isinstance(speed, dict) else None
                if not v:
                    return "n/a"
                return f"{v['median']:.1f} ({v.get('ratio_to_hf_fp32', 1):.2f}x)"

            def score(metric, fmt, held=held):
                v = held.get(metric)
                return f"{fmt(v['export'])} (tuned {fmt(v['reference'])})" if v else "n/a"

            load = speed.get("load_seconds") if isinstance(speed, dict) else None
            print(f"| {name} | {row['bytes'] / 1e6:.1f} | {row['bytes'] / f16:.2f} | {row['bytes_per_parameter']:.3f} | "
                  f"{load['median'] if load else 'n/a'} | {tps('tokens_per_s_b1')} | {tps('tokens_per_s_b8')} | "
                  f"{score('accuracy', lambda x: f'{x:.1%}')} | {score('balanced_accuracy', lambda x: f'{x:.1%}')} | "
                  f"{score('loss', lambda x: f'{x:.4f}')} | {row['export_seconds']} |")
    if "qlora-merge" in results:
        print("\nQLoRA merged into:")
        for target, v in results["qlora-merge"]["merged_into"].items():
            held = v["held_out"] or {}
            print(f"  {target}: " + ", ".join(f"{m} {s['export']:.4g} (4-bit model {s['reference']:.4g})"
                                             for m, s in held.items()))


if __name__ == "__main__":
    main()
