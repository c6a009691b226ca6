"""The human-readable form of a `data check` report (the `--json` form is `CheckReport.to_dict`)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .check import KINDS, CheckReport


def _lengths(name: str, lengths) -> str:
    return f"{name} p50 {lengths.p50:,} / p95 {lengths.p95:,} / max {lengths.max:,}"


def print_check(report: CheckReport, console: Console | None = None) -> None:
    console = console or Console()
    rate = f", {report.rows / report.seconds:,.0f} rows/s" if report.seconds > 0 else ""
    if report.bytes and report.seconds > 0:
        rate += f", {report.bytes / 2**20 / report.seconds:,.1f} MiB/s"
    formats = ", ".join(f"{k} {v:,}" for k, v in report.formats.items()) or "none"
    console.print(f"[bold]data check[/] {escape(report.path)}: {report.rows:,} rows, {report.examples:,} valid examples "
                  f"(formats: {formats}); {report.seconds:.1f}s{rate}", highlight=False)
    if report.eval_path:
        console.print(f"  against eval set {escape(report.eval_path)}: {report.eval_examples:,} examples", highlight=False)
    if report.chars:
        line = "  lengths: " + _lengths("characters", report.chars)
        if report.tokens:
            over = report.findings.get("too_long")
            line += f"; {_lengths('tokens', report.tokens)}; longer than --seq-len {report.seq_len}: {over.count if over else 0:,}"
        console.print(line, highlight=False)
    if report.padding:
        p = report.padding
        console.print(f"  padding: {p['padded']:.1%} of paid token slots in micro-batches of {p['micro_batch_size']} "
                      f"padded to their longest row; {p['packed']:.1%} with packing into rows of --seq-len (data.packing: "
                      f"true; none where a micro-batch runs as one row, models with SDPA attention)", highlight=False)
    if report.labels:
        total = sum(report.labels.values())
        console.print("  answers: " + ", ".join(f"{escape(k)!r} {v:,} ({v / total:.1%})" for k, v in report.labels.items()),
                      highlight=False)
    findings = report.sorted_findings()
    if findings:
        table = Table(show_lines=False, expand=False)
        for col in ("", "finding", "rows", "first rows"):
            table.add_column(col, overflow="fold")
        for f in findings:
            kind = KINDS[f.code]
            mark = "[bold red]error[/]" if kind.severity == "error" else "[yellow]warning[/]"
            rows = "\n".join(escape(r) for r in f.rows)
            table.add_row(mark, f"{kind.title}\n[dim]{escape(kind.hint)}[/]", f"{f.count:,}", rows)
        console.print(table)
    verdict = (f"[bold red]{report.errors:,} errors[/]" if report.errors else "[green]no errors[/]") + f", {report.warnings:,} warnings"
    console.print(verdict + ("" if not report.errors else " (exit 1; `leantune data clean` drops the bad rows)"))
