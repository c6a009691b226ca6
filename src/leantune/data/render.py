"""What `leantune data list / preview / clean` print (data check's report is in check_render.py)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .builtin import BUILTIN_INFO, example_count
from .clean import CleanSummary
from .preview import PreviewRow


def print_builtin_datasets(console: Console) -> None:
    table = Table(title="built-in datasets (installed with the project, never downloaded)")
    for col in ("name", "examples", "from package", "license", "what"):
        table.add_column(col)
    for d in BUILTIN_INFO.values():
        table.add_row(d.name, f"{example_count(d):,}", d.package, d.license, d.description)
    console.print(table)


def print_preview(console: Console, rows: list[PreviewRow], truncation: str) -> None:
    """Rows as the model sees them: trained tokens green, context dimmed, what truncation cuts off red."""
    for row in rows:
        note = f", [red]longer than --max-seq-len {row.truncated_at}[/]" if row.truncated_at else ""
        console.print(f"[bold]{row.source}[/]: {row.tokens} tokens, {row.trained_tokens} trained{note}")
        text = Text()
        for segment, trained in row.segments:
            text.append(segment, style="bold green" if trained else "dim")
        console.print(text)
        if row.dropped_where:
            what = {"start": "cuts off its first", "end": "cuts off its last", "row": "skips the whole row of"}[row.dropped_where]
            count = row.tokens - row.truncated_at if row.dropped_where != "row" else row.tokens
            shown = row.dropped[:300] + ("..." if len(row.dropped) > 300 else "")
            console.print(Text(f"training ({truncation}) {what} {count} tokens: ", style="bold red") + Text(shown, style="red"))
        if row.rejected is not None:
            console.print(Text("rejected reply (DPO pushes its likelihood down): ", style="bold red") + Text(row.rejected))
        console.print()
    console.print("[dim]dim: context the model sees but is not trained on[/]  [bold green]green: tokens that carry the loss[/]")


def print_clean(console: Console, summary: CleanSummary) -> None:
    reasons = ", ".join(f"{code} {n:,}" for code, n in summary.dropped.most_common()) or "none"
    console.print(f"[bold]data clean[/] {summary.input}: {summary.rows:,} rows -> kept {summary.kept:,}, "
                  f"dropped {sum(summary.dropped.values()):,} ({reasons}); text repaired or trimmed in {summary.repaired:,} "
                  f"kept rows; {summary.seconds:.1f}s", highlight=False)
    console.print(f"  clean rows:    {summary.output}\n  dropped rows:  {summary.rejected_output} (each with its reason)",
                  highlight=False)


def row_counter(console: Console):
    """Wraps a row iterator with a live row count, so a long check is never silent."""

    def wrap(pairs):
        with Progress(SpinnerColumn(), TextColumn("{task.completed:,} rows"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("check")
            for i, pair in enumerate(pairs, start=1):
                if i % 2000 == 0:
                    bar.update(task, completed=i)
                yield pair

    return wrap
