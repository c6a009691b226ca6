"""Every export is loaded back the way its users will load it and compared with the tuned model it came from:
logits on the run's held-out prompts (max difference, mean KL, top-1 agreement) and the held-out score of both.
A check that fails stops the export before anything replaces what was there."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import ExportError

# mean KL(reference || export) per token, in nats, each check allows: 'hf' for a merge against the tuned model,
# 'exact' for a file against what it should hold exactly (a GGUF against its weights' own round trip, a LoRA-GGUF
# applied as llama.cpp does, an int8 reload), 'qlora' for a merge against the 4-bit model computing through
# bitsandbytes' kernels. A wrong q/k permutation or LoRA scale costs far more (the tests break both on purpose).
KL_LIMIT = {"hf": 1e-6, "exact": 1e-5, "qlora": 2e-3}
# merged fp32 vs the tuned model in memory: |d| <= 1e-4 + 1e-5 * (the largest |logit| at that position). W + BA
# computed once rounds differently from Wx + B(Ax), and the error grows with the activations' scale: 3.7e-5 on
# the tiny test model, 1.2e-4 on SmolLM2 (logits up to ~25 after 30 layers)
HF_ATOL, HF_RTOL = 1e-4, 1e-5


@dataclass
class Check:
    how: str
    prompts: int
    tokens: int
    max_abs_diff: float
    mean_kl: float
    top1_agreement: float
    kl_limit: float
    passed: bool
    held_out: dict | None = None  # task metric -> {reference, export}
    quality: dict | None = None  # GGUF: what the encoding cost against the tuned model

    def describe(self) -> str:
        held = ""
        if self.held_out:
            held = "; held-out " + ", ".join(f"{m} {v['reference']:.4g} -> {v['export']:.4g}" for m, v in self.held_out.items())
        return (f"{self.how}: {self.prompts} held-out prompts ({self.tokens} tokens), max |dlogit| "
                f"{self.max_abs_diff:.2e}, mean KL {self.mean_kl:.2e} (limit {self.kl_limit:g}), top-1 agreement "
                f"{self.top1_agreement:.1%}{held}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_prompts(config, tokenizer, n: int = 8, max_tokens: int = 96) -> list[list[int]]:
    """Token ids of up to `n` of the run's held-out examples (rendered with the chat template)."""
    from ..evaluation.tasks import held_out_examples

    try:
        examples = held_out_examples(config)[:n]
    except Exception:  # noqa: BLE001 - a run without held-out rows is still checked, on fixed prompts
        examples = []
    prompts = []
    for ex in examples:
        if ex.messages and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(list(ex.messages), tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(ex.text or "".join(m["content"] for m in ex.messages), add_special_tokens=False)["input_ids"]
        prompts.append(list(ids)[:max_tokens])
    if not prompts:
        prompts = [tokenizer("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)["input_ids"]]
    return prompts


@torch.no_grad()
def logits_for(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    model.eval()
    device = next(model.parameters()).device
    return [model(torch.tensor([p], device=device)).logits[0].float().cpu() for p in prompts]


def compare(reference: list[torch.Tensor], exported: list[torch.Tensor], how: str, limit_key: str | None,
            allclose: bool = False) -> Check:
    diffs, kls, agree, tokens = [], [], 0, 0
    close = True
    for r, e in zip(reference, exported):
        bound = HF_ATOL + HF_RTOL * r.abs().amax(-1, keepdim=True)
        close = close and bool(((e - r).abs() <= bound).all())
        diffs.append((r - e).abs().max().item())
        lr, le = torch.log_softmax(r, -1), torch.log_softmax(e, -1)
        kls.append((lr.exp() * (lr - le)).sum(-1).sum().item())
        agree += (r.argmax(-1) == e.argmax(-1)).sum().item()
        tokens += r.shape[0]
    mean_kl = max(sum(kls) / tokens, 0.0)
    limit = float("inf") if limit_key is None else KL_LIMIT[limit_key]  # None: a measurement, not a check
    passed = mean_kl <= limit and (close or not allclose)
    return Check(how, len(reference), tokens, max(diffs), mean_kl, agree / tokens, limit, passed)


def held_out_scores(config, tokenizer, reference, exported, limit: int) -> dict | None:
    """The run's held-out task scored by the reference and the export on the same items (evaluation layer)."""
    from ..evaluation.api import evaluate_models
    from ..evaluation.runner import Contender, Settings
    from ..evaluation.tasks import held_out_examples, task_from_examples
    from ..models.adapters import eval_mode

    try:
        task = task_from_examples("held-out", held_out_examples(config))
    except Exception:  # noqa: BLE001 - no held-out split: the logits check stands alone
        return None
    contenders = [Contender("reference", reference, lambda: eval_mode(reference)),
                  Contender("export", exported, lambda: eval_mode(exported))]
    result = evaluate_models(contenders, tokenizer, [task], Settings(batch_size=8, max_seq_len=config.data.max_seq_len, limit=limit),
                             "export check")
    scores = {}
    for metric in result.tasks[0].metrics:
        scores[metric.metric] = {"reference": metric.scores["reference"], "export": metric.scores["export"]}
        for name, values in metric.extra.items():
            if "reference" in values and "export" in values:
                scores[name] = {"reference": values["reference"], "export": values["export"]}
    return scores


def require(check: Check, what: str) -> None:
    if not check.passed:
        raise ExportError(f"The {what} export did not load back as the tuned model ({check.describe()}); nothing was "
                          "written. This is a bug in the exporter: please report it with the run's config.")


def measure_cost(reference: list[torch.Tensor], exported: list[torch.Tensor], check: Check, notes: list[str]) -> None:
    """What the encoding cost against the tuned model: kept in the check and said in the notes, not judged."""
    cost = compare(reference, exported, "", None)
    check.quality = {"mean_kl_vs_tuned": cost.mean_kl, "top1_agreement_vs_tuned": cost.top1_agreement,
                     "max_abs_diff_vs_tuned": cost.max_abs_diff}
    notes.append(f"against the tuned model: mean KL {cost.mean_kl:.2e}, top-1 agreement {cost.top1_agreement:.1%}")


def quality_warnings(held_out: dict | None, points: float = 2.0) -> list[str]:
    """A loud note when the export lost more than `points` of a held-out accuracy-type metric."""
    out = []
    for metric, v in (held_out or {}).items():
        if "accuracy" in metric and (v["reference"] - v["export"]) * 100 > points:
            out.append(f"WARNING: held-out {metric} fell from {v['reference']:.1%} to {v['export']:.1%}: this encoding "
                       "loses what the fine-tune learned (a small update rounded away by coarse blocks). Use q8_0, or "
                       "--format gguf-lora to keep the base's own file and the adapter exact.")
    return out
