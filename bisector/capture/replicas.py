"""Replicas across ranks, from one run: what each rank holds that every rank should hold alike.

In a job of several ranks, DDP keeps a full copy of every parameter on each rank, and tensor
parallelism keeps replicated DTensors (biases); after each optimizer step those copies must be
bitwise equal. At the end of each recorded step every rank writes a fingerprint of each such
value (see ``replicated_values``; never the shards each rank holds) to ``<trace>.replicas``, one
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


def replicated_values(roots: list[torch.nn.Module]) -> list[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) of the values every rank holds a full copy of: the parameters and
    buffers of a DistributedDataParallel model, and DTensors replicated on every mesh dimension
    (tensor parallelism's replicated biases, FSDP2 with replicated placements). Shards are
    not (FSDP2's DTensors, FSDP1's flat parameters, any parameter of another wrapper)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    found = []
    for root in roots:
        replicated_module = isinstance(root, ddp)
        for kind, items in (
            ("parameter", root.named_parameters()),
            ("buffer", root.named_buffers()),
        ):
            for name, tensor in items:
                placements = getattr(tensor, "placements", None)
                if placements is None:
                    if replicated_module:
                        found.append((kind, name, tensor))
                elif all(p.is_replicate() for p in placements):
                    found.append((kind, name, tensor))
    return found


def write_step(
    path: Path, step: int, rank: int, named: list[tuple[str, str, torch.Tensor]]
) -> None:
    """Append this rank's fingerprints of its replicated values after ``step``.

    ``named``: (kind, name, tensor) with kind "parameter" or "buffer".
    """
    kept = [(kind, name, plain_values(t)) for kind, name, t in named]
    kept = [(kind, name, t) for kind, name, t in kept if hashable(t)]
    if not kept:
        return
    with torch.no_grad():
        words = [word_view(t) for _, _, t in kept]
        prints = torch.stack([fingerprint_words(w).cpu() for w in words if w is not None])
    values = {
        name: [kind, f"{fp & 0xFFFFFFFFFFFFFFFF:016x}"]
        for (kind, name, _), fp in zip(kept, prints.tolist(), strict=True)
    }
    with open(path, "a") as file:
        file.write(json.dumps({"step": step, "rank": rank, "values": values}) + "\n")
