"""Replay a suspect op in isolation: save its inputs, write a standalone repro, run it N times.

The capture pass of ``find`` saves the inputs of each source op (and only those) with
``capture.inputs.save_inputs``. ``write_repro`` writes, next to them, a small Python script that
imports only torch: it re-creates the inputs, calls the op N times on fresh copies, and counts
distinct results (bitwise). ``replay`` runs that very script, so the evidence in the report is
exactly what a user can attach to an upstream bug report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bisector.runfiles import captured_op


@dataclass
class Replay:
    """What re-running one op on identical inputs gave.

    Attributes:
        op: the aten overload.
        event: the event index of the source in run A.
        runs: how many times the op ran.
        distinct_results: how many bitwise-different results came out (1: deterministic).
        repro: path of the standalone repro script.
        error: why the replay could not run, if it could not.
        seed: the seed set before each run (random ops), or None.
        rank: the rank whose op it is (0 unless distributed).
    """

    op: str
    event: int
    runs: int
    distinct_results: int | None
    repro: str
    error: str | None = None
    seed: int | None = None
    rank: int = 0


_REPRO = '''"""Standalone repro, written by bisector: {op} on the saved inputs, run N times.

    python {script} [--runs N] [--up-to M] [--device DEVICE]

Prints how many bitwise-different results N runs on identical inputs gave; exits 1 if more than
one (the op is nondeterministic). With --up-to, while every result is still the same, it goes on
to M runs (for at most --seconds more): a race that shows once in 20 runs shows there. Needs
only torch; the inputs are in {inputs}.
"""

import argparse
import hashlib
import json
import os
import time

import torch

OP = "{op}"
INPUTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{inputs}")


def decode(value, device):
    if isinstance(value, list):
        return [decode(v, device) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            target = device or value["device"]
            return value["__tensor__"].to(target, copy=True)
        if "__tuple__" in value:
            return tuple(decode(v, device) for v in value["__tuple__"])
        if "__dict__" in value:
            return {{k: decode(v, device) for k, v in value["__dict__"].items()}}
        if "__dtype__" in value:
            return getattr(torch, value["__dtype__"])
        if "__device__" in value:
            return torch.device(device or value["__device__"])
        if "__torch__" in value:
            return getattr(torch, value["__torch__"])
        if "__generator__" in value:  # a fresh generator in the saved state, for every run
            generator = torch.Generator(device or value["device"])
            generator.set_state(value["__generator__"])
            return generator
    return value


def resolve(name):
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)


def digest(op, args, kwargs, out):
    """Bits of everything the call wrote: its results and the arguments it writes in place."""
    written = list(tensors(out))
    for i, arg in enumerate(op._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            written += list(tensors(value))
    h = hashlib.sha256()
    for t in written:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description="Re-run " + OP + " on identical inputs.")
    parser.add_argument("--runs", type=int, default=20, help="runs, at least")
    parser.add_argument("--up-to", type=int, default=0,
                        help="while every result is the same, go on to this many runs")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="at most this long for the runs past --runs")
    parser.add_argument("--device", default=None, help="default: where the op ran")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    parser.add_argument("--seed", type=int, default=None,
                        help="reseed torch before each run (for random ops)")
    options = parser.parse_args()
    saved = torch.load(INPUTS, weights_only=True)
    op = resolve(saved["op"])

    def run_once():
        if options.seed is not None:
            torch.manual_seed(options.seed)
        args = decode(saved["args"], options.device)
        kwargs = decode(saved["kwargs"], options.device)
        return digest(op, args, kwargs, op(*args, **kwargs))

    results = [run_once() for _ in range(options.runs)]
    deadline = time.monotonic() + options.seconds
    while len(results) < options.up_to and len(set(results)) == 1 and time.monotonic() < deadline:
        results.append(run_once())
    runs, distinct = len(results), len(set(results))
    print(f"{{OP}}: {{runs}} runs on identical inputs, {{distinct}} distinct result(s)")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({{"op": OP, "runs": runs, "distinct_results": distinct}}, f)
    raise SystemExit(1 if distinct > 1 else 0)


if __name__ == "__main__":
    main()
'''


def write_repro(inputs: Path, op: str) -> Path:
    """Write the standalone repro script of ``op`` next to its saved inputs; returns its path."""
    script = inputs.with_suffix(".py")
    script.write_text(_REPRO.format(op=op, script=script.name, inputs=inputs.name))
    return script


# While every result is still the same, a replay goes on past its runs to this many, for at
# most this many seconds more: a race that shows once in 20 runs (a cuDNN attention backward on
# a busy GPU did) is then caught, where a replay of a deterministic op costs seconds at most.
MORE_RUNS = 200
MORE_SECONDS = 10.0


def replay(
    inputs: Path, event: int, runs: int = 20, timeout: float = 600, seed: int | None = None
) -> Replay:
    """Run the op's standalone repro ``runs`` times (and on to ``MORE_RUNS`` while every result
    is the same, see above) and count distinct results; ``Replay.runs`` is the runs made.

    ``seed``: reseed torch before each run. For a random op this asks whether it is
    deterministic given its generator state (then the state is what differed between runs).
    """
    unsaved = inputs.with_suffix(".error")
    if unsaved.exists():
        reason = unsaved.read_text().strip()
        return Replay("?", event, 0, None, "", f"its inputs could not be saved ({reason})")
    try:
        op = captured_op(inputs).read_text().strip()
        script = write_repro(inputs, op)
    except OSError as exc:
        return Replay("?", event, 0, None, "", f"cannot read the saved inputs: {exc}")
    result_file = inputs.with_suffix(".json")
    command = [sys.executable, str(script), "--runs", str(runs), "--json", str(result_file)]
    command += ["--up-to", str(MORE_RUNS), "--seconds", str(MORE_SECONDS)]
    if seed is not None:
        command += ["--seed", str(seed)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
        )
    except subprocess.TimeoutExpired:
        return Replay(op, event, runs, None, str(script), f"the replay took over {timeout:g} s")
    if done.returncode not in (0, 1) or not result_file.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Replay(op, event, runs, None, str(script), f"the replay failed: {last}")
    result = json.loads(result_file.read_text())
    made, distinct = int(result["runs"]), int(result["distinct_results"])
    return Replay(op, event, made, distinct, str(script), seed=seed)
