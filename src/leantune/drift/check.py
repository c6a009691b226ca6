"""`leantune drift check RUN --current FILE`: have the prompts a model now gets moved away from what it was
trained for? The reference is the run's held-out prompts (never its training rows: the model has seen those);
both sides are rendered with the model's chat template the same way. Every signal in stats.py gets a p-value and
an effect; one verdict after Holm's correction. Written to the run as drift.json, a report section with a plot,
and run.json (`drift`, shown by `runs show`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import UserError
from ..runs.lookup import find_run
from ..runs.report import replace_report_section
from . import stats

MIN_ROWS = 30  # below this a two-sample test has little power and a verdict would be noise


@dataclass
class Prompt:
    messages: list[dict]  # without the answer
    answer: str | None = None  # a labelled row's expected answer


@dataclass
class DriftReport:
    run: str
    current: str
    reference_rows: int
    current_rows: int
    alpha: float
    verdict: str  # "drift" | "no drift"
    signals: list[dict]
    created: float = field(default_factory=time.time)

    def summary(self) -> str:
        flagged = [s["name"] for s in self.signals if s["drifted"]]
        return (f"{self.verdict}: {self.current_rows} current prompts against {self.reference_rows} held-out"
                + (f"; flagged by {', '.join(flagged)}" if flagged else ""))


def read_current(spec: str, runs_dir: str) -> list[Prompt]:
    """A data file (any format `leantune data` reads; an assistant answer makes the row labelled), or
    serve-log:NAME for the request log `leantune serve --log-requests RUNS/requests` writes."""
    if spec.startswith("serve-log:"):
        name = spec.split(":", 1)[1]
        folder = Path(runs_dir) / "requests"
        files = sorted(folder.glob(f"{name}.jsonl*"), key=lambda p: p.name, reverse=True)  # oldest rotation first
        if not files:
            raise UserError(f"No request log for '{name}' in {folder}. Serve with `leantune serve --log-requests "
                            f"{folder}` and let it answer some requests first.")
        prompts = []
        for path in files:
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                prompt = row["prompt"]
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
                prompts.append(Prompt(messages))
        return prompts
    from ..data import BUILTIN, load_examples
    from ..data.rows import check_exists, scan_rows

    if spec in BUILTIN:  # a built-in dataset: its rows, as prompts with their labels
        return [_prompt_of(list(e.messages)) for e in load_examples(spec)]
    path = Path(spec)
    check_exists(path)
    prompts = []
    for raw in scan_rows(path):
        if raw.row is None:
            raise raw.error()
        prompts.append(_prompt_of(_messages_of(raw.row, raw.where)))
    return prompts


def _messages_of(row: dict, where: str) -> list[dict]:
    """Prompts need no answer: chat rows (messages), prompt/completion, Alpaca (instruction, input, output), text."""
    if isinstance(row.get("messages"), list):
        return [{"role": m.get("role"), "content": str(m.get("content", ""))} for m in row["messages"]]
    for key in ("prompt", "instruction", "text", "question"):
        if isinstance(row.get(key), str):
            user = row[key] + (f"\n\n{row['input']}" if key == "instruction" and row.get("input") else "")
            answer = next((row[k] for k in ("completion", "output", "answer", "label") if isinstance(row.get(k), str)), None)
            return [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    raise UserError(f"{where}: no prompt found; give 'messages', 'prompt', 'instruction' or 'text'.")


def _prompt_of(messages: list[dict]) -> Prompt:
    if messages and messages[-1]["role"] == "assistant":
        return Prompt(messages[:-1], messages[-1]["content"])
    return Prompt(messages)


def _render(tokenizer, prompts: list[Prompt]) -> list[str]:
    return [tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts]


def _user_text(prompts: list[Prompt]) -> list[str]:
    return ["\n".join(m["content"] for m in p.messages if m["role"] == "user") for p in prompts]


def _embed_and_loss(model, tokenizer, texts: list[str], max_len: int, want_loss: bool, batch: int = 16):
    """Mean-pooled last hidden states (the base model) and/or per-prompt mean token loss (the tuned model)."""
    import torch

    embeddings, losses = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], add_special_tokens=False, return_tensors="pt", padding=True,
                            truncation=True, max_length=max_len)
            out = model(**enc, output_hidden_states=not want_loss)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            if want_loss:
                logits = out.logits[:, :-1].float()
                target = enc["input_ids"][:, 1:]
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                keep = enc["attention_mask"][:, 1:].float()
                losses.extend((nll * keep).sum(1).div(keep.sum(1).clamp(min=1)).tolist())
            else:
                hidden = out.hidden_states[-1].float()
                embeddings.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(embeddings) if embeddings else None, losses


def check(target: str, current: str, runs_dir: str = "runs", alpha: float = 0.05, min_rows: int = MIN_ROWS,
          permutations: int = 200, save: bool = True, say=print) -> DriftReport:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha} must be between 0 and 1 (e.g. 0.05).")
    found = find_run(target, runs_dir)
    run = found.run
    config = run.config()
    new = read_current(current, runs_dir)
    if len(new) < min_rows:
        raise UserError(f"{current} has {len(new)} prompts; a drift check needs at least {min_rows} (--min-rows) for "
                        "its tests to mean anything. Collect more and check again.")
    from ..data import run_splits

    d = config.data
    # one read and split of the run's data: the held-out rows are the reference, the training rows the vocabulary
    splits = run_splits(config)
    if not splits.eval:
        raise UserError(f"Run {run.id} held out no examples (data.eval_size=0 and no data.eval), and drift is measured "
                        "against the run's held-out prompts. Train with data.eval_size of at least "
                        f"{min_rows}.")
    reference = [_prompt_of(list(e.messages)) for e in splits.eval]  # split the way the current rows are
    if len(reference) < min_rows:
        raise UserError(f"The run held out {len(reference)} examples; a drift check needs at least {min_rows}. "
                        "Train with a larger data.eval_size.")

    from ..models.inference import load_trained
    from ..models.loading import load_base, load_tokenizer

    tokenizer = load_tokenizer(config.model.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    ref_text, new_text = _render(tokenizer, reference), _render(tokenizer, new)
    say(f"drift check: {len(new)} current prompts against {len(reference)} held-out prompts of {run.id}")
    ref_len = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ref_text]
    new_len = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in new_text]
    vocabulary = {w for e in splits.train for m in e.messages if m["role"] != "assistant" for w in stats.words(m["content"])}
    signals = [stats.length(ref_len, new_len),
               stats.oov(vocabulary, _user_text(reference), _user_text(new)),
               stats.classifier(ref_text, new_text, permutations=min(permutations, 100))]
    say("  embedding both sides with the base model (fixed across retrains)")
    base = load_base(config.model.base, "auto", "cpu")
    ref_emb, _ = _embed_and_loss(base.model, tokenizer, ref_text, d.max_seq_len, False)
    new_emb, _ = _embed_and_loss(base.model, tokenizer, new_text, d.max_seq_len, False)
    signals.append(stats.mmd(ref_emb, new_emb, permutations))
    del base
    say("  scoring both sides with the tuned model")
    tuned = load_trained(run, "cpu")
    _, ref_loss = _embed_and_loss(tuned.model, tokenizer, ref_text, d.max_seq_len, True)
    _, new_loss = _embed_and_loss(tuned.model, tokenizer, new_text, d.max_seq_len, True)
    signals.append(stats.loss(ref_loss, new_loss))
    labelled = [p for p in new if p.answer is not None]
    if len(labelled) >= min_rows:
        from ..generate import generate_reply

        def correct(prompts):
            out = []
            for p in prompts:
                user = next(m["content"] for m in reversed(p.messages) if m["role"] == "user")
                system = next((m["content"] for m in p.messages if m["role"] == "system"), None)
                reply = generate_reply(tuned.model, tuned.tokenizer, user, 16, system)
                out.append(reply.strip().lower() == p.answer.strip().lower())
            return out

        say(f"  answering {len(labelled)} labelled rows and the held-out ones")
        signals.append(stats.task_metric(correct(reference), correct(labelled)))
    stats.holm(signals, alpha)
    verdict = "drift" if any(s.drifted for s in signals) else "no drift"
    report = DriftReport(run.id, current, len(reference), len(new), alpha, verdict, [s.to_dict() for s in signals])
    if save:
        _save(run, report, ref_len, new_len)
    return report


def _save(run, report: DriftReport, ref_len, new_len) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic.write_json(run.path / "drift.json", asdict(report))
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, max(max(ref_len), max(new_len)) + 1, 30)
    ax.hist(ref_len, bins, alpha=0.6, density=True, label="held-out")
    ax.hist(new_len, bins, alpha=0.6, density=True, label="current")
    ax.set_xlabel("prompt tokens")
    ax.legend()
    fig.tight_layout()
    tmp = run.path / ".drift_lengths.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(run.path / "drift_lengths.png")
    lines = ["## Drift", "", f"**{report.verdict}** ({report.current}: {report.current_rows} prompts against {report.reference_rows} "
             f"held-out; alpha {report.alpha}, Holm-corrected)", "",
             "| signal | statistic | p | p (Holm) | effect | minimum | drift |", "|---|---|---|---|---|---|---|"]
    for s in report.signals:
        lines.append(f"| {s['name']} | {s['statistic']:.4g} | {s['p_value']:.3g} | {s['p_adjusted']:.3g} | "
                     f"{s['effect']:.4g} | {s['min_effect']:g} | {'yes' if s['drifted'] else 'no'} |")
    clf = next((s for s in report.signals if s["name"] == "classifier"), None)
    if clf and clf["detail"].get("more_in_current"):
        lines += ["", "More frequent in the current prompts: "
                  + ", ".join(f"`{w}`" for w, _ in clf["detail"]["more_in_current"])]
    lines += ["", "![prompt lengths](drift_lengths.png)"]
    replace_report_section(run, "## Drift", "\n".join(lines))
    run.update_info(drift={"verdict": report.verdict, "current": report.current, "rows": report.current_rows,
                           "flagged": [s["name"] for s in report.signals if s["drifted"]], "created": report.created})
