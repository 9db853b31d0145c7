"""Run `bisector find` on the CUDA catalogue cases and the seed example; one line per case.

    python benchmarks/gpu_catalogue.py [CASE ...] [--json out.json]

Cases are those of tests/scripts/cuda_ops.py, plus "seed" (examples/qwen2_sdpa_adam.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import bisector
from bisector.api import FindOptions

REPO = Path(__file__).resolve().parent.parent
CASES = [
    "seed",
    "index_add",
    "scatter_add",
    "interpolate",
    "grid_sample",
    "cumsum",
    "bincount",
    "sdpa_flash",
    "sdpa_mem_efficient",
    "sdpa_cudnn",
    "sdpa_math",
    "matmul",
    "conv",
]


def run(case: str, folder: Path) -> dict:
    if case == "seed":
        script, args, steps = REPO / "examples" / "qwen2_sdpa_adam.py", (), 2
    else:
        script, args, steps = REPO / "tests" / "scripts" / "cuda_ops.py", (case,), 3
    start = time.perf_counter()
    report = bisector.find(script, args, steps=steps, options=FindOptions(workdir=str(folder)))
    row = {
        "case": case,
        "reproducible": report.reproducible,
        "seconds": time.perf_counter() - start,
    }
    if report.first_divergence is not None:
        first = report.first_divergence
        row.update(
            kind=first.kind,
            op=first.op,
            module=first.module,
            phase=first.phase,
            step=first.step,
            max_abs_diff=first.max_abs_diff,
            differing=report.differing_events,
            compared=report.compared_events,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=CASES)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            row = run(case, Path(folder) / case)
            rows.append(row)
            verdict = (
                "reproducible"
                if row["reproducible"]
                else (
                    f"{row['kind']} {row['op']} in {row['module']} ({row['phase']}, step "
                    f"{row['step']}), >= {row['max_abs_diff']:.2g}"
                )
            )
            print(f"{case:20s} {verdict}  [{row['seconds']:.0f} s]", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
