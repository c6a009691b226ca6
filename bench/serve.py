"""Serving many adapters on one base: `leantune serve` against the naive way and against merged copies.

Setup: SmolLM2-135M and one LoRA adapter trained on sms-spam (r=8, every linear layer: the demo's shape), copied
into 16 adapters whose B matrices are perturbed by seeded noise (different content, the same size and cost: speed
and memory do not depend on what an adapter learned). Requests are chat prompts answered greedily with
max_tokens=32; tokens/s counts generated tokens (usage.completion_tokens).

For clients C in (1, 4, 16) and distinct adapters N in (1, 4, 16), request i goes to adapter i mod N:
- ours: a real `leantune serve` on loopback, C threads of the official openai client, 3 requests per client;
- naive: the same requests one at a time in-process (no HTTP), `set_adapter` then transformers' `generate`,
  as C clients arriving together would be served by a one-at-a-time server (latency includes the wait);
- merged (memory only at N=16): N full merged models in memory; resident memory measured for 1 and 4 copies and
  the per-copy cost extrapolated (16 copies of this model would take ~9 GB of this shared machine).
ours and naive alternate within each round, `--rounds` rounds; medians and the per-round ratio are reported.
Memory: resident set of one process holding the base, then after loading N adapters (ours), against N merged
copies.

    python bench/serve.py                # ~15 min on 2 cores
    python bench/serve.py --rounds 1 --clients 16 --adapters 4

Writes bench/results/serve.json and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_results, work_dir, write_results

RESULTS = HERE / "results" / "serve.json"
MEMORY_RESULTS = HERE / "results" / "serve_memory.json"
WORK = work_dir("serve")
MAX_TOKENS = 32
PROMPTS = ["Write a short note to a friend about the weekend.", "Explain what a spam message is.",
           "Give three tips for writing a clear email.", "Describe the weather in spring.",
           "What should I pack for a short trip?", "Summarise why sleep matters."]
TRAIN = ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=16", "data.max_seq_len=128",
         "training.max_steps=30", "training.micro_batch_size=8", "training.lr=5e-4", "training.checkpoint_every=100",
         "output.name=serve-bench", "cost.usd_per_hour=0"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def adapters(n_max: int) -> list[Path]:
    """n_max run directories: one trained run, then copies with perturbed B matrices."""
    import torch
    from safetensors.torch import load_file, save_file

    runs = WORK / "runs"
    made = sorted(p for p in runs.glob("adapter-*") if (p / "config.yaml").is_file())
    if len(made) >= n_max:
        return made[:n_max]
    trained = next((p for p in runs.glob("*-serve-bench") if (p / "adapter" / "adapter_config.json").is_file()), None)
    if trained is None:
        from leantune import train

        log("training the adapter the copies are made from")
        trained = Path(train(None, TRAIN + [f"output.runs_dir={runs}"]).run_dir)
    weights = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    out = []
    for i in range(n_max):
        target = runs / f"adapter-{i:02d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(trained, target, ignore=shutil.ignore_patterns("checkpoints", "exports"))
        g = torch.Generator().manual_seed(i)
        changed = {k: (v + 0.01 * v.abs().mean() * torch.randn(v.shape, generator=g) if "lora_B" in k and i else v)
                   for k, v in weights.items()}
        save_file(changed, str(target / "adapter" / "adapter_model.safetensors"))
        out.append(target)
    return out


def requests(clients: int, n_adapters: int) -> list[tuple[int, str]]:
    return [(i % n_adapters, PROMPTS[i % len(PROMPTS)]) for i in range(clients * 3)]


def run_ours(url: str, jobs, clients: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(job):
        adapter, prompt = job
        started = time.perf_counter()
        reply = client.chat.completions.create(model=f"a{adapter}", temperature=0, max_tokens=MAX_TOKENS,
                                               messages=[{"role": "user", "content": prompt}])
        return time.perf_counter() - started, reply.usage.completion_tokens

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(ask, jobs))
    return summary(done, time.perf_counter() - started)


def run_naive(model, tokenizer, jobs, clients: int) -> dict:
    """One request at a time: set_adapter, generate. Clients arrive `clients` at a time; each waits its turn."""
    import torch

    from leantune.data.tokenize import end_of_turn_ids

    eot = sorted(end_of_turn_ids(tokenizer))
    done, started = [], time.perf_counter()
    for start in range(0, len(jobs), clients):
        arrived = time.perf_counter()
        for adapter, prompt in jobs[start:start + clients]:
            model.set_adapter(f"a{adapter}")
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eot,
                                     pad_token_id=eot[0])
            tokens = out.shape[1] - ids["input_ids"].shape[1]
            done.append((time.perf_counter() - arrived, tokens))
    return summary(done, time.perf_counter() - started)


def summary(done, wall: float) -> dict:
    latencies = sorted(d[0] for d in done)
    tokens = sum(d[1] for d in done)
    return {"tokens_per_s": round(tokens / wall, 2), "tokens": tokens, "requests": len(done),
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)}


def memory_worker(kind: str, count: int) -> dict:
    """Resident memory of a fresh process holding the served base (+ `count` adapters loaded the way the server
    loads them), or `count` merged copies. A forward pass first: safetensors maps weights lazily, and pages
    never touched are not resident yet. Also the exact bytes of the tensors."""
    import torch

    torch.set_num_threads(2)
    from leantune.models.loading import load_base

    paths = adapters(16)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    before = rss_bytes()
    if kind == "adapters":
        from leantune.serve.adapters import AdapterNames
        from leantune.serve.engine import Engine

        engine = Engine("smollm2-135m", "auto", "cpu", max_loaded=16, say=lambda _: None)
        with torch.no_grad():
            engine.base(ids)
        one_base = rss_bytes() - before
        base_bytes = sum(p.numel() * p.element_size() for p in engine.base.parameters())
        names = AdapterNames("smollm2-135m", "smollm2-135m", str(WORK / "runs"))
        for path in paths[:count]:
            engine.ensure_loaded(names.resolve_reference(str(path)))
        with torch.no_grad():
            engine.peft(ids)
        adapter_bytes = sum(p.numel() * p.element_size() for n, p in engine.peft.named_parameters() if "lora_" in n)
        return {"base_rss": one_base, "total_rss": rss_bytes() - before, "base_tensor_bytes": base_bytes,
                "adapter_tensor_bytes": adapter_bytes}
    from peft import PeftModel

    copies = []
    for i in range(count):
        base = load_base("smollm2-135m", "auto", "cpu").model
        copies.append(PeftModel.from_pretrained(base, paths[i] / "adapter").merge_and_unload())
        with torch.no_grad():
            copies[-1](ids)
    return {"total_rss": rss_bytes() - before}


def measure_memory() -> dict:
    out = {}
    for kind, count in (("adapters", 1), ("adapters", 4), ("adapters", 16), ("merged", 1), ("merged", 4)):
        log(f"memory: {kind} x{count}")
        proc = subprocess.run([sys.executable, __file__, "--memory", kind, str(count)], capture_output=True, text=True,
                              check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(proc.stderr[-3000:])
        out[f"{kind}-{count}"] = json.loads(lines[-1][7:])
    ours = out["adapters-16"]
    per_copy = (out["merged-4"]["total_rss"] - out["merged-1"]["total_rss"]) / 3
    out["summary"] = {
        "one_base_rss_mb": round(ours["base_rss"] / 1e6, 1),
        "ours_16_adapters_rss_mb": round(ours["total_rss"] / 1e6, 1),
        "ours_16_vs_one_base_rss": round(ours["total_rss"] / ours["base_rss"], 3),
        "base_tensor_mb": round(ours["base_tensor_bytes"] / 1e6, 1),
        "adapters_16_tensor_mb": round(ours["adapter_tensor_bytes"] / 1e6, 1),
        "merged_per_copy_rss_mb": round(per_copy / 1e6, 1),
        "merged_16_copies_rss_mb_extrapolated": round((out["merged-1"]["total_rss"] + 15 * per_copy) / 1e6, 1),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", nargs=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--adapters", default="1,4,16")
    parser.add_argument("--only", choices=("grid", "memory"), help="one part (memory goes to serve_memory.json)")
    args = parser.parse_args()
    if args.memory:
        print("RESULT " + json.dumps(memory_worker(args.memory[0], int(args.memory[1]))), flush=True)
        return
    if args.only == "memory":
        adapters(16)
        write_results(MEMORY_RESULTS, {"memory": measure_memory()})
        print(json.dumps(load_results(MEMORY_RESULTS)["memory"]["summary"], indent=2))
        return
    import torch

    torch.set_num_threads(2)
    from peft import PeftModel

    from leantune.serve.api import build, running

    results = load_results(RESULTS)
    paths = adapters(16)
    client_counts = [int(c) for c in args.clients.split(",")]
    adapter_counts = [int(n) for n in args.adapters.split(",")]
    n_max = max(adapter_counts)
    server = build([f"a{i}={p}" for i, p in enumerate(paths[:n_max])], runs_dir=str(WORK / "runs"), max_loaded=n_max,
                   max_batch=16, max_queue=256, say=log)
    naive = PeftModel.from_pretrained(_fresh_base(), paths[0] / "adapter", adapter_name="a0")
    for i in range(1, n_max):
        naive.load_adapter(paths[i] / "adapter", adapter_name=f"a{i}")
    naive.eval()
    grid = results.get("grid", {})
    with running(server) as url:
        run_ours(url, requests(1, 1), 1)  # warm-up: first-call costs are nobody's throughput
        run_naive(naive, server.engine.tokenizer, requests(1, 1), 1)
        for clients in client_counts:
            for n in adapter_counts:
                key = f"c{clients}-a{n}"
                jobs = requests(clients, n)
                rounds = []
                for r in range(args.rounds):
                    order = ("ours", "naive") if r % 2 == 0 else ("naive", "ours")
                    got = {}
                    for which in order:
                        log(f"{key} round {r + 1}/{args.rounds}: {which}")
                        got[which] = (run_ours(url, jobs, clients) if which == "ours" else
                                      run_naive(naive, server.engine.tokenizer, jobs, clients))
                    got["ratio"] = round(got["ours"]["tokens_per_s"] / got["naive"]["tokens_per_s"], 3)
                    rounds.append(got)
                grid[key] = {"clients": clients, "adapters": n, "rounds": rounds,
                             "median_ratio": statistics.median(r["ratio"] for r in rounds),
                             "ours_tokens_per_s": statistics.median(r["ours"]["tokens_per_s"] for r in rounds),
                             "naive_tokens_per_s": statistics.median(r["naive"]["tokens_per_s"] for r in rounds),
                             "ours_p50_s": statistics.median(r["ours"]["p50_s"] for r in rounds),
                             "ours_p95_s": statistics.median(r["ours"]["p95_s"] for r in rounds),
                             "naive_p50_s": statistics.median(r["naive"]["p50_s"] for r in rounds),
                             "naive_p95_s": statistics.median(r["naive"]["p95_s"] for r in rounds)}
                results["grid"] = grid
                write_results(RESULTS, results)
    if args.only != "grid":
        write_results(MEMORY_RESULTS, {"memory": measure_memory()})
    results["settings"] = {"max_tokens": MAX_TOKENS, "requests_per_client": 3, "rounds": args.rounds,
                           "adapter": "LoRA r=8 on every linear layer (4.9M parameters, fp32)"}
    write_results(RESULTS, results)
    print_table(results)


def _fresh_base():
    from leantune.models.loading import load_base

    return load_base("smollm2-135m", "auto", "cpu").model


def print_table(results: dict) -> None:
    print("| clients | adapters | ours tok/s | naive tok/s | ratio | ours p50 / p95 s | naive p50 / p95 s |")
    print("|---|---|---|---|---|---|---|")
    for row in results.get("grid", {}).values():
        print(f"| {row['clients']} | {row['adapters']} | {row['ours_tokens_per_s']:.1f} | {row['naive_tokens_per_s']:.1f} | "
              f"{row['median_ratio']:.2f}x | {row['ours_p50_s']:.2f} / {row['ours_p95_s']:.2f} | "
              f"{row['naive_p50_s']:.2f} / {row['naive_p95_s']:.2f} |")
    memory = load_results(MEMORY_RESULTS).get("memory", {}).get("summary")
    if memory:
        print("\nmemory: " + json.dumps(memory))


if __name__ == "__main__":
    main()
