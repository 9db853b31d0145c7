"""The HTML report of two digest files (``watch``): first differing step, its values, growth."""

from __future__ import annotations

from bisector.digests import DigestReport
from bisector.render.digests import WHERE  # the console's wording, so both say the same
from bisector.render.html_blocks import (
    code,
    environment_section,
    esc,
    files_section,
    growth_section,
    growth_table,
    headline,
    notes_section,
    num,
    section,
    table,
)
from bisector.words import counted


def digest_sections(report: DigestReport) -> list[str]:
    """The sections of the page, in order ("" for a section with nothing to show)."""
    # Steps before the first differing one are all equal: nothing to plot there.
    rows = (
        []
        if report.reproducible or report.first_step is None
        else [r for r in report.growth if r["step"] >= report.first_step]
    )
    return [
        _digest_headline(report),
        _digest_values(report),
        growth_section(rows, "How the difference grows (lower bounds)"),
        growth_table(rows),
        environment_section(report.environment),
        notes_section(report.notes),
        files_section(report.paths, "Digest files"),
    ]


def _digest_headline(report: DigestReport) -> str:
    stats = [("steps compared", str(report.steps_compared))]
    if report.reproducible:
        text = (
            f"all {counted(report.steps_compared, 'step')} compared are bitwise identical "
            "(batch, loss, gradients, parameters, optimizer state, buffers)."
        )
        return headline(True, "Reproducible:", esc(text), stats)
    values = [v for v in report.first if v["kind"] != "rng"]
    first = values[0] if values else report.first[0]
    text = (
        f"at step {esc(report.first_step)}: {esc(first['kind'])} {code(first['name'])} differs "
        f"first; {esc(WHERE.get(first['kind'], ''))}."
    )
    stats += [("first differing step", str(report.first_step))]
    stats += [("values differ there", str(len(report.first)))]
    return headline(False, "Runs diverge", text, stats)


def _digest_values(report: DigestReport) -> str:
    if report.reproducible or not report.first:
        return ""
    rows = [
        [
            esc(v["kind"]),
            code(v["name"]),
            esc("–" if v["max_abs_diff"] is None else f"≥ {num(v['max_abs_diff'])}"),
        ]
        for v in report.first
    ]
    listing = table(["kind", "name", "max |A−B| (lower bound)"], rows, numeric=(2,))
    title = f"Values that differ at step {report.first_step}, in the order they were taken"
    return section(title, listing)
