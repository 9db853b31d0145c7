"""Building blocks of the HTML report: the page, escaping, tables, sections, shared sections."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from bisector.render.svg import growth_plot
from bisector.report import EnvironmentRow

# Rows a table shows before the rest are counted (every one is in the JSON report).
MAX_ROWS = 200


def document(sections: list[str]) -> str:
    """The whole page around the sections (already HTML): head, inline style, footer."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>bisector report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(sections)
        + "\n<footer>bisector report: one self-contained file (no script, no network); "
        "the JSON report holds every value.</footer>\n</main>\n</body>\n</html>\n"
    )


def esc(value: object) -> str:
    """Escape any text from a report for HTML (op names, paths and code can hold < and &)."""
    return escape(str(value))


def code(value: object, wrap: bool = False) -> str:
    """Escaped text in monospace (ops, module paths, file paths).

    ``wrap``: may break anywhere, for long values in a table cell (paths, environment values),
    so that they do not widen the table past the page.
    """
    return f'<code class="wrap">{esc(value)}</code>' if wrap else f"<code>{esc(value)}</code>"


def prose(value: object) -> str:
    """Escaped text with `backticked` spans shown as code (the fix is written that way)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(value))


def num(value: float | None) -> str:
    """A difference in three significant digits; None, NaN and infinity in words."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞"
    return f"{value:.3g}"


def section(title: str, body: str, extra_class: str = "") -> str:
    """A card with a title around a body (already HTML)."""
    return f'<section class="card {extra_class}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def facts(rows: list[tuple[str, str]]) -> str:
    """A two-column list of label and (already HTML) value."""
    items = "".join(f"<dt>{esc(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl class="facts">{items}</dl>'


def table(
    headers: list[str],
    rows: list[list[str]],
    numeric: tuple[int, ...] = (),
    compact: bool = False,
) -> str:
    """A table of (already HTML) cells; ``numeric`` columns align right.

    ``compact``: as wide as its content rather than the page (short numeric tables).
    """

    def cell(tag: str, index: int, content: str) -> str:
        align = ' class="num"' if index in numeric else ""
        return f"<{tag}{align}>{content}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>"
        for row in rows[:MAX_ROWS]
    )
    more = ""
    if len(rows) > MAX_ROWS:
        more = f'<p class="muted">… and {len(rows) - MAX_ROWS} more rows (see the JSON report)</p>'
    opening = '<table class="compact">' if compact else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def headline(good: bool, title: str, text: str, stats: list[tuple[str, str]]) -> str:
    """The banner (green when ``good``, else red) and a row of (label, value) tiles.

    ``text`` is already HTML; ``title`` and the tiles are escaped here.
    """
    tiles = "".join(
        f'<div class="stat"><b>{esc(value)}</b><span>{esc(label)}</span></div>'
        for label, value in stats
    )
    state = "good" if good else "bad"
    return (
        f'<header>\n<p class="brand">bisector report</p>\n<div class="banner {state}">'
        f'<span class="verdict">{esc(title)}</span> {text}</div>\n'
        f'<div class="stats">{tiles}</div>\n</header>'
    )


def bullets(items: list[str]) -> str:
    """A bulleted list of (already HTML) items."""
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def growth_section(growth: Sequence[Mapping[str, Any]], title: str) -> str:
    """The plot of the largest difference per step ("" without growth rows)."""
    if not growth:
        return ""
    if all(row.get("exact") for row in growth):
        how = "exact, from snapshots of both runs"
    else:
        how = "lower bounds from the recorded stats of each output"
    caption = f'<p class="caption">Largest |A−B| after each step: {how}.</p>'
    return section(title, growth_plot(growth) + caption, "plot")


def growth_table(growth: Sequence[Mapping[str, Any]]) -> str:
    """The growth rows as a table ("" without rows)."""
    if not growth:
        return ""
    rows = []
    for row in growth:
        # A Report counts differing events, a DigestReport differing values.
        differing = row.get("differing_events", row.get("differing"))
        values = [row.get(k) for k in ("max_grad_diff", "max_param_diff", "max_state_diff")]
        how = "exact" if row.get("exact") else "lower bound"
        rows.append([esc(row["step"]), esc(differing), *(esc(num(v)) for v in values), esc(how)])
    headers = ["step", "differing", "grads", "params", "optimizer state", "figures"]
    return section("Growth per step", table(headers, rows, (0, 1, 2, 3, 4), compact=True))


def environment_section(differences: list[EnvironmentRow]) -> str:
    """What differs between the two processes ("" when nothing does)."""
    if not differences:
        return ""
    rows = [[esc(d["what"]), code(d["a"], wrap=True), code(d["b"], wrap=True)] for d in differences]
    lead = '<p class="caption">A different GPU, library or flag is a cause too.</p>'
    return section("The runs' environments differ", lead + table(["", "run A", "run B"], rows))


def notes_section(notes: list[str]) -> str:
    """Other findings worth reading ("" without notes)."""
    return section("Notes", bullets([esc(n) for n in notes])) if notes else ""


def files_section(paths: list[str], title: str) -> str:
    """The two files compared, A then B ("" unless there are two)."""
    if len(paths) != 2:
        return ""
    return section(title, facts([("A", code(paths[0])), ("B", code(paths[1]))]))


_CSS = """
:root { --ink: #1f2733; --muted: #667085; --line: #e3e6ea; --soft: #f6f7f9;
  --red: #b42318; --red-bg: #fdf1f0; --green: #067647; --green-bg: #ecf8f1;
  --amber: #b25e09; --amber-bg: #fcf3e6; --blue: #0b5cab; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: var(--ink); font: 14px/1.5 system-ui, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 32px; }
code, pre, .op { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; font-size: 12.5px; }
code { overflow-wrap: break-word; }
code.wrap { overflow-wrap: anywhere; }
.brand { margin: 0 0 8px; color: var(--muted); font-size: 12px; font-weight: 600;
  letter-spacing: .08em; text-transform: uppercase; }
.banner { padding: 14px 18px; border-radius: 10px; border-left: 6px solid; font-size: 18px; }
.banner.bad { background: var(--red-bg); border-color: var(--red); }
.banner.good { background: var(--green-bg); border-color: var(--green); }
.banner .verdict { font-weight: 700; }
.banner.bad .verdict { color: var(--red); }
.banner.good .verdict { color: var(--green); }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0 4px; }
.stat { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 14px;
  min-width: 130px; }
.stat b { display: block; font-size: 18px; font-variant-numeric: tabular-nums; }
.stat span { color: var(--muted); font-size: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin: 14px 0; }
.card h2 { margin: 0 0 12px; font-size: 16px; }
.card.first { border-top: 4px solid var(--red); }
.card.verdict { border-top: 4px solid var(--green); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 6px 20px; margin: 0; }
dl.facts dt { color: var(--muted); font-weight: 600; }
dl.facts dd { margin: 0; min-width: 0; }
dl.facts dd ul { margin: 0 0 8px; padding-left: 18px; }
.card > ul { margin: 0; padding-left: 20px; }
.card > p { margin: 0 0 6px; }
.op { font-weight: 700; font-size: 14px; }
pre.source-line { margin: 6px 0 0; padding: 6px 10px; background: var(--soft);
  border-left: 3px solid var(--red); border-radius: 4px; white-space: pre-wrap; }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: 12.5px;
  border-bottom: 1px solid var(--line); }
th, td { padding: 5px 12px 5px 0; vertical-align: top; }
tbody tr + tr td { border-top: 1px solid #f0f1f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
table.compact { width: auto; }
table.compact th, table.compact td { padding-right: 32px; }
.pill { display: inline-block; padding: 0 9px; border-radius: 999px; font-size: 12px;
  font-weight: 600; white-space: nowrap; background: var(--soft); color: var(--muted); }
.pill.fixes { background: var(--green-bg); color: var(--green); }
.pill.amplifier { background: var(--amber-bg); color: var(--amber); }
.pill.fails { background: var(--red-bg); color: var(--red); }
.pill.did-not-apply { background: var(--red-bg); color: var(--red); }
.muted, .caption { color: var(--muted); }
.caption { font-size: 12.5px; margin: 6px 0 0; }
.error { color: var(--red); }
svg.plot { display: block; max-width: 100%; height: auto; }
ul.legend { display: flex; flex-wrap: wrap; gap: 4px 22px; list-style: none; margin: 8px 0 0;
  padding: 0; color: var(--muted); font-size: 12.5px; }
ul.legend li { white-space: nowrap; }
.key { display: inline-block; width: 10px; height: 10px; margin-right: 6px; vertical-align: -1px; }
.key.dot { background: #0072b2; border-radius: 50%; }
.key.first { background: #d55e00; border-radius: 50%; }
.key.zero { border: 1.5px solid #8a8a8a; transform: rotate(45deg) scale(.8); }
.key.step { width: 0; height: 12px; border-left: 2px dashed #b9b9b9; }
.on-path-key { color: var(--red); font-weight: 700; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding: 0; }
ul.tree ul { margin-left: 9px; padding-left: 12px; border-left: 1px solid var(--line); }
ul.tree summary { list-style: none; cursor: pointer; }
ul.tree summary::-webkit-details-marker { display: none; }
.node { display: flex; align-items: center; gap: 12px; padding: 2px 6px; border-radius: 5px; }
.node .twisty { width: 12px; color: var(--muted); font-size: 11px; flex: none; }
details > summary .twisty::before { content: "▸"; }
details[open] > summary .twisty::before { content: "▾"; }
.node .name { flex: 1; font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: 12.5px; color: #475467; overflow-wrap: anywhere; }
.node.virtual .name { font-family: system-ui, sans-serif; font-style: italic; }
.node.differs .name { color: var(--amber); }
.node.path { background: var(--red-bg); }
.node.path .name { color: var(--red); font-weight: 700; }
.node .counts { width: 150px; text-align: right; font-variant-numeric: tabular-nums;
  color: var(--muted); font-size: 12.5px; flex: none; }
.node .counts b { color: var(--ink); }
.bar { width: 150px; height: 8px; background: #eceef1; border-radius: 4px; overflow: hidden;
  flex: none; }
.bar span { display: block; height: 100%; background: #e69f00; }
.node.path .bar span { background: var(--red); }
.badge { font-family: system-ui, sans-serif; font-size: 11px; font-weight: 600; color: #fff;
  background: var(--red); border-radius: 999px; padding: 0 7px; margin-left: 8px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
@media print {
  body { background: #fff; font-size: 12px; }
  main { max-width: none; padding: 0; }
  .card { break-inside: avoid; border-color: #ccc; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""
