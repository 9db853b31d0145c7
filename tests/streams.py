"""Build small traces by hand, to test alignment and source finding on known streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bisector.trace import ALL_COLUMNS, FLAG_RANDOM, OUT_HASHED, PHASES, Trace


@dataclass
class Ev:
    """One hand-written event.

    inputs: (producer event index, output slot) per tensor input; producer -1 = untracked.
    outputs: fingerprints of written tensors (ints), or (fingerprint, kind, prev) tuples where
    prev is the (event, slot) of the previous value of a partial write.
    """

    op: str
    inputs: list[tuple[int, int]] = field(default_factory=list)
    outputs: list = field(default_factory=list)
    args: str = ""
    module: str = "net"
    phase: str = "forward"
    step: int = 0
    location: str = "/work/train.py:10"
    random: bool = False


def make_trace(events: list[Ev], path: str = "mem.trace", header: dict | None = None) -> Trace:
    strings: list[str] = []
    ids: dict[str, int] = {}

    def sid(text: str) -> int:
        if text not in ids:
            ids[text] = len(strings)
            strings.append(text)
        return ids[text]

    cols: dict[str, list] = {name: [] for name in ALL_COLUMNS}
    for index, ev in enumerate(events):
        cols["op"].append(sid(ev.op))
        cols["module"].append(sid(ev.module))
        cols["location"].append(sid(ev.location))
        cols["args"].append(sid(ev.args))
        cols["phase"].append(PHASES.index(ev.phase))
        cols["step"].append(ev.step)
        cols["n_in"].append(len(ev.inputs))
        cols["n_out"].append(len(ev.outputs))
        cols["flags"].append(FLAG_RANDOM if ev.random else 0)
        for producer, slot in ev.inputs:
            cols["in_back"].append(index - producer if producer >= 0 else 0)
            cols["in_slot"].append(slot)
        for out in ev.outputs:
            value, kind, prev = (out, OUT_HASHED, None) if isinstance(out, int) else out
            cols["out_kind"].append(kind)
            cols["out_fp"].append(value)
            cols["out_sum"].append(float(value))
            cols["out_absmax"].append(float(abs(value)))
            cols["out_numel"].append(1)
            cols["out_prev_back"].append(index - prev[0] if prev else 0)
            cols["out_prev_slot"].append(prev[1] if prev else 0)
    columns = {name: np.array(cols[name], dtype=dtype) for name, dtype in ALL_COLUMNS.items()}
    head = {"argv": ["train.py"], "cwd": "/work", "rank": 0, **(header or {})}
    return Trace(path, head, {"status": "complete", "steps": 1}, strings, columns, True)
