"""Wall time of `bisector find` against two plain runs of the same script, side by side.

Runs, in this order and each in a fresh process: the script twice without bisector, then
`bisector find --no-confirm`, then `bisector find` with confirmation (replay, interventions,
verdict), `--repeat` times. Prints the wall times, their ratio to the two plain runs, and
the verdict; with `--repeat 2` or more, also whether every confirmed find reached the same
outcomes (cause, replay verdict, each intervention's outcome, fix).

    python benchmarks/find_walltime.py examples/qwen2_sdpa_adam.py --steps 2 \
        --plain-args "--steps 2" [--json out.json] [--workdir DIR]

`--plain-args` are the script arguments that make a plain run do what `find` records (the
same number of optimizer steps): `find --steps N` stops each run after N steps itself.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(command: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.returncode


def _outcomes(report: dict) -> dict:
    """What a user acts on in a confirmed report: the place, the replay, each intervention."""
    cause = report.get("first_divergence") or {}
    return {
        "cause": report.get("cause"),
        "line": cause.get("location"),
        "replay": [(row["op"], row["distinct_results"] > 1) for row in report.get("replay") or []],
        "interventions": {
            row["intervention"]: row["outcome"] for row in report.get("confirmations") or []
        },
        "fix": report.get("fix"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script")
    parser.add_argument("--steps", type=int, default=2, help="steps `find` records")
    parser.add_argument("--plain-args", default="", help="script arguments for the plain runs")
    parser.add_argument("--args", default="", help="script arguments for every run")
    parser.add_argument("--repeat", type=int, default=1, help="confirmed finds to run and compare")
    parser.add_argument("--jobs", type=int, default=None, help="find --jobs (default: its own)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--workdir", help="where find keeps its traces (default: a temp dir)")
    options = parser.parse_args()

    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="bisector-walltime-"))
    script_args = shlex.split(options.args)
    plain = [sys.executable, options.script, *script_args, *shlex.split(options.plain_args)]
    find = [sys.executable, "-m", "bisector", "find", options.script, "--steps", str(options.steps)]

    plain_1, _ = _timed(plain)
    plain_2, _ = _timed(plain)
    unconfirmed, code_a = _timed(
        [*find, "--no-confirm", "--workdir", str(workdir / "a"), "--", *script_args]
    )
    jobs = [] if options.jobs is None else ["--jobs", str(options.jobs)]
    confirmed_runs = []
    for index in range(options.repeat):
        report_path = workdir / f"report-{index}.json"
        seconds, code = _timed(
            [
                *find,
                *jobs,
                "--workdir",
                str(workdir / f"b{index}"),
                "--json",
                str(report_path),
                "--",
                *script_args,
            ]
        )
        confirmed_runs.append((seconds, code, json.loads(report_path.read_text())))
    two_plain = plain_1 + plain_2
    outcomes = [_outcomes(report) for _, _, report in confirmed_runs]
    confirmed, code_b, report = confirmed_runs[0]
    results = {
        "script": options.script,
        "steps": options.steps,
        "plain_runs_s": [round(plain_1, 2), round(plain_2, 2)],
        "two_plain_runs_s": round(two_plain, 2),
        "find_no_confirm_s": round(unconfirmed, 2),
        "find_confirmed_s": [round(seconds, 2) for seconds, _, _ in confirmed_runs],
        "ratio_no_confirm": round(unconfirmed / two_plain, 2),
        "ratio_confirmed": [round(seconds / two_plain, 2) for seconds, _, _ in confirmed_runs],
        "exit_codes": [code_a, *(code for _, code, _ in confirmed_runs)],
        "same_outcomes": all(outcome == outcomes[0] for outcome in outcomes),
        "outcomes": outcomes,
        "cause": report.get("cause"),
        "fix": report.get("fix"),
        "confirmations": report.get("confirmations"),
        "replay": report.get("replay"),
    }
    print(f"two plain runs           {two_plain:8.1f} s")
    print(f"find --no-confirm        {unconfirmed:8.1f} s   {unconfirmed / two_plain:5.2f}x")
    for index, (seconds, _, _) in enumerate(confirmed_runs):
        print(f"find (confirmed) #{index + 1}      {seconds:8.1f} s   {seconds / two_plain:5.2f}x")
    print(f"cause: {results['cause']}")
    for confirmation in results["confirmations"] or []:
        print(f"  {confirmation['intervention']:<18} {confirmation['outcome']}")
    print(f"fix: {results['fix']}")
    if options.repeat > 1:
        print("same outcomes every time: " + ("yes" if results["same_outcomes"] else "NO"))
        for index, outcome in enumerate(outcomes):
            print(f"  #{index + 1}: {json.dumps(outcome)}")
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
