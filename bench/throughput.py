"""Tokens per second of `leantune train` against Hugging Face PEFT + TRL `SFTTrainer`, side by side.

Same model (the bundled SmolLM2-135M), same training examples (each seen once), same LoRA (r=8, alpha=16,
dropout 0.05, every linear layer), same micro-batch, learning rate, schedule and seed. The schedule is cosine to
zero without warmup: the two libraries count warmup steps differently, and without warmup their
learning rates are the same at every step.

Protocol (`compare`): three tasks (sms-spam, trivia, tweets-sentiment); on each, `--repeats` rounds (default 5), each
round running leantune, TRL's CPU defaults and TRL in fp32 one after the other, every job in a fresh process (its
peak memory is its own), so drift in the machine's load hits every system alike. Per system: median and
interquartile range of tokens/s and peak memory; per round, leantune's ratio to each baseline of the same round,
and their median and quartiles. Tokens/s counts real tokens only (no padding) over the steps after the first two
(warm-up: allocator growth, first-call overheads): 8 timed steps. Both systems must have trained on the same
number of tokens (stored; a mismatch stops the benchmark). Tokens are the examples' tokens for both: leantune
runs each micro-batch as one row and computes the examples' common prefix once (data.share_prefix), and the
share of tokens it thereby did not compute is stored with its results (`shared_prefix_saving`). The eval loss of both is computed by one function
(`eval_loss` below, leantune's loss over the same 64 held-out examples) on the trained model each returns.

leantune runs as `leantune train` runs on a CPU: with TCMalloc preloaded when it is installed (training.allocator=auto
restarts the program with it; the worker here is started with it), which the results record per job. The TRL
jobs run with the C library's malloc (what a TRL user gets), limited to 2 arenas (MALLOC_ARENA_MAX=2, which
lowers its peak). The `levers` rows alternate leantune's defaults with one change at a time, including the
C library's malloc.

Baselines:
- trl-defaults: SFTConfig's defaults on this machine (use_cpu=True is required on a CPU; its defaults then
  turn on bf16 autocast and activation checkpointing);
- trl-fp32: the same with bf16 and activation checkpointing off: the fastest plain HF setup here, and the one in
  leantune's precision (float32 on a CPU).

    python bench/throughput.py --only compare        # the protocol above (~65 min on 2 cores)
    python bench/throughput.py --only levers         # leantune's levers against its defaults, alternated
    python bench/throughput.py --only padding        # or fusion, scaling
    python bench/throughput.py --only autocast --repeats 3   # training.autocast (own file: throughput_autocast.json)
    python bench/throughput.py --fresh               # forget finished jobs (kept per commit in bench/.work/throughput/<commit>/)

Needs TRL (`pip install -c constraints.txt '.[bench]'`). Writes bench/results/throughput.json and
bench/results/throughput_scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "throughput.json"
PLOT = HERE / "results" / "throughput_scaling.png"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from common import job_key, load_results, work_dir, write_results  # noqa: E402

WORK = work_dir("throughput")  # finished jobs of this commit, by job id + configuration

LR, RANK, ALPHA, DROPOUT, SEED, EVAL_SIZE = 5e-4, 8, 16, 0.05, 0, 64
TIMED_AFTER = 2  # steps of warm-up before the clock counts
COMPARE = {task: {"steps": TIMED_AFTER + 8, "mb": 8, "seq": 256} for task in ("sms-spam", "trivia", "tweets-sentiment")}
BASELINES = {"trl-defaults": {}, "trl-fp32": {"bf16": False, "gradient_checkpointing": False}}
LEVERS = {  # leantune with one thing changed from its defaults, on sms-spam, alternated with the defaults
    "defaults": {},
    "packed rows of max_seq_len under a mask": {"training.segment_attention": False},
    "one row without a shared prefix": {"data.share_prefix": False},
    "PEFT's LoRA layers": {"training.lora_autograd": "peft"},
    "LoRA dropout 0": {"method.dropout": 0.0},
    "C library malloc": {"training.allocator": "system"},
}
SCALING = [(128, 8), (256, 8), (512, 4), (1024, 2), (128, 1), (512, 1), (2048, 1)]  # (sequence length, micro-batch)


# ---------------------------------------------------------------------------------------------- workers
def cpu_bf16() -> bool:
    from leantune.models.loading import cpu_has_bf16

    return cpu_has_bf16()


def cpu_flags() -> list[str]:
    """The CPU features that decide the speed of these kernels (what oneDNN / MKL can use)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in wanted if f in flags]


def allocator_env(job: dict) -> dict:
    """The environment a job's process starts with: leantune's jobs as `leantune train` would run (TCMalloc when
    installed, unless the job asks for the C library's), TRL's with glibc's malloc."""
    from leantune.training.allocator import QUIET, find_allocator

    env = dict(os.environ, MALLOC_ARENA_MAX="2")
    found = find_allocator()
    if job["system"] == "leantune" and job.get("variant", {}).get("training.allocator") != "system" and found:
        env.update(QUIET, LD_PRELOAD=str(found[1]))
    return env


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def examples_for(job: dict):
    """(train examples, eval examples): the same for both systems."""
    from leantune.data import load_splits

    if job.get("synthetic"):
        return synthetic_examples(job["synthetic"], job["steps"] * job["mb"]), synthetic_examples(job["synthetic"], 8, offset=10_000)
    splits = load_splits(job["dataset"], None, EVAL_SIZE, SEED, job["steps"] * job["mb"])
    return splits.train, splits.eval


def synthetic_examples(tokens: int, n: int, offset: int = 0):
    """Chat rows of about `tokens` tokens (SmolLM2's tokenizer: ~1 token per short word), short answers."""
    import random

    from leantune.data.records import Example

    words = ["river", "stone", "market", "yellow", "seven", "quiet", "engine", "paper", "window", "garden"]
    out = []
    for i in range(n):
        rng = random.Random(offset + i)
        body = " ".join(rng.choice(words) for _ in range(max(1, tokens - 40)))
        out.append(Example(({"role": "user", "content": f"Summarise: {body}"}, {"role": "assistant", "content": rng.choice(words)})))
    return out


def eval_loss(model, tokenizer, examples, seq: int, batch: int) -> float:
    """leantune's eval loss, in batches of the run's micro-batch size (as leantune's own eval pass runs)."""
    import torch

    from leantune.data.batches import collate
    from leantune.data.tokenize import tokenize_examples
    from leantune.models.forward import summed_label_loss

    rows, _ = tokenize_examples(tokenizer, examples, seq, "all_assistant", "keep_end")
    model.eval()
    total = count = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            s, n = summed_label_loss(model, collate(rows[i : i + batch], tokenizer.pad_token_id))
            total, count = total + s.item(), count + n
    return total / count


def full_logits_loss(model, batch, chunk: int = 0):
    """The lever turned off: the model's whole output (every position x the vocabulary), as HF's loss does."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    extra = {k: batch[k].to(device) for k in ("attention_mask", "position_ids") if k in batch}
    logits = model(input_ids=batch["input_ids"].to(device), use_cache=False, **extra).logits.float()
    targets = batch["labels"][:, 1:].to(device)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def run_ours(job: dict) -> dict:
    from leantune.config import RunConfig
    from leantune.training.api import train
    from leantune.training.objectives import sft

    variant = dict(job.get("variant", {}))
    if variant.pop("full_logits", False):
        sft.summed_label_loss = full_logits_loss
    train_ex, eval_ex = examples_for(job)
    data = WORK / f"{job['id']}-train.jsonl"
    data.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in train_ex))
    evalf = WORK / f"{job['id']}-eval.jsonl"
    evalf.write_text("".join(json.dumps({"messages": list(e.messages)}) + "\n" for e in eval_ex))
    values = {
        "model": {"base": "smollm2-135m"},
        "data": {"train": str(data), "eval": str(evalf), "max_seq_len": job["seq"]},
        "method": {"name": "lora", "r": RANK, "alpha": ALPHA, "dropout": DROPOUT},
        "training": {"max_steps": job["steps"], "micro_batch_size": job["mb"], "lr": LR, "warmup_ratio": 0.0,
                     "min_lr_ratio": 0.0, "seed": SEED, "checkpoint_every": 10**6},
        "eval": {"after_train": False},
        "output": {"runs_dir": str(WORK / "runs"), "name": job["id"]},
    }
    for key, value in variant.items():
        section, field = key.split(".")
        values.setdefault(section, {})[field] = value
    started = time.perf_counter()
    result = train(RunConfig.model_validate(values), allow_duplicate=True)
    wall = time.perf_counter() - started
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    loss = eval_loss(result.model, result.tokenizer, eval_ex, job["seq"], job["mb"])  # the function TRL's is scored by
    info = json.loads((result.run_dir / "run.json").read_text())
    return {**measured(steps, [(s["step"], s["elapsed_s"], s["tokens"]) for s in steps], loss, wall),
            "shared_prefix_saving": info.get("shared_prefix_saving", 0.0)}


def measured(steps, timeline: list[tuple[int, float, int]], loss_eval: float, wall: float) -> dict:
    """tokens/s and seconds/step over the steps after the first TIMED_AFTER."""
    from leantune.training.allocator import running_allocator

    first, last = timeline[TIMED_AFTER - 1], timeline[-1]
    seconds, tokens = last[1] - first[1], last[2] - first[2]
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / (last[0] - first[0]), "first_steps_s": first[1],
            "tokens": timeline[-1][2], "timed_steps": last[0] - first[0], "eval_loss": loss_eval,
            "peak_rss_mib": peak_rss_mib(), "wall_s": wall, "allocator": running_allocator(),
            "final_train_loss": steps[-1]["loss"] if steps and "loss" in steps[-1] else None}


def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leantune.models.loading import hf_dir_for

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    train_ex, eval_ex = examples_for(job)
    rows = [{"prompt": list(e.prompt), "completion": [{"role": "assistant", "content": e.answer}]} for e in train_ex]
    path = hf_dir_for("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    timeline: list[tuple[int, float, int]] = []
    counted = {"tokens": 0, "train_s": 0.0}

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            counted["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            counted["train_s"] += time.perf_counter() - self.t0
            timeline.append((state.global_step, counted["train_s"], counted["tokens"]))

    args = SFTConfig(output_dir=str(WORK / f"trl-{job['id']}"), use_cpu=True, per_device_train_batch_size=job["mb"],
                     gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="cosine",
                     warmup_steps=0, max_steps=job["steps"], seed=SEED, max_length=job["seq"],
                     logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, **job.get("variant", {}))
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft,
                       processing_class=tokenizer, callbacks=[Clock()])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    loss = eval_loss(trainer.model, tokenizer, eval_ex, job["seq"], job["mb"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return measured([{"loss": losses[-1]}] if losses else [], timeline, loss, wall)


def worker(job: dict) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("LEANTUNE_HOME", str(Path.home() / ".cache" / "leantune"))
    result = run_trl(job) if job["system"].startswith("trl") else run_ours(job)
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------- driver
def run_job(job: dict, fresh: bool) -> dict | None:
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{job_key(job)}.json"
    if out.is_file() and not fresh:
        return json.loads(out.read_text())
    print(f"  {job['id']} ...", end="", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=allocator_env(job))
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(f" failed ({proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    result = {**job, **json.loads(line[7:])}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(f" {result['tokens_per_s']:.0f} tok/s, {result['peak_rss_mib']:.0f} MiB, eval loss {result['eval_loss']:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return result


def spread(values: list[float]) -> dict:
    """Median and interquartile range (quartiles by linear interpolation), with the values themselves."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "values": values}


def compare(repeats: int, fresh: bool) -> dict:
    table = {}
    systems = ["leantune", *BASELINES]
    for dataset, shape in COMPARE.items():
        print(f"[compare] {dataset}: {shape['steps']} steps x {shape['mb']} examples, max {shape['seq']} tokens, "
              f"{repeats} rounds")
        rounds: list[dict[str, dict]] = []
        for rep in range(repeats):  # alternate, so drift in the machine's load hits every system alike
            done = {}
            for system in systems:
                job = {"id": f"{dataset}-{system}-{rep}", "system": system, "dataset": dataset, **shape,
                       "variant": BASELINES.get(system, {})}
                if result := run_job(job, fresh):
                    done[system] = result
            rounds.append(done)
        tokens = {r[s]["tokens"] for r in rounds for s in r}
        if len(tokens) != 1:  # a ratio of tokens/s means nothing unless both trained on the same tokens
            raise SystemExit(f"{dataset}: the systems trained on different numbers of tokens: {sorted(tokens)}")
        summary: dict = {"tokens": tokens.pop(), "timed_steps": shape["steps"] - TIMED_AFTER, "rounds": len(rounds)}
        for system in systems:
            runs = [r[system] for r in rounds if system in r]
            if runs:
                summary[system] = {key: spread([r[key] for r in runs]) for key in ("tokens_per_s", "peak_rss_mib", "eval_loss")}
                summary[system]["allocator"] = sorted({r["allocator"] for r in runs})
                if system == "leantune":  # tokens it did not compute: shared prefixes, once per micro-batch
                    summary[system]["shared_prefix_saving"] = runs[0].get("shared_prefix_saving", 0.0)
        for b in BASELINES:
            paired = [r for r in rounds if "leantune" in r and b in r]
            if not paired:
                continue
            summary[f"vs {b}"] = {  # ratios within each round, then their spread
                "speed_ratio": spread([r["leantune"]["tokens_per_s"] / r[b]["tokens_per_s"] for r in paired]),
                "memory_ratio": spread([r["leantune"]["peak_rss_mib"] / r[b]["peak_rss_mib"] for r in paired]),
                "eval_loss_difference": spread([r["leantune"]["eval_loss"] - r[b]["eval_loss"] for r in paired])}
            v = summary[f"vs {b}"]
            print(f"  leantune vs {b}: {v['speed_ratio']['median']:.2f}x tokens/s (IQR {v['speed_ratio']['q1']:.2f}-"
                  f"{v['speed_ratio']['q3']:.2f}), {v['memory_ratio']['median']:.2f}x peak memory, eval loss "
                  f"{summary['leantune']['eval_loss']['median']:.4f} vs {summary[b]['eval_loss']['median']:.4f}")
        table[dataset] = summary
    return table


def levers(repeats: int, fresh: bool) -> dict:
    print(f"[levers] leantune on sms-spam, one change from its defaults at a time, {repeats} rounds alternated")
    shape = COMPARE["sms-spam"]
    rounds: list[dict[str, dict]] = []
    for rep in range(repeats):
        done = {}
        for name, variant in LEVERS.items():
            job = {"id": "lever-" + name.replace(" ", "_").replace(".", "").replace("'", "") + f"-{rep}",
                   "system": "leantune", "dataset": "sms-spam", **shape, "variant": variant}
            if result := run_job(job, fresh):
                done[name] = result
        rounds.append(done)
    out = {}
    for name in LEVERS:
        paired = [r for r in rounds if name in r and "defaults" in r]
        if not paired:
            continue
        out[name] = {"tokens_per_s": spread([r[name]["tokens_per_s"] for r in paired]),
                     "peak_rss_mib": spread([r[name]["peak_rss_mib"] for r in paired]),
                     "eval_loss": spread([r[name]["eval_loss"] for r in paired]),
                     "allocator": sorted({r[name]["allocator"] for r in paired}),
                     "speed_vs_defaults": spread([r[name]["tokens_per_s"] / r["defaults"]["tokens_per_s"] for r in paired]),
                     "memory_vs_defaults": spread([r[name]["peak_rss_mib"] / r["defaults"]["peak_rss_mib"] for r in paired])}
        o = out[name]
        print(f"  {name:22s} {o['tokens_per_s']['median']:6.0f} tok/s ({o['speed_vs_defaults']['median']:.2f}x, IQR "
              f"{o['speed_vs_defaults']['q1']:.2f}-{o['speed_vs_defaults']['q3']:.2f})  {o['peak_rss_mib']['median']:6.0f} MiB "
              f"({o['memory_vs_defaults']['median']:.2f}x)  eval loss {o['eval_loss']['median']:.4f}")
    return out


AUTOCAST_RESULTS = HERE / "results" / "throughput_autocast.json"
AUTOCAST_SYSTEMS = {  # each precision against its like: fp32 with fp32, bf16 autocast with bf16 autocast
    "leantune fp32": ("leantune", {"training.autocast": "off"}),
    "leantune bf16 autocast": ("leantune", {"training.autocast": "bf16"}),
    "trl-defaults (bf16 autocast)": ("trl-defaults", BASELINES["trl-defaults"]),
}


def autocast_lever(repeats: int, fresh: bool) -> dict:
    """training.autocast on this CPU: leantune with float32 compute, leantune under bf16 autocast (float32 weights and
    updates), and TRL's CPU defaults (bf16 autocast too), alternated `repeats` times on sms-spam; medians and
    quartiles. Its own results file, so throughput.json's older sections are not mixed with this commit's."""
    shape = COMPARE["sms-spam"]
    print(f"[autocast] sms-spam: {shape['steps']} steps x {shape['mb']} examples, max {shape['seq']} tokens, {repeats} rounds")
    runs: dict[str, list[dict]] = {name: [] for name in AUTOCAST_SYSTEMS}
    for rep in range(repeats):
        for name, (system, variant) in AUTOCAST_SYSTEMS.items():
            job = {"id": f"autocast-{name.split()[0]}-{'bf16' if 'bf16' in name else 'fp32'}-{rep}", "system": system,
                   "dataset": "sms-spam", **shape, "variant": variant}
            result = run_job(job, fresh)
            if result:
                runs[name].append(result)

    out = {name: {"tokens_per_s": spread([r["tokens_per_s"] for r in rs]), "peak_rss_mib": spread([r["peak_rss_mib"] for r in rs]),
                  "eval_loss": spread([r["eval_loss"] for r in rs]), "tokens": sorted({r["tokens"] for r in rs})}
           for name, rs in runs.items() if rs}
    fp32, bf16, trl = (out.get(n) for n in AUTOCAST_SYSTEMS)
    if fp32 and bf16:
        out["bf16 autocast vs fp32"] = {"speed_ratio": bf16["tokens_per_s"]["median"] / fp32["tokens_per_s"]["median"],
                                        "memory_ratio": bf16["peak_rss_mib"]["median"] / fp32["peak_rss_mib"]["median"]}
    if bf16 and trl:
        out["leantune vs trl-defaults, both bf16 autocast"] = {
            "speed_ratio": bf16["tokens_per_s"]["median"] / trl["tokens_per_s"]["median"],
            "memory_ratio": bf16["peak_rss_mib"]["median"] / trl["peak_rss_mib"]["median"]}
    for key in ("bf16 autocast vs fp32", "leantune vs trl-defaults, both bf16 autocast"):
        if key in out:
            print(f"  {key}: {out[key]['speed_ratio']:.2f}x tokens/s, {out[key]['memory_ratio']:.2f}x peak memory")
    for name in AUTOCAST_SYSTEMS:
        if name in out:
            print(f"  {name:30s} {out[name]['tokens_per_s']['median']:7.0f} tok/s, eval loss {out[name]['eval_loss']['median']:.4f}, "
                  f"tokens {out[name]['tokens']}")
    return out


def scaling(fresh: bool) -> list[dict]:
    print("[scaling] synthetic rows of a fixed length, 4 steps each")
    rows = []
    for seq, mb in SCALING:
        for system in ("leantune", "trl-fp32"):
            job = {"id": f"scale-{seq}x{mb}-{system}", "system": system, "dataset": "synthetic", "synthetic": seq,
                   "steps": 4, "mb": mb, "seq": seq + 16, "variant": BASELINES.get(system, {})}
            result = run_job(job, fresh)
            if result:
                rows.append({"seq": seq, "mb": mb, "system": system, "tokens_per_s": result["tokens_per_s"],
                             "peak_rss_mib": result["peak_rss_mib"]})
    plot_scaling(rows)
    return rows


def padding(fresh: bool) -> dict:
    """Share of paid token slots that are padding, per dataset: random micro-batches of 8 padded to the longest
    (what the baseline pays), the same micro-batches length-grouped (sorted within windows of 64 examples), and
    packed (leantune's default). Computed from the tokenised lengths; no training."""
    import random

    from transformers import AutoTokenizer

    from leantune.data import load_examples
    from leantune.data.batches import padding_fraction
    from leantune.data.tokenize import tokenize_examples
    from leantune.models.loading import hf_dir_for

    tokenizer = AutoTokenizer.from_pretrained(hf_dir_for("smollm2-135m"))
    out = {}
    for dataset in ("sms-spam", "trivia", "tweets-sentiment"):
        rows, _ = tokenize_examples(tokenizer, load_examples(dataset)[:2000], 256, "all_assistant", "keep_end")
        lengths = [len(r.input_ids) for r in rows]
        rng = random.Random(0)
        order = list(range(len(lengths)))
        rng.shuffle(order)
        grouped = []
        for start in range(0, len(order), 64):
            grouped += sorted((lengths[i] for i in order[start : start + 64]), reverse=True)
        paid = real = 0
        for start in range(0, len(grouped), 8):
            batch = grouped[start : start + 8]
            paid, real = paid + max(batch) * len(batch), real + sum(batch)
        out[dataset] = {"examples": len(lengths), "mean_tokens": sum(lengths) / len(lengths),
                        "padded": padding_fraction(lengths, 8), "length_grouped": 1 - real / paid,
                        "packed": padding_fraction(lengths, 8, capacity=256)}
        r = out[dataset]
        print(f"  {dataset:17s} mean {r['mean_tokens']:.0f} tokens: padding {r['padded']:.1%} random, "
              f"{r['length_grouped']:.1%} length-grouped, {r['packed']:.1%} packed")
    return out


def fusion(fresh: bool) -> dict:
    """Fused LoRA (one matmul with W + s*B@A) against the usual three (x@W, x@A, then @B), forward + backward of
    one SmolLM2 MLP projection (576 -> 1536, r=8) at the token counts of a micro-batch. Gradients flow to A and B
    only, as in LoRA training."""
    import torch

    torch.manual_seed(0)
    d_in, d_out, r, scale = 576, 1536, 8, 2.0
    weight = torch.randn(d_out, d_in) / d_in**0.5
    a = (torch.randn(r, d_in) / d_in**0.5).requires_grad_()
    b = (torch.randn(d_out, r) * 0.01).requires_grad_()

    def separate(x):
        return x @ weight.T + scale * ((x @ a.T) @ b.T)

    def fused(x):
        return x @ (weight + scale * (b @ a)).T

    out = {}
    for tokens in (64, 512, 2048):
        x = torch.randn(tokens, d_in)
        times = {}
        for name, fn in (("separate", separate), ("fused", fused)):
            for _ in range(3):
                fn(x).sum().backward()
            start = time.perf_counter()
            for _ in range(20):
                fn(x).sum().backward()
            times[name] = (time.perf_counter() - start) / 20
        out[tokens] = {"separate_ms": times["separate"] * 1e3, "fused_ms": times["fused"] * 1e3,
                       "fused_speedup": times["separate"] / times["fused"]}
        print(f"  {tokens:5d} tokens: separate {times['separate'] * 1e3:.2f} ms, fused {times['fused'] * 1e3:.2f} ms "
              f"({out[tokens]['fused_speedup']:.2f}x)")
    return out


def plot_scaling(rows: list[dict]) -> None:
    """tokens/s and peak memory against sequence length, one line per system and micro-batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"leantune": "tab:blue", "trl-fp32": "tab:orange"}
    for system in colours:
        for mb, marker in zip(sorted({r["mb"] for r in rows}), "os^D"):
            pts = sorted((r["seq"], r["tokens_per_s"], r["peak_rss_mib"]) for r in rows if r["system"] == system and r["mb"] == mb)
            if not pts:
                continue
            style = dict(color=colours[system], marker=marker, linestyle="-" if system == "leantune" else "--",
                         label=f"{system}, micro-batch {mb}")
            a.plot([p[0] for p in pts], [p[1] for p in pts], **style)
            b.plot([p[0] for p in pts], [p[2] / 1024 for p in pts], **style)
    for ax, ylabel in ((a, "tokens/s (real tokens)"), (b, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M LoRA r=8 on CPU ({os.cpu_count()} cores), leantune vs PEFT + TRL SFTTrainer (fp32), "
                 f"{time.strftime('%Y-%m-%d')}", fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(exist_ok=True)
    fig.savefig(PLOT, dpi=100)
    print(f"wrote {PLOT}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--only", choices=("compare", "levers", "scaling", "padding", "fusion", "autocast"))
    parser.add_argument("--repeats", type=int, help="rounds of alternation (default: compare 5, levers and autocast 3)")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    rounds = args.repeats or 3
    if args.only == "autocast":  # its own file: see autocast_lever
        previous = {} if args.fresh else load_results(AUTOCAST_RESULTS)
        write_results(AUTOCAST_RESULTS, {**previous, "machine": f"{platform.processor() or platform.machine()}, "
                                         f"{os.cpu_count()} cores, cpu bf16: {cpu_bf16()}", "model": "smollm2-135m",
                                         "lora": {"r": RANK, "alpha": ALPHA, "dropout": DROPOUT},
                                         "autocast": autocast_lever(rounds, args.fresh)})
        return
    previous = {} if args.fresh else load_results(RESULTS)  # never mixed with another commit's results
    results = {**previous, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "cpu_flags": cpu_flags(), "date": time.strftime("%Y-%m-%d"), "model": "smollm2-135m",
               "lora": {"r": RANK, "alpha": ALPHA, "dropout": DROPOUT}}
    if args.only in (None, "compare"):
        results["compare"] = compare(args.repeats or 5, args.fresh)
    if args.only in (None, "levers"):
        results["levers"] = levers(rounds, args.fresh)
    if args.only in (None, "padding"):
        print("[padding] share of paid token slots that are padding, micro-batches of 8, max 256 tokens")
        results["padding"] = padding(args.fresh)
    if args.only in (None, "fusion"):
        print("[fusion] one LoRA projection, forward + backward")
        results["fusion"] = fusion(args.fresh)
    if args.only in (None, "scaling"):
        results["scaling"] = scaling(args.fresh)
    write_results(RESULTS, results)


if __name__ == "__main__":
    main()
