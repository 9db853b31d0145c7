"""Render a JSON report as HTML and take a PNG screenshot of it with headless Chromium.

    python docs/screenshot.py REPORT.json OUT.html OUT.png [--kind report|digests|checkpoint]
        [--width 1200] [--height 3000]

The report is the JSON that ``--json`` writes (``find``/``diff``: report; ``watch``/``diff`` of
digest files: digests; ``diff`` of two checkpoints: checkpoint).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bisector.checkpoint import CheckpointReport
from bisector.digests import DigestReport
from bisector.render.html import render_html
from bisector.report import Report
from bisector.tensor_diff import TensorDiff

CHROMIUM = Path("/usr/bin/chromium")


def load(path: Path, kind: str) -> Report | DigestReport | CheckpointReport:
    """Rebuild the report dataclass of ``kind`` from its JSON file (unknown keys are ignored)."""
    data = json.loads(path.read_text())
    if kind == "report":
        return Report.from_dict(data)
    if kind == "digests":
        return DigestReport(**_known(DigestReport, data))
    fields = _known(CheckpointReport, data)
    fields["tensors"] = [TensorDiff(**_known(TensorDiff, t)) for t in data.get("tensors", [])]
    return CheckpointReport(**fields)


def _known(cls: type, data: dict) -> dict:
    return {k: v for k, v in data.items() if k in cls.__dataclass_fields__}


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    """Take a screenshot of a local HTML file with headless Chromium (no network, new profile)."""
    with tempfile.TemporaryDirectory(prefix="bisector-chromium-") as profile:
        command = [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    """Write the HTML, then the screenshot; 2 when Chromium is missing (the HTML is written)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="JSON report written with --json")
    parser.add_argument("html", type=Path, help="HTML file to write")
    parser.add_argument("png", type=Path, help="PNG screenshot to write")
    parser.add_argument("--kind", choices=("report", "digests", "checkpoint"), default="report")
    parser.add_argument("--width", type=int, default=1200, help="window width in pixels")
    parser.add_argument("--height", type=int, default=3000, help="window height in pixels")
    args = parser.parse_args(argv)

    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(render_html(load(args.report, args.kind)), encoding="utf-8")
    print(f"HTML written to {args.html}")
    if not CHROMIUM.exists():
        print(
            f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`",
            file=sys.stderr,
        )
        return 2
    args.png.parent.mkdir(parents=True, exist_ok=True)
    screenshot(args.html, args.png, args.width, args.height)
    print(f"screenshot written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
