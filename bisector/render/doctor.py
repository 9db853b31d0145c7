"""Render ``bisector doctor``: environment, what in it can make runs differ, the script's known
nondeterministic ops."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bisector.render.console import bullets, hanging, trimmed, width_of
from bisector.words import counted


@trimmed
def render(env: dict, advice: list[str], survey, hits: list[dict], console: Console) -> None:
    """Print the doctor's findings."""
    versions, settings = env["versions"], env["settings"]
    table = Table(title="Environment", title_justify="left", box=None, padding=(0, 1))
    table.add_column("", style="bold cyan")
    table.add_column("")
    for key in ("torch", "cuda", "cudnn", "python", "numpy", "cpu", "platform"):
        table.add_row(key, str(versions.get(key)))
    table.add_row("gpus", ", ".join(versions.get("gpus") or []) or "none")
    for key, value in settings.items():
        if key != "env":
            table.add_row(key, str(value))
    for key, value in (settings.get("env") or {}).items():
        table.add_row(f"${key}", str(value))
    console.print(table)
    width = width_of(console)
    if advice:
        console.print(
            bullets("What here can make two runs differ", advice, width=width), crop=False
        )
    if survey is None:
        console.print(
            Text(
                "Give a script (`bisector doctor train.py`) to see which known "
                "nondeterministic ops it runs.",
                style="dim",
            )
        )
        return
    changed = {k: v for k, v in survey.settings.items() if k != "env" and settings.get(k) != v}
    if changed:
        lines = [f"{key}: {settings.get(key)} -> {value}" for key, value in changed.items()]
        console.print(
            bullets("The script changes these settings itself", lines, width=width), crop=False
        )
    console.print(
        Text(
            f"Surveyed {counted(len(survey.ops), 'distinct op')} over "
            f"{counted(survey.steps, 'optimizer step')}."
        )
    )
    random = [h for h in hits if h["random"]]
    hits = [h for h in hits if not h["random"]]
    if random:
        drawn = [f"{h['op']} ({counted(h['calls'], 'call')}) at {_here(h)}" for h in random]
        title = "Draws random numbers (fine when every generator is seeded alike)"
        console.print(bullets(title, drawn, width=width), crop=False)
    if not hits:
        console.print(Text("No op known to be nondeterministic on its device was run.", "green"))
        return
    console.print(Text("Known nondeterministic ops this script runs", style="bold"))
    for hit in hits:
        first = f"{hit['op']} on {hit['device']}, {counted(hit['calls'], 'call')}, at {_here(hit)}"
        lines = hanging(first, "  - ", width)
        lines += hanging(f"why: {hit['why']}", "    ", width)
        lines += hanging(f"fix: {hit['fix']}", "    ", width)
        for line in lines:
            console.print(Text(line))
    closing = (
        "Whether they change your results: `bisector find` runs the script twice and compares."
    )
    for line in hanging(closing, "", width):
        console.print(Text(line, style="dim"))


def _here(hit: dict) -> str:
    """The op's first line, relative to the working folder when inside it."""
    location = hit.get("location") or "?"
    path, _, line = location.rpartition(":")
    if path and os.path.isabs(path) and path.startswith(os.path.join(os.getcwd(), "")):
        return f"{os.path.relpath(path)}:{line}"
    return location
