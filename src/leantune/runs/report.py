"""report.md and loss.png: what a person reads after a run."""

from __future__ import annotations

import json

from .. import atomic
from .cost import PHASE_LABELS, PHASES, Price, cost_usd, usd
from .rundir import RunDir


def plot_loss(run: RunDir) -> bool:
    import matplotlib  # ~0.5 s, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = run.read_metrics()
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    losses = [v for _, v in train + evals if v > 0]
    if losses and max(losses) / min(losses) > 50:
        ax.set_yscale("log")  # fine-tunes often fall from ~10 to ~0.01; a linear axis hides the tail
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over trained tokens)")
    ax.set_title(run.id, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(run.path / "loss.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def plan_vs_actual(run: RunDir, result, config) -> list[str]:
    """What the planner said before the run next to what happened (plan.json, written at setup)."""

    try:
        plan = json.loads((run.path / "plan.json").read_text())
    except (OSError, ValueError):
        return []
    planned_gib = plan.get("memory_gib", {}).get("total")
    planned_s = plan.get("seconds")
    rows = ["## Plan vs actual", "", "| | planned | actual | actual / planned |", "|---|---|---|---|"]
    actual_gib = result.peak_memory_mb / 1024
    if planned_gib:
        rows.append(f"| peak memory | {planned_gib:.2f} GiB | {actual_gib:.2f} GiB | {actual_gib / planned_gib:.2f} |")
    if planned_s:
        rows.append(f"| training time | {planned_s:.0f} s | {result.elapsed_s:.0f} s | {result.elapsed_s / planned_s:.2f} |")
        price = Price.from_dict(run.info().get("price") or {})
        planned_cost = cost_usd(planned_s, price)
        if planned_cost:
            # the plan prices training steps; the bill also holds loading, data, evaluation and saving
            rows.append(f"| cost of the training steps | {usd(planned_cost)} | {usd(cost_usd(result.elapsed_s, price))} | "
                        f"{result.elapsed_s / planned_s:.2f} |")
    note = ("Peak memory on CPU is the process's resident peak, which also holds allocator slack the plan leaves out "
            "(see plan/MEMORY_MODEL.md)." if result.peak_memory_mb and "cuda" not in str(plan.get("setup", {}).get("device", "cpu")) else "")
    return rows + ["", note, ""] if note else rows + [""]


def write_report(run: RunDir, config, result, extra: str = "") -> None:
    has_plot = plot_loss(run)
    m, t = config.method, config.training
    lines = [
        f"# Run {run.id}",
        "",
        f"- base model: `{config.model.base}`",
        f"- data: `{config.data.train}`" + (f", eval `{config.data.eval}`" if config.data.eval else f", {len(result.eval_examples)} held-out eval examples"),
        f"- method: {m.name} r={m.r} alpha={m.alpha} dropout={m.dropout} targets={m.target_modules}",
        f"- training: {result.steps} steps, micro-batch {t.micro_batch_size} x accumulation {t.grad_accum}, lr {t.lr}, seed {t.seed}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| final train loss | {result.final_loss:.4f} |",
        f"| eval loss | {'-' if result.eval_loss is None else f'{result.eval_loss:.4f}'} |",
        f"| tokens processed | {result.tokens:,} |",
        f"| training time | {result.elapsed_s:.1f} s |",
        f"| throughput | {result.tokens_per_s:.0f} tokens/s |",
        f"| peak memory | {result.peak_memory_mb:,.0f} MiB |",
        "",
    ]
    lines += plan_vs_actual(run, result, config)
    if has_plot:
        lines += ["![loss](loss.png)", ""]
    if config.method.name == "full":
        lines += ["The fine-tuned model is in `model/` (a Hugging Face model directory, tokenizer included).", ""]
    else:
        lines += ["The adapter is in `adapter/` (PEFT format: `PeftModel.from_pretrained(base, 'adapter')`).", ""]
    if extra:
        lines += [extra, ""]
    atomic.write_text(run.report_path, "\n".join(lines))


def cost_section(billed: dict) -> str:
    """'## Cost': the billed wall time by phase and the dollars, from run.json's "billed" record."""
    price = Price.from_dict(billed.get("price") or {})
    seconds = billed.get("seconds", 0.0)
    lines = ["## Cost", "",
             f"Billed: {seconds:.1f} s of wall time (the whole process, not just the training steps) at "
             f"{price.describe()}: **{usd(billed.get('usd'))}**.", "",
             "| phase | seconds | share | cost |", "|---|---|---|---|"]
    for phase in PHASES:
        spent = billed.get("phases", {}).get(phase, 0.0)
        share = f"{spent / seconds:.0%}" if seconds else "-"
        lines.append(f"| {PHASE_LABELS[phase]} | {spent:.1f} | {share} | {usd(cost_usd(spent, price))} |")
    return "\n".join(lines) + "\n"


def append_to_report(run: RunDir, section: str) -> None:
    text = run.report_path.read_text(encoding="utf-8") if run.report_path.is_file() else ""
    atomic.write_text(run.report_path, text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")


def replace_report_section(run: RunDir, heading: str, section: str) -> None:
    """Put `section` in report.md in place of an earlier section with the same heading (one per evaluation), or
    at the end; the rest of the report is kept."""
    text = run.report_path.read_text(encoding="utf-8") if run.report_path.is_file() else ""
    lines = text.rstrip("\n").split("\n") if text else []
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    kept = "\n".join(lines).rstrip("\n")
    atomic.write_text(run.report_path, (kept + "\n\n" if kept else "") + section.strip("\n") + "\n")
