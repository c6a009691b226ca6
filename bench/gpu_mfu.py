"""What `leantune train` achieves on a GPU: model FLOPs utilisation and peak memory, against the planner.

The planner turns FLOPs into time with an MFU (model FLOPs utilisation) per method (plan/timing.py DEFAULT_MFU),
until now typical figures reported elsewhere. This measures leantune's own: each case is a plain `leantune train`
process on a model of a preset's exact shape (Llama 3.2 1B / 3B, Llama 3.1 8B) with random weights - throughput
and memory depend on shapes, not on weight values, so nothing needs downloading - trained on plain-text rows of
max_seq_len tokens (packed two to a micro-batch row, as a user's data would be). Per case it records:
  - tokens/s: the median of the run's own per-step figure (metrics.jsonl) after WARMUP_STEPS;
  - MFU = tokens/s x the planner's FLOPs per token / the card's dense bf16 peak from the catalog (and against the
    bf16 matrix-product rate measured here, 8192^3, which is what the card really reaches);
  - the planner's tokens/s at its current default MFU, and the error;
  - the peak of PyTorch's allocator (torch.cuda.max_memory_allocated, the run's peak_memory_mb) against the memory
    plan the run wrote before its first step (plan.json), less the CUDA context the allocator does not see.

    python bench/gpu_mfu.py                              # on a GPU machine; bench/results/gpu_mfu.json
    python bench/gpu_mfu.py --tiny --results /tmp/t.json # the same path on a CPU with 2-layer shapes (a smoke run)

The tokenizer is SmolLM2's (49k ids, all inside the presets' 128k vocabularies; the vocabulary's size sets the
output layer's cost, and that is the preset's). --tokenizer DIR names a folder holding it (created from the bundled
model when it is missing), for a machine without the bundled model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from common import load_results, smollm2_tokenizer, text_rows, work_dir, write_results  # noqa: E402

RESULTS = HERE / "results" / "gpu_mfu.json"
WORK = work_dir("gpu_mfu")
WARMUP_STEPS = 3  # the first steps pay CUDA's kernel selection and the allocator's first growth
STEPS = 12
TORCHTUNE_TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # its Llama 3.1 LoRA configs

# In the order they run: a deadline skips the last ones. Rank 8 on torchtune's targets, two rows of 2048 tokens a
# step: the settings of torchtune's published 8B figures (plan_vs_published.py), each case one change from them.
CASES = [
    dict(id="8b-lora-ckpt", model="llama-3.1-8b", method="lora", seq_len=2048, micro_batch=2, checkpointing=True,
         loss_chunk=512),
    dict(id="8b-lora-ckpt-offload", model="llama-3.1-8b", method="lora", seq_len=2048, micro_batch=2,
         checkpointing=True, loss_chunk=512, offload=True),
    dict(id="8b-lora", model="llama-3.1-8b", method="lora", seq_len=2048, micro_batch=2),
    dict(id="8b-dora-ckpt", model="llama-3.1-8b", method="dora", seq_len=2048, micro_batch=2, checkpointing=True,
         loss_chunk=512),
    dict(id="3b-full-ckpt", model="llama-3.2-3b", method="full", seq_len=2048, micro_batch=2, checkpointing=True,
         loss_chunk=512),
    dict(id="1b-lora", model="llama-3.2-1b", method="lora", seq_len=2048, micro_batch=2),
    dict(id="8b-lora-ckpt-b8", model="llama-3.1-8b", method="lora", seq_len=2048, micro_batch=8, checkpointing=True,
         loss_chunk=512),
    # narrower models: how far MFU falls with width (plan/timing.py's size term)
    dict(id="3b-lora", model="llama-3.2-3b", method="lora", seq_len=2048, micro_batch=2),
    dict(id="360m-lora", model="smollm2-360m", method="lora", seq_len=2048, micro_batch=2),
    dict(id="135m-lora", model="smollm2-135m", method="lora", seq_len=2048, micro_batch=2),
]
# --tiny: the same cases on 2-layer models of these dimensions (each preset's tied or untied output layer kept), short
# rows, few steps: a CPU smoke run of the whole path before a GPU is spent on it
TINY = dict(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64, vocab=49152, seq_len=128, steps=5)


def shape_for(case: dict, tiny: bool):
    from leantune.plan.presets import PRESETS

    shape = PRESETS[case["model"]]
    if tiny:
        shape = replace(shape, name=shape.name + "-tiny", **{k: TINY[k] for k in
                                                             ("layers", "hidden", "intermediate", "heads", "kv_heads",
                                                              "head_dim", "vocab")})
    return shape


def random_model_dir(shape, tokenizer: Path, root: Path) -> Path:
    """A Llama of `shape` with random bf16 weights, saved once per shape (built on the GPU when there is one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = root / shape.name
    if (path / "config.json").is_file():
        return path
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                         tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=8192,
                         rope_theta=500000.0, torch_dtype="bfloat16")
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(partial)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    partial.rename(path)  # a model cut short is never taken for a whole one
    print(f"  built {shape.name} ({shape.total_params / 1e9:.2f}B random weights) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return path


def matmul_tflops() -> float | None:
    """bf16 8192^3 matrix products on the GPU: the rate the card reaches on the work MFU counts."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * repeats / (time.perf_counter() - started) / 1e12


def run_case(case: dict, model_dir: Path, tiny: bool, timeout_s: float) -> dict:
    import yaml

    job = WORK / case["id"]
    job.mkdir(parents=True, exist_ok=True)
    seq_len, steps = (TINY["seq_len"], TINY["steps"]) if tiny else (case["seq_len"], STEPS)
    rows = text_rows(job, model_dir, {"seq_len": seq_len, "micro_batch": case["micro_batch"], "steps": steps})
    config = {
        "model": {"base": str(model_dir)},
        "method": {"name": case["method"], **({} if case["method"] == "full" else
                                              {"r": 8, "target_modules": TORCHTUNE_TARGETS})},
        "data": {"train": str(rows), "format": "text", "max_seq_len": seq_len, "eval_size": 0},
        "training": {"max_steps": steps, "micro_batch_size": case["micro_batch"],
                     "gradient_checkpointing": case.get("checkpointing", False),
                     "activation_offload": case.get("offload", False), "loss_chunk": case.get("loss_chunk", 0),
                     "checkpoint_every": 1000, "eval_every": 0},
        "eval": {"after_train": False},
        "output": {"runs_dir": str(job / "runs")},
    }
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    with open(job / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "leantune", "train", str(job / "config.yaml"), "--allow-duplicate"],
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"id": case["id"], "error": (job / "train.log").read_text()[-2000:], "wall_s": round(wall, 1)}
    [run] = sorted(p for p in (job / "runs").iterdir() if (p / "plan.json").is_file())[-1:]
    plan = json.loads((run / "plan.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return {"id": case["id"], "case": case, "wall_s": round(wall, 1), "plan": plan, "records": records,
            "config": config}


def analyse(case: dict, measured: dict, tiny: bool, matmul: float | None) -> dict:
    """The run's figures against the planner's for the same config."""
    from leantune.config import RunConfig
    from leantune.plan.memory import CUDA_CONTEXT_BYTES, GiB
    from leantune.plan.setup import setup_from_run_config
    from leantune.plan.timing import estimate_time, flops_per_token
    from leantune.runs.cost import gpu_for_device

    records = measured["records"]
    steady = records[WARMUP_STEPS:] or records
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
    shape = shape_for(case, tiny)
    setup = setup_from_run_config(RunConfig.model_validate(measured["config"]))
    fpt = flops_per_token(shape, setup)
    out = {"model": shape.name, "params": shape.total_params, "method": case["method"], "setup": setup.__dict__,
           "levers": setup.levers(), "steps": len(records), "wall_s": measured["wall_s"],
           "tokens_per_step": records[-1]["tokens"] / len(records), "tokens_per_s": round(tokens_per_s, 1),
           "tokens_per_s_steps": [round(r["tokens_per_s"], 1) for r in records],
           "flops_per_token": fpt, "achieved_tflops": round(tokens_per_s * fpt / 1e12, 2)}
    import torch

    gpu = gpu_for_device(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    if gpu is not None:
        out["gpu"] = gpu.name
        out["peak_tflops"] = gpu.bf16_tflops
        out["mfu"] = round(tokens_per_s * fpt / (gpu.bf16_tflops * 1e12), 4)
        predicted = estimate_time(shape, setup, gpu, tokens=1.0)
        out["planned_mfu"] = round(predicted.mfu, 4)  # the method's measured MFU at this model's width
        out["planned_tokens_per_s"] = round(predicted.tokens_per_s, 1)
        out["tokens_per_s_error"] = round(predicted.tokens_per_s / tokens_per_s - 1, 4)
    if matmul:
        out["mfu_of_measured_matmul"] = round(tokens_per_s * fpt / (matmul * 1e12), 4)
    planned = measured["plan"]["memory_gib"]
    peak_gib = records[-1]["peak_memory_mb"] / 1024
    out["peak_allocated_gib"] = round(peak_gib, 3)
    out["planned_gib"] = planned
    if gpu is not None:  # the allocator's counter does not see the CUDA context the plan includes
        compared = planned["total"] - CUDA_CONTEXT_BYTES / GiB
        out["planned_allocated_gib"] = round(compared, 3)
        out["memory_error"] = round(compared / peak_gib - 1, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer shapes, short rows: a smoke run on a CPU")
    parser.add_argument("--only", default="", help="comma-separated case ids")
    parser.add_argument("--tokenizer", type=Path, default=HERE.parent / ".offline" / "tokenizer")
    parser.add_argument("--models", type=Path, default=WORK / "models", help="where the random models are built")
    parser.add_argument("--deadline-s", type=float, default=480.0, help="start no case after this many seconds")
    parser.add_argument("--case-timeout-s", type=float, default=240.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch  # before provenance: the machine line names the GPU

    started = time.perf_counter()
    results = load_results(args.results)
    matmul = matmul_tflops()
    if matmul:
        results["matmul_bf16_tflops"] = round(matmul, 1)
        print(f"bf16 8192^3 matrix products: {matmul:.0f} TFLOP/s", flush=True)
    tokenizer = smollm2_tokenizer(args.tokenizer)
    wanted = [c for c in CASES if not args.only or c["id"] in args.only.split(",")]
    for case in wanted:
        if case["id"] in results.get("cases", {}):
            continue
        if time.perf_counter() - started > args.deadline_s:
            print(f"{case['id']}: skipped, past the {args.deadline_s:.0f} s deadline", flush=True)
            continue
        print(f"{case['id']}: {case}", flush=True)
        model_dir = random_model_dir(shape_for(case, args.tiny), tokenizer, args.models)
        try:
            measured = run_case(case, model_dir, args.tiny, args.case_timeout_s)
        except subprocess.TimeoutExpired:
            measured = {"id": case["id"], "error": f"timed out after {args.case_timeout_s:.0f} s"}
        row = measured if "error" in measured else analyse(case, measured, args.tiny, matmul)
        results.setdefault("cases", {})[case["id"]] = row
        write_results(args.results, results)
        print("  " + describe(row), flush=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def describe(row: dict) -> str:
    if "error" in row:
        return "FAILED: " + row["error"][-600:]
    text = f"{row['tokens_per_s']:,.0f} tok/s, {row['achieved_tflops']:.1f} TFLOP/s"
    if "mfu" in row:
        text += (f", MFU {row['mfu']:.1%} (plan {row['planned_mfu']:.0%}: {row['planned_tokens_per_s']:,.0f} tok/s, "
                 f"{row['tokens_per_s_error']:+.0%})")
    text += f"; peak {row['peak_allocated_gib']:.2f} GiB"
    if "memory_error" in row:
        text += f" (plan {row['planned_allocated_gib']:.2f}, {row['memory_error']:+.1%})"
    return text + f"; {row['wall_s']:.0f} s"


if __name__ == "__main__":
    main()
