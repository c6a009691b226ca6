"""The planner held against published peak-memory figures whose settings are known.

Each case names its source, the published figure and what measured it, and the settings it ran with, written as
the planner's Setup. The planner's prediction is compared with the figure on the same footing:
  - "allocator": PyTorch's own counters (torch.cuda.max_memory_allocated / torchtune's peak_memory_active); they do
    not see the CUDA context (the planner's CUDA_CONTEXT_BYTES), so it is left out of the prediction compared;
  - "card": the whole card (nvidia-smi, or "fits / runs out of memory on a card of this size"): the prediction
    with the context;
  - "claim": a sentence in a seed document, with the arithmetic that checks it.
Where a figure leaves out something the planner counts (bitsandbytes' paged optimizer states live in CUDA managed
memory, outside PyTorch's counters), `excludes` names the term and it is left out of the prediction compared.
Nothing here is measured on this machine: the inputs are the published numbers, so the script is pure arithmetic
and runs in a second.

    python bench/plan_vs_published.py      # writes bench/results/plan_vs_published.json, prints the table
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import PROVENANCE, REPO, provenance  # noqa: E402

from leantune.plan.catalog import load_catalog  # noqa: E402
from leantune.plan.memory import CUDA_CONTEXT_BYTES, GiB, estimate_peak_memory  # noqa: E402
from leantune.plan.presets import PRESETS  # noqa: E402
from leantune.plan.setup import Setup  # noqa: E402
from leantune.plan.shapes import ModelShape  # noqa: E402
from leantune.plan.timing import estimate_time  # noqa: E402

GB = 1e9
# LLaMA-65B (Touvron et al. 2023, table 2): the QLoRA paper's largest model
LLAMA_65B = ModelShape("llama-65b", hidden=8192, layers=80, heads=64, kv_heads=64, head_dim=128, intermediate=22016,
                       vocab=32000, tied_embeddings=False)
TORCHTUNE = "pytorch/torchtune README.md, 'Memory and training speed' (batch 2, packed to 2048, compile)"
TORCHTUNE_LADDER = ("pytorch/torchtune README.md, 'Optimization flags' (Llama 3.2 3B, full_finetune_single_device, "
                    "batch 2, sequence 4096 packed, bf16, A100; each row adds a technique)")
LITGPT = ("Lightning-AI/litgpt config_hub/finetune/README.md (bf16-true, Alpaca2k, max 512 tokens, 1 x A10G; "
          "peak = torch.cuda.max_memory_allocated / 1e9)")
UNSLOTH = ("unslothai/unsloth README, context-length table (Llama 3.1 8B, 4-bit QLoRA on all linear layers, rank 32, "
           "batch 1, Hugging Face + FA2 column: the longest sequence that fits)")
TT_LORA = dict(lora_rank=8, lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
               master_weights=False, seq_len=2048, micro_batch=2, grad_checkpointing=True, activation_offload=True,
               loss_chunk=512)
TT_3B = dict(method="full", master_weights=False, seq_len=4096, micro_batch=2, loss_chunk=0)
TT_3B_LORA = dict(lora_rank=64, lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                  master_weights=False, seq_len=4096, micro_batch=2, grad_checkpointing=True, activation_offload=True,
                  loss_chunk=1024)
LIT_LORA = dict(method="lora", lora_rank=32, lora_targets=("q_proj", "v_proj"), lora_dropout=0.05, master_weights=False,
                seq_len=512)
LITGPT_QLORA_NOTE = ("under: 4-bit weights plus the 16-bit embeddings are 5.3 GiB; the published peak, 2.3 GB below "
                     "the LoRA run's, is a peak over the whole process, and LitGPT's loader may pass 16-bit weights "
                     "through the GPU before quantising them (not verified here)")
UNSLOTH_NOTE = ("under: the card is full at that length (fragmentation included), and Hugging Face's causal-LM loss "
                "upcasts the logits, copies them shifted, and the returned output holds them through backward: "
                "~20 bytes a logit against the 12 of leantune's own loss path that the planner counts (8.3 GiB of "
                "logits at 5,789 tokens); not measured on a GPU here")

CASES = [
    # torchtune, Llama 3.1 8B on one RTX 4090 (issue 20's two cases; offloading and chunked loss as the issue reads it)
    dict(id="torchtune-8b-lora-4090", source=TORCHTUNE, model="llama-3.1-8b", published=16.2, unit="GiB",
         counter="allocator", setup=dict(method="lora", **TT_LORA)),
    dict(id="torchtune-8b-qlora-4090", source=TORCHTUNE, model="llama-3.1-8b", published=7.4, unit="GiB",
         counter="allocator", setup=dict(method="qlora", **TT_LORA)),
    dict(id="torchtune-8b-full-4090", source=TORCHTUNE + "; 8B_full_single_device: PagedAdamW8bit, optimizer_in_bwd",
         model="llama-3.1-8b", published=18.9, unit="GiB", counter="allocator", excludes=["optimizer"],
         setup=dict(method="full", master_weights=False, optimizer="adamw8bit", optimizer_in_backward=True,
                    grad_checkpointing=True, activation_offload=True, loss_chunk=512, seq_len=2048, micro_batch=2),
         note="the paged 8-bit Adam moments (2 bytes x 8.03B = 15 GiB) sit in CUDA managed memory, which PyTorch's "
              "counters do not see: the published 18.9 GiB cannot include them, so they are left out here"),
    # torchtune's ladder on Llama 3.2 3B (peak memory active)
    dict(id="torchtune-3b-full-packed", source=TORCHTUNE_LADDER + ": + packed dataset", model="llama-3.2-3b",
         published=60.0, unit="GiB", counter="allocator", setup=dict(TT_3B)),
    dict(id="torchtune-3b-full-compile", source=TORCHTUNE_LADDER + ": + compile", model="llama-3.2-3b",
         published=51.0, unit="GiB", counter="allocator", setup=dict(TT_3B),
         note="torch.compile fuses element-wise ops and saves fewer activations; the planner does not model compile"),
    dict(id="torchtune-3b-full-chunked", source=TORCHTUNE_LADDER + ": + chunked cross-entropy (8 chunks)",
         model="llama-3.2-3b", published=42.9, unit="GiB", counter="allocator", setup=dict(TT_3B, loss_chunk=1024),
         note="compiled (not modelled)"),
    dict(id="torchtune-3b-full-ckpt", source=TORCHTUNE_LADDER + ": + activation checkpointing", model="llama-3.2-3b",
         published=24.9, unit="GiB", counter="allocator",
         setup=dict(TT_3B, loss_chunk=1024, grad_checkpointing=True)),
    dict(id="torchtune-3b-full-opt-in-bwd", source=TORCHTUNE_LADDER + ": + optimizer step fused into backward",
         model="llama-3.2-3b", published=23.1, unit="GiB", counter="allocator",
         setup=dict(TT_3B, loss_chunk=1024, grad_checkpointing=True, optimizer_in_backward=True)),
    dict(id="torchtune-3b-full-offload", source=TORCHTUNE_LADDER + ": + activation offloading", model="llama-3.2-3b",
         published=21.8, unit="GiB", counter="allocator",
         setup=dict(TT_3B, loss_chunk=1024, grad_checkpointing=True, optimizer_in_backward=True,
                    activation_offload=True)),
    dict(id="torchtune-3b-full-8bit-adam", source=TORCHTUNE_LADDER + ": + 8-bit AdamW", model="llama-3.2-3b",
         published=17.6, unit="GiB", counter="allocator",
         setup=dict(TT_3B, loss_chunk=1024, grad_checkpointing=True, optimizer_in_backward=True,
                    activation_offload=True, optimizer="adamw8bit")),
    dict(id="torchtune-3b-lora", source=TORCHTUNE_LADDER + ": LoRA (3B_lora_single_device: rank 64)",
         model="llama-3.2-3b", published=8.5, unit="GiB", counter="allocator", setup=dict(method="lora", **TT_3B_LORA)),
    dict(id="torchtune-3b-qlora", source=TORCHTUNE_LADDER + ": QLoRA (rank 64)", model="llama-3.2-3b",
         published=4.6, unit="GiB", counter="allocator", setup=dict(method="qlora", **TT_3B_LORA)),
    # LitGPT's config hub, one A10G, no checkpointing, pure bf16 (LoRA weights too)
    dict(id="litgpt-llama3-8b-lora-a10g", source=LITGPT + "; llama-3-8b/lora.yaml: r 32 on q, v; micro-batch 1",
         model="llama-3.1-8b", published=19.73, unit="GB", counter="allocator", setup=dict(LIT_LORA, micro_batch=1)),
    dict(id="litgpt-llama3-8b-qlora-a10g", source=LITGPT + "; llama-3-8b/qlora.yaml: nf4, r 32 on q, v; micro-batch 2",
         model="llama-3.1-8b", published=17.41, unit="GB", counter="allocator",
         setup=dict(LIT_LORA, method="qlora", micro_batch=2), note=LITGPT_QLORA_NOTE),
    dict(id="litgpt-mistral-7b-lora-a10g", source=LITGPT + "; mistral-7b/lora.yaml: r 32 on q, v; micro-batch 2",
         model="mistral-7b", published=20.66, unit="GB", counter="allocator", setup=dict(LIT_LORA, micro_batch=2)),
    dict(id="litgpt-mistral-7b-qlora-a10g", source=LITGPT + "; mistral-7b/qlora.yaml: nf4, r 32 on q, v; micro-batch 2",
         model="mistral-7b", published=14.29, unit="GB", counter="allocator",
         setup=dict(LIT_LORA, method="qlora", micro_batch=2), note=LITGPT_QLORA_NOTE),
    dict(id="litgpt-llama3.2-3b-lora-a10g", source=LITGPT + "; llama-3.2-3B/lora.yaml: r 32 on q, v; micro-batch 1",
         model="llama-3.2-3b", published=9.67, unit="GB", counter="allocator", setup=dict(LIT_LORA, micro_batch=1)),
    dict(id="litgpt-llama3.2-1b-lora-a10g", source=LITGPT + "; llama-3.2-1B/lora.yaml: r 32 on q, v; micro-batch 1",
         model="llama-3.2-1b", published=4.49, unit="GB", counter="allocator", setup=dict(LIT_LORA, micro_batch=1)),
    dict(id="litgpt-llama3.2-1b-full-a10g", source=LITGPT + "; llama-3.2-1B/full.yaml: AdamW; micro-batch 4",
         model="llama-3.2-1b", published=8.70, unit="GB", counter="allocator",
         setup=dict(method="full", master_weights=False, seq_len=512, micro_batch=4),
         note="looks wrong as a full fine-tune with AdamW in bf16: weights, gradients and the two moments alone are "
              "1.236B x (2 + 2 + 4) bytes = 9.9 GB, more than the published 8.70 GB before any activation"),
    dict(id="litgpt-llama3.2-3b-full-a10g", source=LITGPT + "; llama-3.2-3B/full.yaml: AdamW; micro-batch 4",
         model="llama-3.2-3b", published=16.51, unit="GB", counter="allocator",
         setup=dict(method="full", master_weights=False, seq_len=512, micro_batch=4),
         note="looks wrong the same way: 3.213B x 8 bytes = 25.7 GB for weights, gradients and moments, on a 24 GB "
              "card; the run must have used something the config does not say (a sharded or CPU optimizer)"),
    # Unsloth's context-length table, Hugging Face + FA2 column: at that length the run fills the card
    dict(id="unsloth-hf-8b-qlora-24gb", source=UNSLOTH + ": 24 GB -> 5,789 tokens", model="llama-3.1-8b",
         published=24.0, unit="GiB", counter="card",
         setup=dict(method="qlora", lora_rank=32, seq_len=5789, micro_batch=1, grad_checkpointing=True,
                    optimizer="adamw8bit"), note=UNSLOTH_NOTE),
    dict(id="unsloth-hf-8b-qlora-80gb", source=UNSLOTH + ": 80 GB -> 28,454 tokens", model="llama-3.1-8b",
         published=80.0, unit="GiB", counter="card",
         setup=dict(method="qlora", lora_rank=32, seq_len=28454, micro_batch=1, grad_checkpointing=True,
                    optimizer="adamw8bit"), note=UNSLOTH_NOTE),
    # the QLoRA paper and the seeds
    dict(id="qlora-paper-65b-48gb", source="Dettmers et al. 2023, QLoRA: a 65B model fine-tuned on one 48 GB GPU "
         "(LoRA r 64 on every linear layer, NF4 + double quantisation, paged optimizer, checkpointing)",
         model="llama-65b", published=48.0, unit="GiB", counter="card", bound="at most",
         setup=dict(method="qlora", lora_rank=64, seq_len=512, micro_batch=1, grad_checkpointing=True,
                    master_weights=False),
         note="the QLoRA repository casts the LoRA layers to bf16 under --bf16, so adapters and their Adam moments "
              "are 16-bit (0.8B adapter parameters: 6.4 GB instead of 12.8 GB in fp32)"),
    dict(id="seed-7b-full-100-120gb", source="second seed: full fine-tuning of a 7B model needs 100-120 GB",
         model="mistral-7b", published=110.0, unit="GB", counter="claim",
         setup=dict(method="full", seq_len=2048, micro_batch=1, grad_checkpointing=True),
         note="mixed precision with Adam is 16 bytes a parameter (Rajbhandari et al. 2020): 7.24B x 16 = 116 GB "
              "before activations; the seed's range holds"),
    dict(id="seed-70b-fp16-200gb", source="second seed: ~200 GB to fine-tune a 70B model at FP16",
         model="llama-3.1-70b", published=200.0, unit="GB", counter="claim",
         setup=dict(method="full", seq_len=2048, micro_batch=1, grad_checkpointing=True),
         note="looks wrong: 70.6B x 2 bytes is 141 GB of FP16 weights alone; with gradients (141 GB) and Adam's "
              "moments and master weights (70.6B x 12 = 847 GB) a full fine-tune needs ~1.1 TB; ~200 GB is about "
              "what LoRA over FP16 weights needs"),
]


# Tokens/s: torchtune's table (batch 2, packed to 2048, compiled; its Llama 3.1 recipes' defaults: activation
# checkpointing on, LoRA rank 8 on q, v, output and the MLP). "Tokens/sec" is over all GPUs of a row: per GPU the
# 8 x A100 rows would need 2-4x an A100's peak. The RTX A6000 is not in the catalog: its datasheet's dense bf16 peak.
TT_SPEED = dict(seq_len=2048, micro_batch=2, grad_checkpointing=True, master_weights=False)
TT_SPEED_LORA = dict(TT_SPEED, lora_rank=8, lora_targets=TT_LORA["lora_targets"])
TT_8_A100 = dict(gpus=8, sharding="fsdp")
THROUGHPUT_CASES = [
    dict(id="torchtune-8b-full-4090", model="llama-3.1-8b", gpu="rtx-4090", published=1650,
         setup=dict(TT_SPEED, method="full", optimizer="adamw8bit", optimizer_in_backward=True)),
    dict(id="torchtune-8b-full-a6000", model="llama-3.1-8b", gpu="rtx-4090", card=("NVIDIA RTX A6000", 154.8),
         published=2579, setup=dict(TT_SPEED, method="full", optimizer="adamw8bit", optimizer_in_backward=True)),
    dict(id="torchtune-8b-lora-4090", model="llama-3.1-8b", gpu="rtx-4090", published=3083,
         setup=dict(TT_SPEED_LORA, method="lora")),
    dict(id="torchtune-8b-lora-a6000", model="llama-3.1-8b", gpu="rtx-4090", card=("NVIDIA RTX A6000", 154.8),
         published=4699, setup=dict(TT_SPEED_LORA, method="lora")),
    dict(id="torchtune-8b-qlora-4090", model="llama-3.1-8b", gpu="rtx-4090", published=2413,
         setup=dict(TT_SPEED_LORA, method="qlora")),
    dict(id="torchtune-70b-full-8xa100", model="llama-3.1-70b", gpu="a100-80gb", published=1568,
         setup=dict(TT_SPEED, method="full", **TT_8_A100)),
    dict(id="torchtune-70b-lora-8xa100", model="llama-3.1-70b", gpu="a100-80gb", published=3497,
         setup=dict(TT_SPEED_LORA, method="lora", **TT_8_A100)),
    dict(id="torchtune-405b-qlora-8xa100", model="llama-3.1-405b", gpu="a100-80gb", published=653,
         setup=dict(TT_SPEED_LORA, method="qlora", **TT_8_A100)),
]
MEASURED = REPO / "bench" / "results" / "gpu_mfu_before_fixes.json"
# the cases of bench/gpu_mfu.py's run that set plan/timing.py's constants (DEFAULT_MFU and the width exponent)
FITTED = {"8b-lora-ckpt", "8b-lora", "8b-lora-ckpt-b8", "8b-dora-ckpt", "3b-full-ckpt", "1b-lora"}


def speed_row(case_id: str, model: str, setup: Setup, gpu, tokens_per_s: float, source: str, **extra) -> dict:
    predicted = estimate_time(shape_of(model), setup, gpu, tokens=1.0)
    implied = tokens_per_s * predicted.flops_per_token / (setup.gpus * gpu.bf16_tflops * 1e12)
    return {"id": case_id, "source": source, "model": model, "gpu": gpu.name, "gpus": setup.gpus,
            "setup": asdict(setup), "published_tokens_per_s": tokens_per_s,
            "predicted_tokens_per_s": round(predicted.tokens_per_s, 1), "planner_mfu": round(predicted.mfu, 4),
            "implied_mfu": round(implied, 4), "error": round(predicted.tokens_per_s / tokens_per_s - 1, 4), **extra}


def throughput_rows() -> list[dict]:
    catalog = load_catalog()
    rows = []
    for case in THROUGHPUT_CASES:
        gpu = catalog[case["gpu"]]
        if "card" in case:
            gpu = replace(gpu, name=case["card"][0], bf16_tflops=case["card"][1])
        setup = Setup(**case["setup"]).validate()
        row = speed_row(case["id"], case["model"], setup, gpu, case["published"], TORCHTUNE)
        if row["implied_mfu"] > 0.5:
            row["note"] = (f"looks wrong or counted differently: {row['published_tokens_per_s']:,} tokens/s x "
                           f"{row['setup']['gpus']} GPU(s) of {gpu.bf16_tflops:g} TFLOP/s dense bf16 needs "
                           f"{row['implied_mfu']:.0%} of the peak with the recipe's checkpointing")
        rows.append(row)
    if MEASURED.is_file():  # leantune's own runs on a GPU: what the constants were fitted on, and what was not
        measured = json.loads(MEASURED.read_text())
        commit = measured[PROVENANCE]["commit"][:7]
        for case_id, r in measured.get("cases", {}).items():
            if "tokens_per_s" not in r:
                continue
            setup = Setup(**{**r["setup"], "lora_targets": tuple(r["setup"]["lora_targets"])
                             if isinstance(r["setup"]["lora_targets"], list) else r["setup"]["lora_targets"]})
            model = r["model"]
            rows.append(speed_row(f"leantune-{case_id}-h200", model, setup, catalog["h200"], r["tokens_per_s"],
                                  f"bench/results/{MEASURED.name} (leantune train, commit {commit})",
                                  fitted=case_id in FITTED))
    return rows


def shape_of(name: str) -> ModelShape:
    return LLAMA_65B if name == "llama-65b" else PRESETS[name]


def evaluate(case: dict) -> dict:
    setup = Setup(**case["setup"]).validate()
    memory = estimate_peak_memory(shape_of(case["model"]), setup)
    terms = memory.as_gib()
    compared = memory.total - (CUDA_CONTEXT_BYTES if case["counter"] == "allocator" else 0)
    compared -= sum(getattr(memory, term) for term in case.get("excludes", []))
    published_bytes = case["published"] * (GiB if case["unit"] == "GiB" else GB)
    row = {k: case[k] for k in ("id", "source", "model", "published", "unit", "counter")}
    row.update(
        setup=asdict(setup), excludes=case.get("excludes", []), note=case.get("note", ""),
        predicted=round(compared / (GiB if case["unit"] == "GiB" else GB), 2),
        predicted_total_gib=round(memory.total / GiB, 2), terms_gib={k: round(v, 3) for k, v in terms.items()},
    )
    if case.get("bound") == "at most":
        row["bound"] = "at most"
        row["holds"] = compared <= published_bytes
        row["error"] = None
    else:
        row["error"] = round((compared - published_bytes) / published_bytes, 4)
    return row


def main() -> None:
    rows = [evaluate(c) for c in CASES]
    scored = [r for r in rows if r["error"] is not None and r["counter"] != "claim"]
    within = [r for r in scored if abs(r["error"]) <= 0.15]
    summary = {"cases": len(rows), "with_an_error": len(scored), "within_15_percent": len(within),
               "median_abs_error": sorted(abs(r["error"]) for r in scored)[len(scored) // 2]}
    speeds = throughput_rows()
    held_out = [r for r in speeds if not r.get("fitted")]
    summary["throughput"] = {
        "cases": len(speeds), "not_fitted": len(held_out),
        "within_30_percent_not_fitted": sum(abs(r["error"]) <= 0.30 for r in held_out),
        "published_above_50_percent_mfu": sum(r["implied_mfu"] > 0.5 for r in speeds)}
    out = REPO / "bench" / "results" / "plan_vs_published.json"
    out.write_text(json.dumps({PROVENANCE: provenance(), "summary": summary, "rows": rows, "throughput_rows": speeds},
                              indent=1) + "\n")
    print(f"{'case':34} {'published':>12} {'planned':>9} {'error':>8}")
    for r in rows:
        err = ("fits" if r["holds"] else "does not fit") if r.get("bound") else f"{r['error']:+.0%}"
        print(f"{r['id']:34} {r['published']:>8.2f} {r['unit']:>3} {r['predicted']:>9.2f} {err:>8}")
    print(f"{summary['within_15_percent']} of {summary['with_an_error']} published figures within 15% "
          f"(median |error| {summary['median_abs_error']:.0%})")
    print(f"\n{'tokens/s case':40} {'GPUs':>14} {'measured':>9} {'planned':>9} {'error':>7} {'its MFU':>8}")
    for r in speeds:
        gpus = f"{r['gpus']}x {' '.join(r['gpu'].replace('NVIDIA ', '').split()[:2])}"
        print(f"{r['id']:40} {gpus:>14} {r['published_tokens_per_s']:>9,.0f} {r['predicted_tokens_per_s']:>9,.0f} "
              f"{r['error']:>+7.0%} {r['implied_mfu']:>8.0%}{'  (fitted)' if r.get('fitted') else ''}")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
