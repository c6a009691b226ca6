"""How fast evaluation scores, and what sharing each prompt's KV cache across its answers buys.

On the bundled SmolLM2-135M, in one process, each task scored twice on the same items: every (prompt, answer)
row run whole (the baseline: what scoring each candidate as its own sequence costs), and with each prompt run
once and its cache reused for its answers (what leantune does). Scores must agree (max difference printed);
the ratio of items/s is the gain. Then greedy generation (exact match) for the items/s of that path.

    python bench/eval_speed.py          # ~5 minutes on 2 CPU cores

Writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "eval_speed.json"
sys.path.insert(0, str(HERE.parent / "src"))

from common import write_results  # noqa: E402


def main() -> None:
    import torch

    from leantune.data.builtin import SMS_LABELS
    from leantune.evaluation.general import analogy_questions, trivia_questions
    from leantune.evaluation.generation import greedy_answers
    from leantune.evaluation.metrics import exact_match
    from leantune.evaluation.multiple_choice import Question, choice_scores
    from leantune.evaluation.tasks import builtin_sample
    from leantune.models.loading import load_base

    base = load_base("smollm2-135m")
    model, tok = base.model, base.tokenizer
    sms = builtin_sample("sms-spam")[:96]
    tasks = {
        "sms-spam classification (2 labels, summed log-lik)": ([Question(e.prompt, SMS_LABELS, 0) for e in sms], False),
        "trivia multiple choice (4 choices)": (trivia_questions()[:96], True),
        "analogies multiple choice (4 choices)": (analogy_questions()[::2][:96], True),
    }
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "date": time.strftime("%Y-%m-%d"), "model": "smollm2-135m (fp32, CPU)", "batch_size": 16, "tasks": {}}
    for name, (questions, per_token) in tasks.items():
        row = {"items": len(questions)}
        scores = {}
        for share in (False, True):
            started = time.perf_counter()
            scores[share] = choice_scores(model, tok, questions, 16, per_token=per_token, share_prompt=share)
            seconds = time.perf_counter() - started
            row["shared" if share else "whole_rows"] = {"seconds": round(seconds, 2), "items_per_s": round(len(questions) / seconds, 2)}
            print(f"{name}: {'shared prompt' if share else 'whole rows'} {len(questions) / seconds:.1f} items/s", flush=True)
        row["speedup"] = round(row["shared"]["items_per_s"] / row["whole_rows"]["items_per_s"], 2)
        row["max_score_difference"] = max(abs(a - b) for x, y in zip(scores[False], scores[True]) for a, b in zip(x, y))
        print(f"  -> {row['speedup']}x, scores differ by at most {row['max_score_difference']:.2e}", flush=True)
        results["tasks"][name] = row
    from leantune.data.builtin import load_trivia

    trivia = load_trivia()[:48]
    started = time.perf_counter()
    replies = greedy_answers(model, tok, trivia, max_new_tokens=32, batch_size=16)
    seconds = time.perf_counter() - started
    results["tasks"]["trivia exact match (greedy, <= 32 new tokens)"] = {
        "items": len(trivia), "seconds": round(seconds, 2), "items_per_s": round(len(trivia) / seconds, 2),
        "exact_match": sum(exact_match(r, e.answer) for r, e in zip(replies, trivia)) / len(trivia)}
    print(f"trivia greedy generation: {len(trivia) / seconds:.1f} items/s", flush=True)
    write_results(RESULTS, results)


if __name__ == "__main__":
    main()
