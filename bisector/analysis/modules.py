"""The module rung's verdict: the first module call whose inputs are equal and outputs differ.

Two traces recorded with ``RecordOptions(modules_only=True)`` hold one event per module call and
per module backward (capture/module_calls.py), and leaves for what no module made (the batch, the
loss's gradient). Walking the events in the order they ended, the first module event whose
inputs have equal fingerprints in both runs and whose outputs do not is where the difference
starts: the op-level rung then records that module's ops only. Calls end inner first, so the
innermost module that holds the cause is found, not the model around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bisector.schema import MODULE_BACKWARD, MODULE_PREFIX
from bisector.trace import Trace


@dataclass(frozen=True)
class ModuleSource:
    """Where the module rung found the difference to start.

    Attributes:
        module: the module's path (``layers.0.self_attn``).
        backward: the difference starts in its backward (else in its forward).
        step: the optimizer step.
        event: the event's index in the traces.
        outputs: how many of its outputs differ, of how many.
    """

    module: str
    backward: bool
    step: int
    event: int
    outputs: tuple[int, int]

    def describe(self) -> str:
        part = "backward" if self.backward else "forward"
        differ, total = self.outputs
        return (
            f"{self.module} ({part}, step {self.step}): inputs equal, "
            f"{differ} of {total} output{'s' if total != 1 else ''} differ"
        )


def first_module_source(a: Trace, b: Trace) -> ModuleSource | None:
    """The first module event whose inputs are equal in ``a`` and ``b`` and outputs differ.

    None when there is none, or when the two runs did not call the same modules in the same
    order up to it (then nothing can be said at this level).
    """
    for event in range(min(len(a), len(b))):
        op = a.string("op", event)
        if op != b.string("op", event) or a.string("module", event) != b.string("module", event):
            return None  # the runs went different ways: not comparable call by call
        if not op.startswith(MODULE_PREFIX):
            continue
        out_a, out_b = _outputs(a, event), _outputs(b, event)
        if len(out_a) != len(out_b) or not len(out_a):
            continue
        differ = (a.columns["out_fp"][out_a] != b.columns["out_fp"][out_b]) | (
            a.columns["out_kind"][out_a] != b.columns["out_kind"][out_b]
        )
        inputs = _input_values(a, event)
        if not differ.any() or inputs is None or inputs != _input_values(b, event):
            continue
        return ModuleSource(
            module=a.string("module", event),
            backward=op == MODULE_BACKWARD,
            step=int(a.columns["step"][event]),
            event=event,
            outputs=(int(differ.sum()), len(out_a)),
        )
    return None


def _outputs(trace: Trace, event: int) -> np.ndarray:
    return np.arange(trace.out_start[event], trace.out_start[event + 1])


def _input_values(trace: Trace, event: int) -> list[tuple[int, int]] | None:
    """(kind, fingerprint) of each input of the event, in order; None if one could not be
    followed (nothing can be said about it then: never equal)."""
    c = trace.columns
    values = []
    for row in range(int(trace.in_start[event]), int(trace.in_start[event + 1])):
        back = int(c["in_back"][row])
        if back <= 0:
            return None
        producer = event - back
        out = int(trace.out_start[producer]) + int(c["in_slot"][row])
        if out >= int(trace.out_start[producer + 1]):
            return None
        values.append((int(c["out_kind"][out]), int(c["out_fp"][out])))
    return values
