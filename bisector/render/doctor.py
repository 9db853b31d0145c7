"""Render ``bisector doctor``: environment, what in it can make runs differ, the script's known
nondeterministic ops."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


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
    if advice:
        console.print(Text("What here can make two runs differ", style="bold"))
        for line in advice:
            console.print(Text("  - ") + Text(line))
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
        console.print(Text("The script changes these settings itself", style="bold"))
        for key, value in changed.items():
            console.print(f"  {key}: {settings.get(key)} -> {value}")
    distinct = len(survey.ops)
    console.print(Text(f"Surveyed {distinct} distinct ops over {survey.steps} optimizer step(s)."))
    random = [h for h in hits if h["random"]]
    hits = [h for h in hits if not h["random"]]
    if random:
        drawn = ", ".join(f"{h['op']} ({h['calls']})" for h in random)
        console.print(
            Text(f"Draws random numbers (fine when every generator is seeded alike): {drawn}")
        )
    if not hits:
        console.print(Text("No op known to be nondeterministic on its device was run.", "green"))
        return
    table = Table(
        title="Known nondeterministic ops this script runs",
        title_justify="left",
        padding=(0, 1),
    )
    for column in ("op", "device", "calls", "first call", "why", "fix"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        table.add_row(
            hit["op"], hit["device"], str(hit["calls"]), hit["location"], hit["why"], hit["fix"]
        )
    console.print(table)
    console.print(
        Text(
            "Whether they change your results: `bisector find` runs the script twice and compares.",
            style="dim",
        )
    )
