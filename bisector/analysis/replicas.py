"""Replicas across ranks: the first step and value that the ranks of one run held differently.

Reads what capture/replicas.py wrote for each rank (``<trace>.replicas``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bisector.report import ReplicaSplit


def drift(paths: dict[int, Path]) -> ReplicaSplit | None:
    """The first step and value whose replicas differ across ranks, from each rank's file.

    Returns None when every value was equal on every rank at every step both recorded, else
    ``{"step", "kind", "name", "groups": [[ranks], ...], "values": n}``: the ranks grouped by
    the fingerprint they held (the largest group first), and how many values differed at that
    step. A parameter that differs at any step comes before buffers (DDP re-sends buffers from
    rank 0 at each forward, so their end-of-step copies may differ by design).
    """
    steps: dict[int, dict[int, dict]] = {}
    for rank, path in paths.items():
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a rank that was killed
            steps.setdefault(int(entry["step"]), {})[rank] = entry["values"]
    found: dict[str, ReplicaSplit] = {}
    for step in sorted(steps):
        by_rank = steps[step]
        if len(by_rank) < 2:
            continue
        names = set.intersection(*(set(values) for values in by_rank.values()))
        differing: dict[str, list] = {"parameter": [], "buffer": []}
        for name in sorted(names):
            groups: dict[str, list[int]] = {}
            for rank, values in sorted(by_rank.items()):
                groups.setdefault(values[name][1], []).append(rank)
            if len(groups) > 1:
                kind = next(iter(by_rank.values()))[name][0]
                differing.get(kind, []).append((name, groups))  # (another kind: ignored)
        for kind, listed in differing.items():
            if listed and kind not in found:
                name, groups = listed[0]
                ordered = sorted(groups.values(), key=lambda ranks: (-len(ranks), ranks))
                found[kind] = {
                    "step": step,
                    "kind": kind,
                    "name": name,
                    "groups": ordered,
                    "values": len(listed),
                }
    # A parameter that drifts is the finding; buffers only when the parameters agree.
    return found.get("parameter") or found.get("buffer")


def describe(found: ReplicaSplit) -> str:
    """One line for the report's notes."""
    majority, *others = found["groups"]
    odd = ", ".join(str(r) for group in others for r in group)
    more = f" ({found['values']} values differ)" if found["values"] > 1 else ""
    held = (
        f"after step {found['step']}, rank {odd} held another {found['kind']} {found['name']} "
        f"than rank {', '.join(map(str, majority))}{more}"
    )
    if found["kind"] == "buffer":  # the parameters agreed
        return (
            f"buffers differ across ranks within one run: {held}; the parameters agree. DDP "
            "sends rank 0's buffers to every rank at each forward, so this is harmless there; "
            "where each rank uses its own (BatchNorm statistics without SyncBatchNorm, no "
            "buffer broadcast) the ranks train on different statistics"
        )
    return (
        f"replicas differ across ranks within one run: {held}; every rank should hold it "
        "alike (a rank-dependent setting, seed or data path)"
    )
