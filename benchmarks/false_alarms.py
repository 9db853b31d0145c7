"""False alarms: run `bisector find` many times on scripts that are deterministic, and count
every run that reports a difference (there must be none).

Scripts: the deterministic twins of the test suite (seeded dropout + Adam + scheduler, inference
without optimizer, a DataLoader with 2 workers), the late-source script on one thread (its
index_put_ is deterministic then), the ladder on the seeded twin (digests, 6 steps), compiled
code, and the twins of the scripts written as users write them (tests/test_trust.py). A run is
counted as a false alarm when it diverges, fails or is inconclusive.

    python benchmarks/false_alarms.py [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "scripts"

# name -> (script, bisector options, script arguments, environment)
CASES = {
    "deterministic": ("deterministic.py", [], [], {}),
    "inference": ("inference.py", [], [], {}),
    "dataloader_workers": ("dataloader_workers.py", [], [], {}),
    "late_source_1_thread": ("late_source.py", ["--steps", "10"], [], {"OMP_NUM_THREADS": "1"}),
    "ladder_deterministic": ("deterministic.py", ["--steps", "6", "--ladder"], [], {}),
    "compiled": ("compiled.py", [], [], {}),
    # the twins of the scripts written as users write them (tests/test_trust.py)
    "flip_augment_seeded": ("flip_augment.py", [], ["--seeded"], {}),
    "pick_index_seeded": ("pick_index.py", [], ["--seeded"], {}),
    "vocab_gru_sorted": ("vocab_gru.py", [], ["--sorted"], {}),
    "inference_transform_deterministic": ("inference_transform.py", [], ["--deterministic"], {}),
    "data_update_one_thread": ("data_update.py", [], ["--one-thread"], {}),
    "lstm_lm": ("lstm_lm.py", [], [], {}),
    "transformer_encoder": ("transformer_encoder.py", [], [], {}),
    "dead_scratch": ("dead_scratch.py", [], [], {}),
}


def run_case(name: str, repeats: int) -> dict:
    script, options, args, env = CASES[name]
    environment = {**os.environ, **env}
    codes = []
    started = time.perf_counter()
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "bisector", "find", str(SCRIPTS / script)]
            command += ["--no-confirm", "--quiet", "--workdir", folder, *options, "--", *args]
            done = subprocess.run(command, env=environment, capture_output=True, text=True)
            codes.append(done.returncode)
            if done.returncode == 2:
                print(done.stderr[-2000:], file=sys.stderr)
    return {
        "case": name,
        "runs": repeats,
        "reproducible": codes.count(0),
        "diverged": codes.count(1),
        "errors": codes.count(2),
        "inconclusive": codes.count(3),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args()
    rows = []
    for name in options.cases.split(","):
        row = run_case(name, options.repeats)
        rows.append(row)
        print(
            f"{row['case']:<34} {row['runs']:>3} runs: {row['reproducible']:>3} reproducible, "
            f"{row['diverged']} diverged, {row['inconclusive']} inconclusive, "
            f"{row['errors']} errors ({row['seconds']} s)",
            flush=True,
        )
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    sys.exit(1 if any(r["diverged"] or r["errors"] or r["inconclusive"] for r in rows) else 0)


if __name__ == "__main__":
    main()
