"""Step digest files: per optimizer step, the fingerprint and magnitude of the RNG states, batch,
loss, gradients, parameters, optimizer state and buffers of a run; and the comparison of two.

A digest file uses the record framing of records.py (crash-safe, checksummed):

- ``H`` header: JSON, as a trace's (versions, devices, settings, argv) plus ``every``;
- ``N`` names: JSON list of ``[kind, name, numel, dtype]`` appended to the name table;
- ``D`` one step: zlib of ``<II`` (step, count), then ``count`` name ids (u32), fingerprints
  (i64), float64 sums and float32 abs-maxes, in the order the values were taken;
- ``F`` footer: JSON (how the run ended), last when present.

A killed run leaves a file that loads up to its last complete step.

Format versions (bump ``FORMAT_VERSION`` and add a line for every change; old files must load):
    1: first version.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from bisector.environment import differences
from bisector.errors import MismatchError, TraceError
from bisector.records import Inflater, RecordWriter, parse_fields, parse_json, read, records
from bisector.report import DigestValue, EnvironmentRow, GrowthRow
from bisector.schema import unstepped_optimizers

MAGIC = b"BSDIGST\x00"
FORMAT_VERSION = 1
SCHEMA = 1
# The order in which a step's values are taken and checked: the first kind that differs in the
# first differing step says where the difference entered (data, forward, backward, optimizer).
# `find` starts with the step ladder (digests, then the ops of the first differing step) when
# more steps than this are asked for (or all of them).
LADDER_FROM = 4

KINDS = ("rng", "batch", "loss", "grad", "param", "state", "buffer")
_STEP = struct.Struct("<II")


# How a parameter or optimizer value is named: its module path in the script's model (with the
# model's variable first where the script holds several: ``G.table``), else its place in the
# optimizer (``group0.3``); prefixed by the optimizer's number where several step at once.
def unnamed_parameter(group: int, index: int) -> str:
    """The name of a parameter that no module of the script holds: its optimizer place."""
    return f"group{group}.{index}"


def in_optimizer(name: str, number: int, stepping: int) -> str:
    """``name`` as optimizer ``number`` of the ``stepping`` that step at once writes it."""
    return f"optimizer{number}.{name}" if stepping > 1 else name


def owning_module(name: str) -> str | None:
    """The module path that holds the parameter named ``name`` (``G.table``: ``G``;
    ``optimizer1.layers.0.fc.weight``: ``layers.0.fc``); None for a lone root's own parameter
    (no module part) or one no module holds (``group0.3``)."""
    name = re.sub(r"^optimizer\d+\.", "", name)
    if "." not in name or re.fullmatch(r"group\d+\.\d+", name):
        return None
    return name.rsplit(".", 1)[0]


class DigestWriter:
    """Appends step digests to a file as a run goes.

    Args:
        path: the file to create.
        header: JSON-serialisable header.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self._records = RecordWriter(path, MAGIC, FORMAT_VERSION)
        self.path = self._records.path
        self._records.write(b"H", json.dumps(header, default=str).encode())
        self._ids: dict[tuple[str, str, int, str], int] = {}
        self.steps_written = 0

    @property
    def bytes_written(self) -> int:
        return self._records.bytes_written

    def add_step(
        self,
        step: int,
        names: list[tuple[str, str, int, str]],
        fps: np.ndarray,
        sums: np.ndarray,
        maxes: np.ndarray,
    ) -> None:
        """Append one step: ``names[i]`` = (kind, name, numel, dtype) of value ``i``."""
        new = []
        ids = np.empty(len(names), dtype=np.uint32)
        for i, key in enumerate(names):
            known = self._ids.get(key)
            if known is None:
                known = self._ids[key] = len(self._ids)
                new.append(list(key))
            ids[i] = known
        if new:
            self._records.write(b"N", json.dumps(new).encode())
        payload = b"".join(
            (
                _STEP.pack(step, len(names)),
                ids.tobytes(),
                np.ascontiguousarray(fps, dtype=np.int64).tobytes(),
                np.ascontiguousarray(sums, dtype=np.float64).tobytes(),
                np.ascontiguousarray(maxes, dtype=np.float32).tobytes(),
            )
        )
        self._records.write(b"D", zlib.compress(payload, 1))
        self.steps_written += 1

    def close(self, footer: dict[str, Any]) -> None:
        """Write the footer and close; safe to call twice."""
        if self._records.closed:
            return
        self._records.write(b"F", json.dumps(footer, default=str).encode())
        self._records.close()


@dataclass
class StepValues:
    """The values of one step: parallel arrays, one entry per value taken."""

    ids: np.ndarray
    fps: np.ndarray
    sums: np.ndarray
    maxes: np.ndarray


@dataclass
class Digests:
    """A loaded digest file.

    Attributes:
        names: the name table: (kind, name, numel, dtype) per id.
        steps: step number -> its values, in file order.
        complete: False if the file was cut short (the run was killed while writing).
    """

    path: str
    header: dict[str, Any]
    footer: dict[str, Any]
    names: list[tuple[str, str, int, str]]
    steps: dict[int, StepValues]
    complete: bool


def load(path: str | os.PathLike) -> Digests:
    """Load a digest file (written by ``bisector.watch`` or the first level of ``find``).

    Raises:
        TraceError: missing, not a digest file, of a newer format, or corrupt.
    """
    path = Path(path)
    _, data = read(path, MAGIC, FORMAT_VERSION, "digest file", "write one with bisector.watch")
    header: dict[str, Any] | None = None
    footer: dict[str, Any] = {}
    names: list[tuple[str, str, int, str]] = []
    steps: dict[int, StepValues] = {}
    complete = False
    inflate = Inflater(path, len(data))
    for kind, payload, offset in records(path, data, len(MAGIC) + 4):
        if kind == b"H":
            header = parse_fields(path, payload, offset)
        elif kind == b"N":
            try:
                names.extend(
                    (str(k), str(n), int(c), str(d))
                    for k, n, c, d in parse_json(path, payload, offset, list)
                )
            except (ValueError, TypeError, OverflowError):
                raise TraceError(f"{path} is corrupt (bad name table at byte {offset})") from None
        elif kind == b"D":
            try:
                step, values = _parse_step(inflate(payload, offset), len(names))
            except ValueError as exc:
                raise TraceError(f"{path} is corrupt ({exc} at byte {offset})") from None
            steps[step] = values
        elif kind == b"F":
            footer = parse_fields(path, payload, offset)
            complete = True
        else:
            raise TraceError(f"{path} is corrupt (unknown record {kind!r} at byte {offset})")
    if header is None:
        raise TraceError(f"{path} is corrupt or empty (no header record)")
    return Digests(str(path), header, footer, names, steps, complete)


def _parse_step(raw: bytes, known_names: int) -> tuple[int, StepValues]:
    if len(raw) < _STEP.size:
        raise ValueError("step record of the wrong size")
    step, count = _STEP.unpack_from(raw, 0)
    if len(raw) != _STEP.size + count * (4 + 8 + 8 + 4):
        raise ValueError("step record of the wrong size")
    pos = _STEP.size
    columns = []
    for dtype in (np.uint32, np.int64, np.float64, np.float32):
        columns.append(np.frombuffer(raw, dtype=dtype, count=count, offset=pos))
        pos += count * np.dtype(dtype).itemsize
    if count and int(columns[0].max()) >= known_names:
        raise ValueError("name id out of range")
    return step, StepValues(*columns)


# ----- comparison -------------------------------------------------------------------------------


@dataclass
class DigestReport:
    """The comparison of two digest files.

    Attributes:
        reproducible: every common step has bitwise equal values.
        first_step: the first step whose values differ (None if none do).
        first: the values that differ in that step, in the order they were taken (rng, batch,
            loss, gradients, parameters, optimizer state, buffers): the first says where the
            difference entered. Each: kind, name, max_abs_diff (a lower bound from the stats).
        growth: per compared step: differing values and lower bounds of the largest gradient,
            parameter and optimizer-state difference.
        steps_compared: steps present in both files.
        environment: what differs between the two processes (versions, devices, settings).
        notes: anything else worth knowing (a cut-short file, steps only one file has).
        unstepped: the script's optimizers that never stepped in either run, in words (the
            digests wait for each past their steps: see capture/optimizers.py).
        first_rank: in a torchrun job (see ``merge_ranks``), the rank whose values ``first``
            are; None for one process or when no rank differs.
        first_ranks: every rank whose values differ first in the same way (the same step and
            kind of value: after an all-reduce every rank's gradients differ alike, and the
            digests cannot tell which rank the difference came from).
    """

    reproducible: bool
    first_step: int | None
    first: list[DigestValue]
    growth: list[GrowthRow]
    steps_compared: int
    paths: list[str]
    environment: list[EnvironmentRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unstepped: list[str] = field(default_factory=list)
    first_rank: int | None = None
    first_ranks: list[int] = field(default_factory=list)
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str) + "\n"


def compare(a: Digests, b: Digests) -> DigestReport:
    """Compare two digest files step by step.

    Raises:
        MismatchError: the files share no step, or record different values in a step (not two
            runs of the same training).
    """
    common = sorted(set(a.steps) & set(b.steps))
    if not common:
        raise MismatchError(
            f"{a.path} and {b.path} have no step in common (steps {_span(a)} and {_span(b)})"
        )
    report = DigestReport(True, None, [], [], len(common), [a.path, b.path])
    report.environment = differences(a.header, b.header, a.footer, b.footer)
    report.unstepped = unstepped_optimizers(a.footer, b.footer)
    rng_differs: set[str] = set()
    for step in common:
        left, right = _keyed(a, step), _keyed(b, step)
        if list(left) != list(right):
            if step == common[0]:
                raise MismatchError(
                    f"{a.path} and {b.path} hold different values from their first common step "
                    f"on ({_first_unshared(left, right)}): not two runs of the same training"
                )
            # The runs took different values here (another number of batches or losses, a
            # parameter added): a difference of structure, the end of the comparison.
            report.reproducible, report.first_step = False, step
            report.first = [
                {"kind": "structure", "name": _first_unshared(left, right), "max_abs_diff": None}
            ]
            report.growth.append(_growth_row(step, []))
            break
        found = [_difference(key, left[key], right[key]) for key in left]
        differing = [d for d in found if d is not None]
        # A generator state that differs (Python's and numpy's are unseeded in every process)
        # matters only where a value differs too: then it is a suspect, listed first.
        values = [d for d in differing if d["kind"] != "rng"]
        report.growth.append(_growth_row(step, values))
        if values and report.first_step is None:
            report.reproducible = False
            report.first_step = step
            report.first = differing
        rng_differs.update(d["name"] for d in differing if d["kind"] == "rng")
    report.notes = _notes(a, b, common)
    unused = _unused_generators(a) & _unused_generators(b)
    report.first = [d for d in report.first if not (d["kind"] == "rng" and d["name"] in unused)]
    rng_differs -= unused
    if rng_differs and report.reproducible:
        report.notes.append(
            f"generator states differ between the runs ({', '.join(sorted(rng_differs))}) but "
            "no value depended on them in the steps compared"
        )
    return report


# The order in which a step's values are taken: the earliest kind to differ is nearest the cause.
_KIND_ORDER = ("structure", "batch", "loss", "grad", "param", "state", "buffer")


def merge_growth(per_rank: Sequence[Sequence[Mapping[str, Any]]], count: str) -> list[GrowthRow]:
    """Growth rows of a job's ranks as one row per step: the ``count`` of differing values
    summed, each largest difference the largest over the ranks (None where no rank measured
    it), ``exact`` only where every rank's value was exact."""
    rows: dict[int, dict[str, Any]] = {}
    for growth in per_rank:
        for row in growth:
            merged = rows.setdefault(row["step"], {**row, count: 0})
            merged[count] += row[count]
            if "exact" in row:
                merged["exact"] = merged["exact"] and row["exact"]
            for key in ("max_grad_diff", "max_param_diff", "max_state_diff"):
                if row[key] is not None:
                    merged[key] = max(merged[key] or 0.0, row[key])
    return [cast(GrowthRow, rows[step]) for step in sorted(rows)]


def merge_ranks(reports: dict[int, DigestReport]) -> DigestReport:
    """One report for a torchrun job from each rank's comparison (rank r of run A against
    rank r of run B).

    The rank that leads is the one whose values differ first: the earliest step, then the
    earliest kind of value (a rank whose loss differs comes before ranks whose gradients
    differ only after the all-reduce carried its difference), then the lowest rank. Its
    ``first`` values carry ``rank``; the growth is the largest over the ranks.
    """

    def order(rank: int) -> tuple:
        report = reports[rank]
        values = [v for v in report.first if v["kind"] != "rng"]
        kind = values[0]["kind"] if values else "structure"
        rank_of_kind = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
        return (report.first_step, rank_of_kind, rank)

    differing = [rank for rank, report in reports.items() if report.first_step is not None]
    lead = min(differing, key=order) if differing else min(reports)
    shown = reports[lead]
    return DigestReport(
        reproducible=all(r.reproducible for r in reports.values()),
        first_step=shown.first_step,
        first=[{**value, "rank": lead} for value in shown.first],
        growth=merge_growth([r.growth for r in reports.values()], count="differing"),
        steps_compared=min(r.steps_compared for r in reports.values()),
        paths=shown.paths,
        environment=shown.environment,
        notes=[f"rank {rank}: {note}" for rank, r in sorted(reports.items()) for note in r.notes],
        first_rank=lead if differing else None,
        first_ranks=sorted(r for r in differing if order(r)[:2] == order(lead)[:2]),
    )


def _keyed(digests: Digests, step: int) -> dict[tuple[str, str], tuple[int, float, float, int]]:
    values = digests.steps[step]
    keyed = {}
    for i, name_id in enumerate(values.ids):
        kind, name, numel, _ = digests.names[int(name_id)]
        keyed[(kind, name)] = (
            int(values.fps[i]),
            float(values.sums[i]),
            float(values.maxes[i]),
            numel,
        )
    return keyed


def _unused_generators(digests: Digests) -> set[str]:
    """Generators whose state never changed from step to step: nothing drew from them."""
    seen: dict[str, set[int]] = {}
    for values in digests.steps.values():
        for i, name_id in enumerate(values.ids):
            kind, name, _, _ = digests.names[int(name_id)]
            if kind == "rng":
                seen.setdefault(name, set()).add(int(values.fps[i]))
    return {name for name, states in seen.items() if len(states) == 1}


def _first_unshared(left: dict, right: dict) -> str:
    for (kind, name), other, side in [(k, right, "A") for k in left] + [
        (k, left, "B") for k in right
    ]:
        if (kind, name) not in other:
            return f"{kind} {name!r} only in {side}"
    return "the same values in another order"


def _difference(key, left, right) -> DigestValue | None:
    if left[0] == right[0]:
        return None
    kind, name = key
    bound = None
    if kind != "rng":
        by_max = abs(left[2] - right[2])
        by_sum = abs(left[1] - right[1]) / max(left[3], 1)
        bound = max(by_max, by_sum)
    return {"kind": kind, "name": name, "max_abs_diff": bound}


def _growth_row(step: int, differing: list[DigestValue]) -> GrowthRow:
    def largest(kind: str) -> float:
        values = [d["max_abs_diff"] or 0.0 for d in differing if d["kind"] == kind]
        return max(values, default=0.0)

    return {
        "step": step,
        "differing": len(differing),
        "max_grad_diff": largest("grad"),
        "max_param_diff": largest("param"),
        "max_state_diff": largest("state"),
    }


def _notes(a: Digests, b: Digests, common: list[int]) -> list[str]:
    notes = []
    for name, digests in (("A", a), ("B", b)):
        if not digests.complete:
            notes.append(
                f"digest file {name} ({digests.path}) is cut short: it loads up to step "
                f"{max(digests.steps, default=-1)} (the run was killed while writing)"
            )
    for name, digests in (("A", a), ("B", b)):
        extra = sorted(set(digests.steps) - set(common))
        if extra:
            notes.append(f"steps {_ranges(extra)} are only in {name} ({digests.path})")
    return notes


def _span(digests: Digests) -> str:
    return _ranges(sorted(digests.steps)) or "none"


def _ranges(steps: list[int]) -> str:
    if not steps:
        return ""
    return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0])
