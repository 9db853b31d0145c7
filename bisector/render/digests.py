"""Render the comparison of two digest files: first differing step, its values, growth."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bisector.digests import DigestReport
from bisector.render.console import environment_table, trimmed
from bisector.report import GrowthRow
from bisector.words import counted

# Differing values listed for the first step, and growth rows shown at each end.
_MAX_VALUES = 20
_GROWTH_ENDS = 8

WHERE = {
    "rng": "a generator state differs at the start of the step",
    "batch": "the data differs: look at data loading and augmentation",
    "loss": "the forward pass differs while the batch was equal",
    "grad": "the backward pass differs while the loss was equal",
    "param": "the optimizer step differs while the gradients were equal",
    "state": "the optimizer state differs while the gradients were equal",
    "buffer": "a buffer (e.g. running statistics) differs",
    "structure": "the runs took different values (another number of batches or losses?)",
}


@trimmed
def render(report: DigestReport, console: Console) -> None:
    """Print the report."""
    if report.reproducible:
        console.print(
            Text.assemble(
                ("Reproducible: ", "bold green"),
                f"all {counted(report.steps_compared, 'step')} compared are bitwise identical "
                "(batch, loss, gradients, parameters, optimizer state, buffers).",
            )
        )
    else:
        values = [v for v in report.first if v["kind"] != "rng"]
        first = values[0] if values else report.first[0]
        console.print(
            Text.assemble(
                ("Runs diverge ", "bold red"),
                f"at step {report.first_step}: {first['kind']} {first['name']} differs first; ",
                WHERE.get(first["kind"], ""),
                ".",
            )
        )
        console.print(_values(report))
    if report.environment:
        console.print(environment_table(report.environment))
    if report.growth and not report.reproducible:
        console.print(_growth(report))
    for note in report.notes:
        console.print(Text("  - ") + Text(note))
    if not report.reproducible:
        console.print(
            Text(
                "Next: `bisector find SCRIPT --steps N` records every op of the first "
                "differing step and names the op.",
                style="dim",
            )
        )


def _values(report: DigestReport) -> Table:
    table = Table(
        title=f"Values that differ at step {report.first_step}, in the order they were taken",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    for column in ("kind", "name", "max |A-B| (lower bound)"):
        table.add_column(column, overflow="fold")
    for value in report.first[:_MAX_VALUES]:
        bound = value["max_abs_diff"]
        table.add_row(value["kind"], value["name"], "" if bound is None else f">= {bound:.3g}")
    if len(report.first) > _MAX_VALUES:
        table.add_row("", f"... and {len(report.first) - _MAX_VALUES} more (see --json)", "")
    return table


def _growth(report: DigestReport) -> Table:
    table = Table(
        title="How the difference grows (lower bounds from the recorded stats)",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    for column in ("step", "values differing", "grads", "params", "optimizer state"):
        table.add_column(column, justify="right")
    rows: list[GrowthRow | None] = [
        r for r in report.growth if r["step"] >= (report.first_step or 0)
    ]
    if len(rows) > 2 * _GROWTH_ENDS:
        rows = rows[:_GROWTH_ENDS] + [None] + rows[-_GROWTH_ENDS:]
    for row in rows:
        if row is None:
            table.add_row("...", "", "", "", "")
            continue
        table.add_row(
            str(row["step"]),
            str(row["differing"]),
            f"{row['max_grad_diff']:.3g}",
            f"{row['max_param_diff']:.3g}",
            f"{row['max_state_diff']:.3g}",
        )
    return table
