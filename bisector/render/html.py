"""Render a report as one self-contained HTML page: inline CSS and SVG, no script, no network."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bisector.digests import DigestReport
from bisector.render import is_checkpoint_report
from bisector.render.html_blocks import (
    bullets,
    code,
    document,
    environment_section,
    esc,
    facts,
    growth_section,
    growth_table,
    headline,
    notes_section,
    prose,
    section,
    table,
)
from bisector.render.html_digest import digest_sections
from bisector.render.html_tree import module_tree
from bisector.render.svg import curve_plot, pairs_plot

# The report's wording, shared with the console, so that both outputs say the same thing.
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
from bisector.report import Report, RunInfo, Source
from bisector.words import counted, source_line

if TYPE_CHECKING:
    from bisector.checkpoint import CheckpointReport


def render_html(report: Report | DigestReport | CheckpointReport) -> str:
    """Render a report as one HTML document that needs nothing else to display.

    Args:
        report: what ``find``/``diff`` (Report), ``watch`` digests (DigestReport) or the
            checkpoint comparison (CheckpointReport) produced.

    Returns:
        The document: inline CSS and SVG plots, no JavaScript, no external asset.

    Raises:
        TypeError: ``report`` is none of the three kinds.

    Example:
        >>> Path("report.html").write_text(render_html(report), encoding="utf-8")
    """
    if isinstance(report, Report):
        sections = _report_sections(report)
    elif isinstance(report, DigestReport):
        sections = digest_sections(report)
    elif is_checkpoint_report(report):
        from bisector.render.html_checkpoint import checkpoint_sections

        sections = checkpoint_sections(report)
    else:
        raise TypeError(f"cannot render a {type(report).__name__} as HTML")
    return document([s for s in sections if s])


def _report_sections(report: Report) -> list[str]:
    first = report.first_divergence
    return [
        _report_headline(report),
        _first_card(report, first) if first is not None else "",
        _verdict(report) if report.cause is not None else "",
        _curve_section(report),
        growth_section(report.growth, "How the difference grows, step by step"),
        _modules_section(report),
        _spreaders(report.spreaders),
        _other_sources(report.sources[1:], report.sources_total - 1),
        _levels(report.levels),
        growth_table(report.growth),
        environment_section(report.environment),
        notes_section(report.notes),
        _runs(report.runs),
    ]


def _report_headline(report: Report) -> str:
    compared = report.compared_events
    if report.reproducible or report.verdict == "inconclusive":
        label, text = equal_runs_text(report)
        return headline(report.reproducible, label, esc(text), [("events compared", str(compared))])
    first = report.first_divergence
    kind = KIND_TEXT.get(first.kind, first.kind) if first else "unknown"
    share = f"{100 * report.differing_events / compared:.0f}%" if compared else "–"
    stats = [
        ("events compared", str(compared)),
        ("events differ", f"{report.differing_events} ({share})"),
        ("sources found", str(max(report.sources_total, len(report.sources)))),
    ]
    if first is not None:
        stats.append(("first source", f"step {first.step}, event {first.event}"))
    text = (
        f"{report.differing_events} of {counted(compared, 'event')} differ; "
        f"the first cause is <strong>{esc(kind)}</strong>."
    )
    return headline(False, diverged_label(report), text, stats)


def _first_card(report: Report, source: Source) -> str:
    line = code(source.location) if source.location else "(unknown)"
    user_code = source_line(source.location) if source.location else ""
    if user_code:
        line += f'<pre class="source-line">{esc(user_code)}</pre>'
    rows = [
        ("op", f'<code class="op">{esc(source.op)}</code>'),
        ("module", code(source.module) if source.module else "(no module)"),
        ("when", esc(f"{source.phase}, step {source.step}, rank {source.rank}")),
        ("line", line),
    ]
    if source.library:
        rows.append(("in library", code(source.library)))
    if source.kind == "structure":
        rows.append(("what", esc(source.detail)))
    else:
        rows.append(("max |A−B|", esc(describe_magnitude(source))))
        rows.append(("why", esc(source.detail)))
    if source.checked:
        rows.append(("checked", esc(describe_check(source.checked))))
    if source.kind == "argument" and len(source.args) == 2:
        rows += [("args A", code(source.args[0])), ("args B", code(source.args[1]))]
    if len(source.written) == 2:
        rows += [("module A", code(source.written[0])), ("module B", code(source.written[1]))]
    if source.built:
        rows.append(("built at", code(source.built)))
    if source.spread is not None:
        spread = (
            f"{source.spread} later differing events depend on it "
            f"(of {report.differing_events} that differ)"
        )
        rows.append(("spread", esc(spread)))
    return section(f"First divergence: {source.kind}", facts(rows), "first")


def _verdict(report: Report) -> str:
    evidence = [_replay_line(r) for r in report.replay]
    evidence = [line for line in evidence if line]
    confirmations = _confirmations(report.confirmations)
    if not evidence and not confirmations:
        evidence = ["no replay or intervention applied"]
    rows = [
        ("Cause", prose(report.cause)),
        (
            "Evidence",
            (bullets(evidence) if evidence else "") + confirmations + _pairs_figure(report),
        ),
        ("Fix", prose(report.fix or no_fix_text(report))),
    ]
    check = report.fix_check
    if check is not None:
        diff = f"<pre>{esc(check['diff'])}</pre>" if check.get("diff") else ""
        rows.append(("Proven", prose(fix_check_text(check)) + diff))
    return section("Verdict", facts(rows), "verdict")


def _pairs_figure(report: Report) -> str:
    """The plain pairs' difference per step against each rerun's with a change ("" when no
    rerun was made, or none measured parameters)."""
    if not report.confirmations:
        return ""
    pairs = [("plain pair", report.growth)]
    if report.growth_again:
        pairs.append(("plain pair again", report.growth_again))
    pairs += [(f"with {c['intervention']}", c.get("growth") or []) for c in report.confirmations]
    plot = pairs_plot(pairs)
    if not plot:
        return ""
    caption = (
        '<p class="caption">Largest parameter |A−B| after each step, per pair of runs: the two '
        "plain pairs show how much the difference varies by itself; a change counts as an "
        "amplifier only when it moves the difference beyond that. Identical runs sit in the "
        "zero lane.</p>"
    )
    return plot + caption


def _replay_line(replay: Mapping[str, Any]) -> str:
    """One replay as the console words it: how many distinct results on identical inputs."""
    if replay.get("distinct_results") is None:
        if not replay.get("error"):
            return ""
        return f"replay of {code(replay['op'])}: {esc(replay['error'])}"
    verdict = replay_verdict(replay)
    how = " and the same seed" if replay.get("seed") is not None else ""
    return (
        f"replayed {code(replay['op'])} {esc(replay['runs'])} times on identical inputs{how}: "
        f"<strong>{esc(counted(replay['distinct_results'], 'distinct result'))}</strong> "
        f"({esc(verdict)}); "
        f"repro: {code(replay['repro'])}"
    )


def _confirmations(confirmations: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in confirmations:
        outcome = str(c["outcome"])
        what = esc(OUTCOMES.get(outcome, outcome))
        if c.get("effect"):
            what += esc(f" ({effect_numbers(c)})")
        if c.get("explanation"):
            what += esc(f". {c['explanation']}")
        if c.get("first_divergence") and outcome != "fixes":
            what += f"; still first differs at {code(c['first_divergence'])}"
        if c.get("not_applied"):
            what += esc(f" ({c['not_applied']})")
        if c.get("overrides"):
            what += esc(f"; {held_against(c['overrides'])}")
        if c.get("error"):
            what += f'<br><span class="error">{esc(c["error"])}</span>'
        name = code(c["intervention"])
        if c.get("summary"):
            name += f'<br><span class="muted">{esc(c["summary"])}</span>'
        badge = f'<span class="pill {esc(outcome)}">{esc(outcome)}</span>'
        rows.append([name, badge, what])
    if not rows:
        return ""
    return table(["rerun with", "outcome", "what it showed"], rows)


def _curve_section(report: Report) -> str:
    if not report.curve:
        return ""
    first = report.first_divergence
    plot = curve_plot(
        report.curve,
        report.compared_events,
        first.event if first else None,
        first.op if first else "",
    )
    keys = [("dot", "a differing event (the largest lower bound of its outputs)")]
    if first is not None:
        keys.append(("first", "the first source"))
    if any(not 0 < float(value) < math.inf for _, _, value in report.curve):
        keys.append(
            ("zero", "bound 0 or not finite: the bits differ, the stats cannot say how much")
        )
    if len({step for _, step, _ in report.curve}) > 1:
        keys.append(("step", "the first differing event of a new step"))
    legend = "".join(f'<li><span class="key {k}"></span>{esc(text)}</li>' for k, text in keys)
    caption = f'<ul class="legend">{legend}</ul>'
    if len(report.curve) < report.differing_events:
        caption += (
            f'<p class="caption">{len(report.curve)} of {report.differing_events} differing '
            "events shown: the largest of each stretch of events.</p>"
        )
    return section("The difference over the run", plot + caption, "plot")


def _modules_section(report: Report) -> str:
    if not report.modules:
        return ""
    first = report.first_divergence
    tree = module_tree(report.modules, first.module if first else None)
    legend = (
        '<p class="caption">Events recorded in each module and its submodules, and how many '
        "of them differ (the bar: the share that differs). "
        + ('<span class="on-path-key">Red</span>: the path to the first source. ' if first else "")
        + "</p>"
    )
    return section("Where the differences are: module tree", legend + tree, "modules")


def _spreaders(spreaders: Sequence[Mapping[str, Any]]) -> str:
    if not spreaders:
        return ""
    rows = [
        [
            code(s["op"]),
            code(s.get("module") or "-"),
            esc(f"{s.get('phase', '')}, step {s.get('step', '')}"),
            esc(", ".join(map(str, s.get("from_ranks", [])))),
            esc(", ".join(map(str, s.get("ranks", [])))),
            code(s.get("origin", "")),
            code(s.get("location", ""), wrap=True),
        ]
        for s in spreaders
    ]
    headers = ["collective", "module", "when", "from ranks", "to ranks", "carried", "line"]
    return section("Spread across ranks by collectives", table(headers, rows))


def _other_sources(sources: list[Source], total: int) -> str:
    """Other sources, one row per (kind, op, module, phase, line) like the console."""
    if not sources:
        return ""
    groups: OrderedDict[tuple, list[Source]] = OrderedDict()
    for s in sources:
        groups.setdefault((s.kind, s.op, s.module, s.phase, s.location), []).append(s)
    ranked = any(s.rank for s in sources)  # a multi-process job: say which rank
    rows = []
    for (kind, op, module, phase, location), members in groups.items():
        count = f" ×{len(members)}" if len(members) > 1 else ""
        row = [esc(kind + count), code(op), code(module or "-"), esc(phase)]
        row.append(esc(_listed({m.step for m in members})))
        if ranked:
            row.append(esc(_listed({m.rank for m in members})))
        row += [code(location, wrap=True), esc(describe_magnitude(members[0]))]
        rows.append(row)
    headers = ["kind", "op", "module", "phase", "steps", *(["ranks"] if ranked else [])]
    headers += ["line", "max |A−B|"]
    return section(f"Other sources ({max(total, len(sources))})", table(headers, rows))


def _listed(values: set[int]) -> str:
    ordered = sorted(values)
    return ", ".join(str(v) for v in ordered[:6]) + (" …" if len(ordered) > 6 else "")


def _levels(levels: Sequence[Mapping[str, Any]]) -> str:
    if not levels:
        return ""
    rows = [
        [esc(lv["level"]), esc(lv["steps"]), esc(lv["found"]), esc(f"{lv['seconds']:.1f} s")]
        for lv in levels
    ]
    body = table(["level", "steps recorded", "found", "time"], rows, (3,), compact=True)
    return section("How find got here", body)


def _runs(runs: list[RunInfo]) -> str:
    if not runs:
        return ""
    rows = []
    for run in runs:
        status = run.status + (f" (exit {run.exit_code})" if run.exit_code else "")
        seconds = f"{run.seconds:.1f} s" if run.seconds is not None else "–"
        cells = [esc(run.name), esc(run.events), esc(run.steps), esc(status), esc(seconds)]
        rows.append([*cells, code(run.trace, wrap=True)])
    headers = ["run", "events", "steps", "status", "time", "trace"]
    return section("Runs", table(headers, rows, (1, 2, 4), compact=True))
