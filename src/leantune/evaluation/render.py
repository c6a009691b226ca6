"""An EvalResult as a rich table (the rows of the report's markdown table), for the CLI."""

from __future__ import annotations

from rich.table import Table


def eval_table(result) -> Table:
    table = Table(title=f"evaluation of {result.target}")
    for col in result.columns:
        table.add_column(col)
    for row in result.rows():
        table.add_row(*row)
    return table
