"""Why NF4 QLoRA trails LoRA on the bundled model: the base it trains over is not the model's own.

The bundled SmolLM2-135M is a Q4_1 / Q8_0 GGUF. LoRA and `qlora-gguf` train over exactly its weights; NF4 QLoRA
(bitsandbytes, block 64, double quantisation) rounds those already-rounded weights to a second 4-bit grid.
This measures how far that moves them and the model:
- per linear layer, the relative RMS change of the weights (NF4 of the GGUF's weights against the GGUF's weights);
- the two bases' next-token distributions on held-out sms-spam prompts and replies: mean KL(GGUF || NF4) per token,
  how often the top token differs, and the mean loss of the reference reply under each.

    python bench/nf4_requant.py        # ~2 min on 2 cores

Writes bench/results/nf4_requant.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_results  # noqa: E402

RESULTS = HERE / "results" / "nf4_requant.json"
PROMPTS = 64


def main() -> None:
    import torch
    import torch.nn.functional as F
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    from leantune.data import load_splits
    from leantune.data.tokenize import end_of_turn_ids, tokenize_chat
    from leantune.models.loading import load_base

    gguf = load_base("smollm2-135m", "float32")
    nf4 = load_base("smollm2-135m", "float32", quantize_4bit=True)

    layers, total_change, total_norm = [], 0.0, 0.0
    for name, module in gguf.model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            weight = module.weight.detach().float()
            packed, state = quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
            change = (dequantize_4bit(packed, state).float() - weight).pow(2).sum().item()
            norm = weight.pow(2).sum().item()
            layers.append({"layer": name, "relative_rms_change": math.sqrt(change / norm)})
            total_change, total_norm = total_change + change, total_norm + norm
    print(f"{len(layers)} linear layers; NF4 moves the GGUF's weights by {math.sqrt(total_change / total_norm):.1%} RMS",
          file=sys.stderr)

    examples = load_splits("sms-spam", None, 200, 0).eval[:PROMPTS]
    eot = end_of_turn_ids(gguf.tokenizer)
    kl_sum, flips, positions, loss = 0.0, 0, 0, {"gguf": 0.0, "nf4": 0.0}
    reply_tokens = 0
    with torch.no_grad():
        for example in examples:
            row = tokenize_chat(gguf.tokenizer, example, eot)
            ids = torch.tensor([row.input_ids])
            logp = {k: F.log_softmax(m.model(input_ids=ids).logits[0, :-1].float(), -1)
                    for k, m in (("gguf", gguf), ("nf4", nf4))}
            kl_sum += (logp["gguf"].exp() * (logp["gguf"] - logp["nf4"])).sum().item()
            flips += (logp["gguf"].argmax(-1) != logp["nf4"].argmax(-1)).sum().item()
            positions += ids.shape[1] - 1
            targets = torch.tensor(row.labels[1:])
            scored = targets != -100
            for k in loss:
                loss[k] += -logp[k][scored].gather(1, targets[scored, None]).sum().item()
            reply_tokens += int(scored.sum())
    results = {
        "weights": {"relative_rms_change": math.sqrt(total_change / total_norm), "layers": len(layers),
                    "worst_layer": max(layers, key=lambda r: r["relative_rms_change"]),
                    "best_layer": min(layers, key=lambda r: r["relative_rms_change"])},
        "outputs": {"prompts": len(examples), "positions": positions, "mean_kl_per_token": kl_sum / positions,
                    "top_token_differs": flips / positions,
                    "reply_loss_gguf": loss["gguf"] / reply_tokens, "reply_loss_nf4": loss["nf4"] / reply_tokens},
    }
    write_results(RESULTS, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
