"""Validate the planner's memory model (and its time model) against real training steps.

For each config a fresh Python process loads the model, runs three optimizer steps on random tokens
and reports its peak resident memory (ru_maxrss: on CPU there is no allocator statistic that covers
everything a step touches) and its tokens/s; the parent compares both with leantune.plan's predictions
for the same setup. On a CUDA machine the worker reports torch.cuda.max_memory_allocated instead.

The planner predicts the memory the tensors need. On CPU, glibc's malloc keeps freed activation memory
in its heap once its adaptive mmap threshold has grown, so the resident peak overstates that. Each config
therefore runs three times, back to back: with the threshold fixed (MALLOC_MMAP_THRESHOLD_=131072: the
validation regime, what `training.release_memory` does), with the default allocator (a plain process), and with
TCMalloc preloaded (what `leantune train` does with training.allocator=auto, training/allocator.py); the table
gives each peak's error against the plan and the step time of each against the default's.

Configs marked held-out were added after the two fitted constants (the process baseline and the CPU-only
bitsandbytes term) were fitted, and were not used to set anything.

The three regimes above measure a minimal PEFT/transformers step on random tokens. The fourth is what a user runs:
a plain `leantune train` process (its own allocator choice, LoRA function, packing, loss at labelled positions),
on the same shapes as plain text, and on three real tasks (held out) where packing and shared prefixes make the
micro-batches smaller than micro-batch x longest example. Its peak (the process's ru_maxrss, from wait4) is
compared with the plan the run itself wrote (plan.json) before its first step.

    python bench/memory_model.py            # all configs; results are kept, a rerun skips those done
    python bench/memory_model.py --fresh    # measure everything again

Writes bench/results/memory_model.json and prints a table (README has the latest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory_model.json"
sys.path.insert(0, str(HERE))
from common import load_results, smollm2_tokenizer, text_rows, work_dir, write_results as write_results_file  # noqa: E402

WORK = work_dir("memory_model")  # this commit's `leantune train` jobs

# (name, model, method, seq_len, micro_batch, gradient checkpointing)
CONFIGS = [
    ("tiny-lora-s256-b4", "tiny-256", "lora", 256, 4, False),
    ("tiny-full-s256-b4", "tiny-256", "full", 256, 4, False),
    ("tiny-full-s512-b8", "tiny-256", "full", 512, 8, False),
    ("tiny-lora-s512-b8-ckpt", "tiny-256", "lora", 512, 8, True),
    ("smol-lora-s128-b1", "smollm2-135m", "lora", 128, 1, False),
    ("smol-lora-s256-b4", "smollm2-135m", "lora", 256, 4, False),
    ("smol-lora-s512-b4", "smollm2-135m", "lora", 512, 4, False),
    ("smol-lora-s512-b4-ckpt", "smollm2-135m", "lora", 512, 4, True),
    ("smol-lora-s1024-b2", "smollm2-135m", "lora", 1024, 2, False),
    ("smol-full-s256-b4", "smollm2-135m", "full", 256, 4, False),
    ("smol-full-s512-b2-ckpt", "smollm2-135m", "full", 512, 2, True),
    ("smol-full-s128-b8", "smollm2-135m", "full", 128, 8, False),
    ("smol-qlora-s256-b4", "smollm2-135m", "qlora", 256, 4, False),
    ("smol-qlora-s512-b4-ckpt", "smollm2-135m", "qlora", 512, 4, True),
    # held out: not used to fit or set anything
    ("tiny-lora-s1024-b4", "tiny-256", "lora", 1024, 4, False),
    ("smol-lora-s768-b2", "smollm2-135m", "lora", 768, 2, False),
    ("smol-full-s384-b2", "smollm2-135m", "full", 384, 2, False),
    ("smol-qlora-s384-b2", "smollm2-135m", "qlora", 384, 2, False),
]
HELD_OUT = {"tiny-lora-s1024-b4", "smol-lora-s768-b2", "smol-full-s384-b2", "smol-qlora-s384-b2"}
# real tasks through `leantune train` only: (name, task, micro-batch, steps); the demo's and bench/throughput.py's
# settings (max_seq_len 256, LoRA r 8 at its defaults). Held out: added after every constant was set.
TASK_CONFIGS = [
    ("task-sms-spam-b8", "sms-spam", 8, 12),
    ("task-tweets-sentiment-b8", "tweets-sentiment", 8, 12),
    ("task-trivia-b8", "trivia", 8, 12),
]
EVAL_SIZE = {"trivia": 40}  # of its 190 rows; the others hold out leantune's default 200
LORA_RANK = 8
STEPS = 3
TRAIN_REPEATS = 2


def tiny_256_dir() -> Path:
    """A random 4-layer Llama, hidden 256, with SmolLM2's 49k vocabulary (so the logits term is real)."""
    path = Path(os.environ.get("LEANTUNE_HOME", Path.home() / ".cache" / "leantune")) / "bench" / "tiny-256"
    if not (path / "config.json").is_file():
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(path)
    return smollm2_tokenizer(path)  # `leantune train` needs one: SmolLM2's (the same vocabulary)


def leantune_train_job(name: str, spec: dict) -> dict:
    """One plain `leantune train` process (a fresh interpreter, the program's own start-up: TCMalloc when
    installed) on `spec`'s shapes; its peak resident memory from the kernel (wait4) against its own plan.json."""
    job = WORK / name
    if job.exists():
        shutil.rmtree(job)
    job.mkdir(parents=True)
    overrides = {"output.runs_dir": str(job / "runs"), "eval.after_train": "false", "training.eval_every": 0,
                 "training.checkpoint_every": 1000, "method.r": LORA_RANK, "data.max_seq_len": spec["seq_len"],
                 "training.micro_batch_size": spec["micro_batch"], "training.max_steps": spec["steps"]}
    if "task" in spec:
        overrides.update({"model.base": "smollm2-135m", "data.train": spec["task"],
                          "data.eval_size": EVAL_SIZE.get(spec["task"], 200)})
    else:  # the HF regimes' shapes: full rows of plain text, every token trained
        from leantune.models.loading import hf_dir_for

        model_dir = tiny_256_dir() if spec["model"] == "tiny-256" else hf_dir_for(spec["model"])
        overrides.update({"model.base": str(model_dir), "data.train": str(text_rows(job, model_dir, spec)),
                          "data.format": "text", "data.eval_size": 0, "method.name": spec["method"],
                          "training.gradient_checkpointing": str(spec["grad_checkpointing"]).lower()})
    command = [sys.executable, "-m", "leantune", "train", *[f"{k}={v}" for k, v in overrides.items()], "--allow-duplicate"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "LD_PRELOAD"))}
    with open(job / "train.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"leantune train failed for {name}: {(job / 'train.log').read_text()[-1500:]}")
    [run] = [p for p in (job / "runs").iterdir() if (p / "plan.json").is_file()]
    plan = json.loads((run / "plan.json").read_text())
    info = json.loads((run / "run.json").read_text())
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
    planned = plan["memory_gib"]["total"] * 2**30
    peak = usage.ru_maxrss * 1024
    return {"peak_bytes": peak, "planned_bytes": planned, "error": planned / peak - 1,
            "reported_peak_mib": steps[-1]["peak_memory_mb"], "planned_gib": plan["memory_gib"],
            "planned_rows": plan["setup"]["micro_batch"], "planned_row_len": plan["setup"]["seq_len"],
            "step_seconds": sorted(times)[len(times) // 2] if times else None, "allocator": info.get("allocator"),
            "packed_one_row": info.get("packed_one_row"), "shared_prefix_saving": info.get("shared_prefix_saving")}


def leantune_train_runs(name: str, spec: dict) -> dict:
    """TRAIN_REPEATS runs of the same job: TCMalloc's resident peak moves between identical runs (1.21-1.41 GiB
    in four runs of the tiny LoRA config), so the highest is what a user should plan for."""
    runs = [leantune_train_job(name, spec) for _ in range(TRAIN_REPEATS)]
    worst = max(runs, key=lambda r: r["peak_bytes"])
    return {**worst, "peaks_bytes": [r["peak_bytes"] for r in runs]}


def worker(spec: dict) -> dict:
    """Runs in its own process: load, train STEPS steps, report peak memory and throughput."""
    import torch

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + torch imported
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from leantune.models.loading import hf_dir_for

    torch.manual_seed(0)
    path = tiny_256_dir() if spec["model"] == "tiny-256" else hf_dir_for(spec["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = {"dtype": dtype}
    if spec["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = device
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    if spec["grad_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec["method"] in ("lora", "qlora"):
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    vocab = model.config.vocab_size
    b, s = spec["micro_batch"], spec["seq_len"]
    times = []
    for _ in range(STEPS):
        ids = torch.randint(0, vocab, (b, s), device=device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss  # standard HF loss: full logits, the planner's default
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak, "baseline_bytes": baseline_kib * 1024, "step_seconds": min(times[1:]),
            "tokens_per_s": b * s / min(times[1:]), "device": device, "threads": torch.get_num_threads()}


def matmul_gflops() -> float:
    """The machine's achievable fp32 matmul rate: the 'peak' the CPU time model is measured against."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def predict(name, model, method, seq_len, micro_batch, ckpt, device):
    from leantune.plan import estimate_peak_memory, resolve_shape
    from leantune.plan.setup import Setup
    from leantune.plan.shapes import shape_from_dir
    from leantune.plan.timing import flops_per_token

    shape = shape_from_dir(tiny_256_dir()) if model == "tiny-256" else resolve_shape(model)
    setup = Setup(method=method, seq_len=seq_len, micro_batch=micro_batch, grad_checkpointing=ckpt, lora_rank=LORA_RANK,
                  dtype="bf16" if device == "cuda" else "fp32", device=device)
    return estimate_peak_memory(shape, setup), flops_per_token(shape, setup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="run configs whose name contains this")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="results file (a subset at a later commit must not replace the whole table)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {} if args.fresh else load_results(args.results)  # measurements of this commit only
    runs = results.setdefault("runs", {}).setdefault(device, {})
    results.setdefault("matmul_gflops", {})[device] = round(matmul_gflops(), 1) if device == "cpu" else None
    todo = [c for c in CONFIGS if (not args.only or args.only in c[0])]
    for i, (name, model, method, seq_len, mb, ckpt) in enumerate(todo, 1):
        if name in runs and not args.fresh:
            print(f"[{i}/{len(todo)}] {name}: done before, kept", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {name} ...", end=" ", flush=True)
        spec = {"model": model, "method": method, "seq_len": seq_len, "micro_batch": mb, "grad_checkpointing": ckpt}
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"} if device == "cpu" else os.environ
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
        others = {}
        if device == "cpu" and proc.returncode == 0:
            for regime, extra_env in (("default_allocator", {}), ("tcmalloc", tcmalloc_env())):
                if extra_env is None:
                    continue
                run = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                     text=True, env={**os.environ, **extra_env})
                if run.returncode == 0:
                    others[regime] = json.loads(run.stdout.strip().splitlines()[-1])
        if proc.returncode != 0:
            print("failed:", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode, flush=True)
            runs[name] = {"spec": spec, "error": proc.stderr.strip()[-2000:]}
            continue
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        memory, fpt = predict(name, model, method, seq_len, mb, ckpt, device)
        error = memory.total / measured["peak_bytes"] - 1
        for regime, other in others.items():
            measured[f"{regime}_peak_bytes"] = other["peak_bytes"]
            measured[f"{regime}_step_seconds"] = other["step_seconds"]
        runs[name] = {"spec": spec, "measured": measured, "predicted": memory.as_gib(), "predicted_bytes": memory.total,
                      "error": error, "achieved_gflops": measured["tokens_per_s"] * fpt / 1e9, "held_out": name in HELD_OUT}
        for regime in others:
            runs[name][f"{regime}_error"] = memory.total / measured[f"{regime}_peak_bytes"] - 1
        print(f"measured {measured['peak_bytes'] / 2**30:.2f} GiB, predicted {memory.total / 2**30:.2f} GiB ({error:+.1%}), "
              f"{measured['tokens_per_s']:.0f} tok/s", flush=True)
        if device == "cpu":
            runs[name]["leantune_train"] = leantune_train_runs(name, {**spec, "seq_len": seq_len, "micro_batch": mb,
                                                                     "steps": STEPS})
            print(f"    leantune train: {describe(runs[name]['leantune_train'])}", flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        results["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                              "date": time.strftime("%Y-%m-%d")}
        write_results_file(args.results, results)  # resumable: every finished config is on disk
    tasks = [c for c in TASK_CONFIGS if device == "cpu" and (not args.only or args.only in c[0])]
    for i, (name, task, mb, steps) in enumerate(tasks, 1):
        if name in runs and not args.fresh:
            print(f"[task {i}/{len(tasks)}] {name}: done before, kept", flush=True)
            continue
        spec = {"task": task, "seq_len": 256, "micro_batch": mb, "steps": steps}
        print(f"[task {i}/{len(tasks)}] {name} ...", end=" ", flush=True)
        runs[name] = {"spec": spec, "leantune_train": leantune_train_runs(name, spec), "held_out": True}
        print(f"leantune train: {describe(runs[name]['leantune_train'])}", flush=True)
        write_results_file(args.results, results)
    print_table(results, device)


def describe(job: dict) -> str:
    return (f"peak {job['peak_bytes'] / 2**30:.2f} GiB (of {', '.join(f'{p / 2**30:.2f}' for p in job['peaks_bytes'])}), its plan {job['planned_bytes'] / 2**30:.2f} GiB "
            f"({job['error']:+.1%}) for {job['planned_rows']} x {job['planned_row_len']} tokens, {job['allocator']}")


def tcmalloc_env() -> dict | None:
    """The environment `leantune train` restarts itself with (training/allocator.py), or None if not installed."""
    from leantune.training.allocator import QUIET, find_allocator

    found = find_allocator()
    return None if found is None else {"LD_PRELOAD": str(found[1]), **QUIET}


def print_table(results: dict, device: str) -> None:
    runs = results["runs"][device]
    peak = results.get("matmul_gflops", {}).get(device)
    print("\n| config | predicted GiB | fixed threshold GiB (error) | default malloc GiB (error) | TCMalloc GiB (error) | "
          f"step time fixed / TCMalloc, x default | tokens/s (fixed) | achieved GFLOP/s{' (of %.0f matmul)' % peak if peak else ''} |")
    print("|---|---|---|---|---|---|---|---|")
    errors = {"fixed": [], "default_allocator": [], "tcmalloc": []}
    gib = 2**30
    for name, r in runs.items():
        if "measured" not in r and "leantune_train" in r:
            continue  # a real task: leantune train only (below)
        if "error" in r and "measured" not in r:
            print(f"| {name} | failed | | | | | | |")
            continue
        m = r["measured"]
        errors["fixed"].append(abs(r["error"]))
        cells = []
        for regime in ("default_allocator", "tcmalloc"):
            if f"{regime}_peak_bytes" in m:
                errors[regime].append(abs(r[f"{regime}_error"]))
                cells.append(f"{m[f'{regime}_peak_bytes'] / gib:.2f} ({r[f'{regime}_error']:+.1%})")
            else:
                cells.append("")
        default_s = m.get("default_allocator_step_seconds")
        speed = (f"{m['step_seconds'] / default_s:.2f} / {m['tcmalloc_step_seconds'] / default_s:.2f}"
                 if default_s and "tcmalloc_step_seconds" in m else "")
        label = f"{name} (held out)" if r.get("held_out") else name
        print(f"| {label} | {r['predicted_bytes'] / gib:.2f} | {m['peak_bytes'] / gib:.2f} ({r['error']:+.1%}) | {cells[0]} | "
              f"{cells[1]} | {speed} | {m['tokens_per_s']:.0f} | {r['achieved_gflops']:.0f} |")
    for regime, values in errors.items():
        if values:
            print(f"{regime}: within 10% {sum(e <= 0.10 for e in values)}/{len(values)}, "
                  f"within 15% {sum(e <= 0.15 for e in values)}/{len(values)}")
    trained = {name: r for name, r in runs.items() if "leantune_train" in r}
    if not trained:
        return
    print(f"\n| config | `leantune train` peak GiB (highest of {TRAIN_REPEATS} runs) | its plan GiB (error) | "
          "planned shape (rows x tokens) | allocator |")
    print("|---|---|---|---|---|")
    for name, r in trained.items():
        job = r["leantune_train"]
        label = f"{name} (held out)" if r.get("held_out") else name
        print(f"| {label} | {job['peak_bytes'] / gib:.2f} | {job['planned_bytes'] / gib:.2f} ({job['error']:+.1%}) | "
              f"{job['planned_rows']} x {job['planned_row_len']} | {job['allocator']} |")
    values = [abs(r["leantune_train"]["error"]) for r in trained.values()]
    print(f"leantune train: within 10% {sum(e <= 0.10 for e in values)}/{len(values)}, "
          f"within 15% {sum(e <= 0.15 for e in values)}/{len(values)}")


if __name__ == "__main__":
    main()
