"""Render a CheckpointReport on the console with rich: headline, differing tensors, the rest."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bisector.checkpoint import CheckpointReport
from bisector.render.console import trimmed
from bisector.tensor_diff import TensorDiff

# Rows each section shows; the rest are counted (every one is in --json).
_MAX_TENSORS = 30
_MAX_GROUPS = 10
_MAX_NAMES = 12
_MAX_PREFIXES = 6


@trimmed
def render(report: CheckpointReport, console: Console) -> None:
    """Print the report."""
    differing = [t for t in report.tensors if not t.equal]
    console.print(_headline(report, differing))
    if differing:
        console.print(_tensor_table(differing))
        console.print(_groups(report.groups))
    identical = _identical(report)
    if identical is not None:
        console.print(identical)
    _names(console, f"Only in A ({len(report.missing)})", report.missing)
    _names(console, f"Only in B ({len(report.extra)})", report.extra)
    if report.mismatched:
        console.print(Text(f"Another dtype, shape or kind ({len(report.mismatched)})", "bold"))
        for m in report.mismatched[:_MAX_NAMES]:
            console.print(Text(f"  {m['name']}: {m['a']} in A, {m['b']} in B"))
        _more(console, len(report.mismatched) - _MAX_NAMES)
    if report.values:
        console.print(Text(f"Plain values that differ ({len(report.values)})", "bold"))
        for v in report.values[:_MAX_NAMES]:
            console.print(Text(f"  {v['name']}: {v['a']!r} in A, {v['b']!r} in B"))
        _more(console, len(report.values) - _MAX_NAMES)
    if len(report.paths) == 2:
        console.print(Text(f"A: {report.paths[0]}\nB: {report.paths[1]}", style="dim"))


def _headline(report: CheckpointReport, differing: list[TensorDiff]) -> Text:
    total = len(report.tensors)
    if report.reproducible:
        return Text.assemble(
            ("Checkpoints are bitwise identical ", "bold green"),
            f"({total} tensors, every value equal)",
        )
    return Text.assemble(("Checkpoints differ: ", "bold red"), summary(report, len(differing)))


def summary(report: CheckpointReport, differing: int) -> str:
    """ "3 of 23 tensors differ; also 1 only in A, ..." (shared with the HTML report)."""
    total = len(report.tensors)
    others = [
        f"{count} {what}"
        for count, what in (
            (len(report.missing), "only in A"),
            (len(report.extra), "only in B"),
            (len(report.mismatched), "with another dtype, shape or kind"),
            (len(report.values), "differing plain value" + "s" * (len(report.values) > 1)),
        )
        if count
    ]
    text = f"{differing} of {total} tensors differ"
    if others:
        text += "; also " + ", ".join(others)
    return text


def _tensor_table(differing: list[TensorDiff]) -> Group:
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("tensor", overflow="fold")
    table.add_column(Text("dtype[shape]"), overflow="fold")  # Text: "[shape]" is not markup
    table.add_column("elements differing", justify="right")
    table.add_column("max |A-B|", justify="right")
    table.add_column("max ULP", justify="right")
    for t in differing[:_MAX_TENSORS]:
        size, ulp = f"{t.max_abs_diff:.3g}", str(t.max_ulp_diff)
        if t.nan_differing == t.differing:  # the maxima cover no element at all
            size, ulp = "NaN", "-"
        elif t.nan_differing:
            size += f" +{t.nan_differing} NaN"
        if t.max_ulp_diff is None:
            ulp = "-"
        shape = ", ".join(str(n) for n in t.shape)
        cells = (t.name, f"{t.dtype}[{shape}]", share(t), size, ulp)
        table.add_row(*(Text(cell) for cell in cells))
    parts: list = [table]
    rest = len(differing) - _MAX_TENSORS
    if rest > 0:
        parts.append(Text(f"  ... and {rest} more (see --json)"))
    return Group(*parts)


def share(t: TensorDiff) -> str:
    total = math.prod(t.shape)
    percent = 100.0 * t.differing / total if total else 0.0
    shown = "<0.01" if percent < 0.01 else f"{percent:.3g}"
    return f"{t.differing} ({shown}%)"


def _groups(groups: list[dict]) -> Group:
    differing = [g for g in groups if g["differing"]]
    lines = [Text(f"Differing groups ({len(differing)})", style="bold")]
    for g in differing[:_MAX_GROUPS]:
        count = g.get("nan_differing", 0)
        nan = f" (NaN in {count} element{'s' * (count > 1)})" if count else ""
        lines.append(
            Text(
                f"  {g['prefix'] or '(top level)'}: {g['differing']} of {g['tensors']} tensors, "
                f"max |A-B| {g['max_abs_diff']:.3g}{nan}"
            )
        )
    rest = len(differing) - _MAX_GROUPS
    if rest > 0:
        lines.append(Text(f"  ... and {rest} more groups (see --json)"))
    return Group(*lines)


def _identical(report: CheckpointReport) -> Text | None:
    """'Identical: 18 tensors; fully identical: model.1, optimizer.state (+2 more)'."""
    equal = [t for t in report.tensors if t.equal]
    if not equal or report.reproducible:
        return None
    # Anything that differs in any way keeps its prefixes from being called identical.
    differing = [t.name for t in report.tensors if not t.equal] + report.missing + report.extra
    differing += [m["name"] for m in report.mismatched] + [v["name"] for v in report.values]
    roots = identical_roots([t.name for t in equal], differing)
    text = Text.assemble(("Identical: ", "bold"), f"{len(equal)} of {len(report.tensors)} tensors")
    if roots:
        shown = ", ".join(roots[:_MAX_PREFIXES])
        more = f" (+{len(roots) - _MAX_PREFIXES} more)" if len(roots) > _MAX_PREFIXES else ""
        text.append(f"; fully identical: {shown}{more}")
    return text


def identical_roots(equal: list[str], differing: list[str]) -> list[str]:
    """The shortest prefixes under which every tensor is identical, e.g. ["model.1", "optimizer"].

    Each equal tensor's prefix is widened one component at a time while no differing tensor
    lies under the wider prefix; the widest prefixes found are listed once each.
    """
    blocked: set[str] = set()
    for name in differing:
        parts = name.split(".")
        blocked.update(".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    roots: list[str] = []
    for name in equal:
        parts = name.split(".")[:-1]
        best = None
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            if prefix in blocked:
                break
            best = prefix
        if best is not None and best not in roots:
            roots.append(best)
    return roots


def _names(console: Console, title: str, names: list[str]) -> None:
    if not names:
        return
    console.print(Text(title, style="bold"))
    for name in names[:_MAX_NAMES]:
        console.print(Text(f"  {name}"))
    _more(console, len(names) - _MAX_NAMES)


def _more(console: Console, rest: int) -> None:
    if rest > 0:
        console.print(Text(f"  ... and {rest} more (see --json)"))
