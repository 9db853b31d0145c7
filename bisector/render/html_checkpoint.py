"""The HTML report of two checkpoints: differing tensors and groups, names only one side has."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bisector.checkpoint import CheckpointReport

# The console's helpers, so that both outputs count and group the same way.
from bisector.render.checkpoint import identical_roots, share, summary
from bisector.render.html_blocks import (
    MAX_ROWS,
    bullets,
    code,
    esc,
    files_section,
    headline,
    num,
    section,
    table,
)


def checkpoint_sections(report: CheckpointReport) -> list[str]:
    """The sections of the page, in order ("" for a section with nothing to show)."""
    return [
        _checkpoint_headline(report),
        _tensors(report),
        _tensor_groups(report.groups),
        _names("Only in A", report.missing),
        _names("Only in B", report.extra),
        _pairs("Another dtype, shape or kind", report.mismatched, shown=str),
        _pairs("Plain values that differ", report.values, shown=repr),
        _identical(report),
        files_section(report.paths, "Checkpoints"),
    ]


def _checkpoint_headline(report: CheckpointReport) -> str:
    total = len(report.tensors)
    differing = sum(not t.equal for t in report.tensors)
    stats = [("tensors compared", str(total)), ("tensors differ", str(differing))]
    if report.reproducible:
        text = esc(f"{total} tensors, every value equal.")
        return headline(True, "Checkpoints are bitwise identical:", text, stats)
    text = summary(report, differing) + "."
    return headline(False, "Checkpoints differ:", esc(text), stats)


def _tensors(report: CheckpointReport) -> str:
    rows = []
    for t in (t for t in report.tensors if not t.equal):
        size, ulp = num(t.max_abs_diff), "–" if t.max_ulp_diff is None else str(t.max_ulp_diff)
        if t.nan_differing == t.differing:  # the maxima cover no element at all
            size, ulp = "NaN", "–"
        elif t.nan_differing:
            size += f" +{t.nan_differing} NaN"
        shape = ", ".join(str(n) for n in t.shape)
        rows.append([code(t.name), code(f"{t.dtype}[{shape}]"), esc(share(t)), esc(size), esc(ulp)])
    if not rows:
        return ""
    headers = ["tensor", "dtype[shape]", "elements differing", "max |A−B|", "max ULP"]
    return section("Tensors that differ", table(headers, rows, numeric=(2, 3, 4)))


def _tensor_groups(groups: list[dict[str, Any]]) -> str:
    differing = [g for g in groups if g["differing"]]
    if not differing:
        return ""
    rows = [
        [
            code(g["prefix"] or "(top level)"),
            esc(f"{g['differing']} of {g['tensors']}"),
            esc(num(g["max_abs_diff"])),
            esc(g.get("nan_differing", 0)),
        ]
        for g in differing
    ]
    listing = table(["group", "tensors differing", "max |A−B|", "NaN elements"], rows, (1, 2, 3))
    return section(f"Differing groups ({len(differing)})", listing)


def _names(title: str, names: list[str]) -> str:
    if not names:
        return ""
    return section(f"{title} ({len(names)})", bullets([code(n) for n in names[:MAX_ROWS]]))


def _pairs(title: str, pairs: list[dict[str, Any]], shown: Callable[[object], str]) -> str:
    """``{"name", "a", "b"}`` rows; ``shown`` writes a side (repr: plain values keep quotes)."""
    if not pairs:
        return ""
    rows = [
        [code(p["name"]), code(shown(p["a"]), wrap=True), code(shown(p["b"]), wrap=True)]
        for p in pairs
    ]
    return section(f"{title} ({len(pairs)})", table(["name", "A", "B"], rows))


def _identical(report: CheckpointReport) -> str:
    equal = [t.name for t in report.tensors if t.equal]
    if not equal or report.reproducible:
        return ""
    # Anything that differs in any way keeps its prefixes from being called identical.
    differing = [t.name for t in report.tensors if not t.equal] + report.missing + report.extra
    differing += [m["name"] for m in report.mismatched] + [v["name"] for v in report.values]
    roots = identical_roots(equal, differing)
    text = f"<p>{len(equal)} of {len(report.tensors)} tensors are bitwise identical.</p>"
    if roots:
        text += "<p>Fully identical: " + ", ".join(code(r) for r in roots[:MAX_ROWS]) + "</p>"
    return section("Identical", text)
