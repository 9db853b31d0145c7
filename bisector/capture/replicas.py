"""Replicas across ranks, from one run: what each rank holds that every rank should hold alike.

In a job of several ranks, DDP keeps a full copy of every parameter on each rank, and so do
FSDP's replicated DTensors; after each optimizer step those copies must be bitwise equal. At the
end of each recorded step every rank writes a fingerprint of each such value (parameters and
buffers, not the shards each rank holds of a sharded parameter) to ``<trace>.replicas``, one
JSON line per step; ``analysis.replicas.drift`` then finds the first step and value where the
ranks disagree, so that "rank 1's replica of proj.weight differs after step 0" comes from a
single run (an optimizer built with another learning rate on one rank, a rank-dependent seed,
BatchNorm statistics without SyncBatchNorm).

Fingerprints are read back once per step (one host wait per step, never per op).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bisector.capture.fingerprint import fingerprint_words, hashable, plain_values, word_view


def job_rank() -> int | None:
    """This process's rank in a job of several ranks, or None outside one."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return None
    return distributed.get_rank() if distributed.get_world_size() > 1 else None


def _replicated(tensor: torch.Tensor) -> torch.Tensor | None:
    """The full local copy of a value every rank holds alike, or None (a shard, no plain bits)."""
    placements = getattr(tensor, "placements", None)
    if placements is not None and not all(p.is_replicate() for p in placements):
        return None  # each rank holds its own shard
    values = plain_values(tensor)
    return values if hashable(values) else None


def write_step(
    path: Path, step: int, rank: int, named: list[tuple[str, str, torch.Tensor]]
) -> None:
    """Append this rank's fingerprints of its replicated values after ``step``.

    ``named``: (kind, name, tensor) with kind "parameter" or "buffer".
    """
    kept = [(kind, name, r) for kind, name, t in named if (r := _replicated(t)) is not None]
    if not kept:
        return
    with torch.no_grad():
        prints = torch.stack([fingerprint_words(word_view(t)).cpu() for _, _, t in kept])
    values = {
        name: [kind, f"{fp & 0xFFFFFFFFFFFFFFFF:016x}"]
        for (kind, name, _), fp in zip(kept, prints.tolist(), strict=True)
    }
    with open(path, "a") as file:
        file.write(json.dumps({"step": step, "rank": rank, "values": values}) + "\n")
