"""Render a Report on the console with rich: verdict, first source, other sources, notes."""

from __future__ import annotations

import functools
import textwrap
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bisector.render.wording import (
    KIND_TEXT,
    OUTCOMES,
    describe_check,
    describe_magnitude,
    diverged_label,
    effect_numbers,
    equal_runs_text,
    fix_check_text,
    held_against,
    no_fix_text,
    replay_verdict,
)
from bisector.report import EnvironmentRow, Report, RunInfo, Source
from bisector.words import counted, plural, source_line

# Other sources shown one group per line; the rest are counted.
_MAX_GROUPS = 8


# Widest a panel grows: every panel of a report takes this width, or the console's if narrower.
MAX_WIDTH = 100


def width_of(console: Console) -> int:
    """The one width of every panel printed on ``console``."""
    return min(console.width, MAX_WIDTH)


def trimmed(draw):
    """A renderer ``draw(*args, console)`` whose lines are printed without trailing spaces
    (rich pads table cells and titles; a piped report should not carry them)."""

    @functools.wraps(draw)
    def render(*args):
        *rest, console = args
        with console.capture() as captured:
            draw(*rest, console)
        lines = captured.get().split("\n")
        console.file.write("\n".join(line.rstrip(" ") for line in lines))
        console.file.flush()

    return render


@trimmed
def render(report: Report, console: Console) -> None:
    """Print the report."""
    width = width_of(console)
    console.print(_verdict(report, width))
    if report.levels:
        console.print(levels_table(report.levels))
    if report.first_divergence is not None:
        console.print(_first(report, report.first_divergence, width))
    if report.environment:
        console.print(environment_table(report.environment, width))
    if report.spreaders:
        console.print(_spreaders(report.spreaders, width), crop=False)
    others = report.sources[1:]
    if others:
        console.print(_others(others, report.sources_total - 1, width), crop=False)
    if report.cause is not None:
        console.print(_verdict_panel(report, width))
    if report.notes:
        console.print(bullets("Notes", report.notes, width=width), crop=False)
    console.print(_runs(report.runs))


def bullets(title: str, lines: list[str], marker: str = "-", width: int = MAX_WIDTH) -> Group:
    """A bold title and one item per line, wrapped at spaces only (an op name or a path is
    never split) with a hanging indent."""
    texts: list = [Text(title, style="bold")]
    for line in lines:  # (a word wider than the line overflows it, whole: print with crop=False)
        rows = hanging(line, f"  {marker} ", width)
        texts += [Text(row, no_wrap=True, overflow="ignore") for row in rows]
    return Group(*texts)


def hanging(text: str, first: str, width: int) -> list[str]:
    """``text`` wrapped to ``width`` at spaces, after ``first``; later lines indented as far."""
    return textwrap.wrap(
        text,
        width=max(width, len(first) + 20),
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def _spreaders(spreaders: Sequence[Mapping[str, Any]], width: int) -> Group:
    lines = []
    for s in spreaders:
        ranks = ", ".join(map(str, s["ranks"]))
        lines.append(
            f"{s['op']} ({s['phase']}, step {s['step']}"
            f"{', ' + s['module'] if s['module'] else ''}) carried {s['origin']} to rank "
            f"{ranks}"
        )
    return bullets("Spread across ranks by collectives", lines, width=width)


def environment_table(differences: list[EnvironmentRow], width: int | None = None) -> Panel:
    """What differs between the two processes: itself a possible cause."""
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("", "run A", "run B"):
        table.add_column(column, overflow="fold")
    for row in differences:
        table.add_row(str(row["what"]), str(row["a"]), str(row["b"]))
    return Panel(
        table,
        title="The runs' environments differ (a different GPU, library or flag is a cause too)",
        title_align="left",
        border_style="yellow",
        expand=width is not None,
        width=width,
    )


def levels_table(levels: Sequence[Mapping[str, Any]]) -> Table:
    """How find bisected over steps: what each level ran, found and cost."""
    table = Table(title="Levels", title_justify="left", box=None, padding=(0, 1))
    for column in ("level", "steps recorded", "found", "time"):
        table.add_column(column, overflow="fold")
    for level in levels:
        table.add_row(
            level["level"],
            level["steps"],
            level["found"],
            f"{level['seconds']:.1f} s",
        )
    return table


# What each confirmation outcome means (shared with the HTML report).
def _verdict(report: Report, width: int) -> Text:
    """The headline, wrapped at spaces, its label in colour."""
    if report.reproducible or report.verdict == "inconclusive":
        label, text = equal_runs_text(report)
        style = "bold green" if report.reproducible else "bold yellow"
    else:
        first = report.first_divergence
        kind = KIND_TEXT.get(first.kind, first.kind) if first else "unknown"
        label, style = diverged_label(report), "bold red"
        text = (
            f"{report.differing_events} of {counted(report.compared_events, 'event')} differ; "
            f"the first cause is {kind}."
        )
    lines = hanging(f"{label} {text}", "", width)
    headline = Text("\n".join(lines))
    headline.stylize(style, 0, len(label))
    return headline


def _first(report: Report, source: Source, width: int) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("op", Text(source.op, style="bold"))
    table.add_row("module", source.module or "(no module)")
    table.add_row("when", f"{source.phase}, step {source.step}, rank {source.rank}")
    table.add_row("line", source.location or "(unknown)")
    code = source_line(source.location)
    if code:
        table.add_row("", Text(code, style="dim"))
    if source.library:
        table.add_row("in library", source.library)
    if source.kind == "structure":
        table.add_row("what", Text(source.detail))
    else:
        table.add_row("max |A-B|", describe_magnitude(source))
        table.add_row("why", Text(source.detail))
    if source.checked:
        table.add_row("checked", Text(describe_check(source.checked)))
    if source.kind == "argument" and len(source.args) == 2:
        table.add_row("args A", source.args[0])
        table.add_row("args B", source.args[1])
    if len(source.written) == 2:
        table.add_row("module A", source.written[0])
        table.add_row("module B", source.written[1])
    if source.built:
        table.add_row("built at", source.built)
        built = source_line(source.built)
        if built:
            table.add_row("", Text(built, style="dim"))
    if source.spread is not None:
        table.add_row(
            "spread",
            f"{source.spread} later differing events depend on it "
            f"(of {report.differing_events} that differ)",
        )
    title = f"First divergence: {source.kind}"
    return Panel(table, title=title, title_align="left", border_style="red", width=width)


def _verdict_panel(report: Report, width: int) -> Panel:
    """Cause / Evidence / Fix."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("Cause", report.cause or "")
    evidence = []
    for r in report.replay:
        if r.get("distinct_results") is not None:
            verdict = replay_verdict(r)
            how = " and the same seed" if r.get("seed") is not None else ""
            evidence.append(
                f"replayed {r['op']} {r['runs']} times on identical inputs{how}: "
                f"{counted(r['distinct_results'] or 0, 'distinct result')} ({verdict}); "
                f"repro: {r['repro']}"
            )
        elif r.get("error"):
            evidence.append(f"replay of {r['op']}: {r['error']}")
    for c in report.confirmations:
        text = f"with {c['intervention']}: {OUTCOMES.get(c['outcome'], c['outcome'])}"
        if c.get("not_applied"):
            text += f" ({c['not_applied']})"
        if c.get("effect"):
            text += f" ({effect_numbers(c)}"
            if c.get("first_divergence"):
                text += f"; still first differs at {c['first_divergence']}"
            text += ")"
        if c.get("explanation"):
            text += f". {c['explanation']}"
        if c.get("error"):
            text += f" ({c['error']})"
        if c.get("overrides"):
            text += f"; {held_against(c['overrides'])}"
        evidence.append(text)
    for i, line in enumerate(evidence or ["no replay or intervention applied"]):
        table.add_row("Evidence" if i == 0 else "", line)
    table.add_row("Fix", report.fix or no_fix_text(report))
    if report.fix_check is not None:
        table.add_row("Proven", fix_check_text(report.fix_check))
    for i, row in enumerate(report.growth[:6]):
        kind = "" if row.get("exact") else ">= "
        state = row.get("max_state_diff")
        text = (
            f"step {row['step']}: {counted(row['differing_events'], 'event')} "
            f"{plural(row['differing_events'], 'differs')}; max |A-B| "
            f"grads {kind}{row['max_grad_diff']:.3g}, params {kind}{row['max_param_diff']:.3g}"
        )
        if state is not None:
            text += f", optimizer state {state:.3g}"
        table.add_row("Growth" if i == 0 else "", text)
    return Panel(table, title="Verdict", title_align="left", border_style="green", width=width)


def _others(sources: list[Source], total: int, width: int) -> Group:
    """One item per group of alike sources (kind, op, module, phase, line), wrapped at spaces
    so that op names and paths stay whole."""
    groups: OrderedDict[tuple, list[Source]] = OrderedDict()
    for s in sources:
        groups.setdefault((s.kind, s.op, s.module, s.phase, s.location), []).append(s)
    ranked = any(s.rank for s in sources)  # a multi-process job: say which rank
    lines = []
    for (kind, op, module, phase, location), members in list(groups.items())[:_MAX_GROUPS]:
        count = f" x{len(members)}" if len(members) > 1 else ""
        steps = sorted({m.step for m in members})
        text = f"{kind}{count}: {op} in {module or '(no module)'}, {phase}, "
        text += f"{plural(len(steps), 'step')} {_listed(set(steps))}"
        if ranked:
            ranks = sorted({m.rank for m in members})
            text += f", {plural(len(ranks), 'rank')} {_listed(set(ranks))}"
        text += f", at {location or '?'}; max |A-B| {describe_magnitude(members[0])}"
        lines.append(text)
    rest = len(groups) - _MAX_GROUPS
    if rest > 0:
        lines.append(f"... and {counted(rest, 'more group')} (see --json)")
    return bullets(f"Other sources ({total})", lines, width=width)


def _listed(values: set[int]) -> str:
    ordered = sorted(values)
    return ",".join(str(v) for v in ordered[:6]) + ("..." if len(ordered) > 6 else "")


def _runs(runs: list[RunInfo]) -> Group:
    """Each run in a line, its file on the next: a path is never split by the wrap."""
    lines: list = [Text("Runs", style="bold")]
    for run in runs:
        seconds = f", {run.seconds:.1f} s" if run.seconds is not None else ""
        steps = counted(run.steps, "optimizer step")
        what = (
            f"step digests of {steps}"  # values per step, no events
            if str(run.trace).endswith(".digests")
            else f"{counted(run.events, 'event')}, {steps}"
        )
        lines.append(Text(f"  {run.name}: {what}, {run.status}{seconds}"))
        lines.append(Text(f"     {run.trace}", overflow="ignore", no_wrap=True))
    return Group(*lines)
