"""Per-step snapshots of the training state (parameters, gradients, optimizer state), so that
two runs can be compared exactly, step by step, for the growth of their difference.

Taken once per optimizer step (after it), never per op: one copy to the host per step. Only the
first steps of a confirmation pair are snapshotted, and a snapshot larger than a budget is
skipped (the growth then falls back to lower bounds from the trace).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bisector.capture.fingerprint import plain_values
from bisector.report import SnapshotMatch

# A step whose state is larger than this is not snapshotted.
MAX_BYTES = 2 << 30


def state_tensors(optimizers, name_of) -> dict[str, torch.Tensor]:
    """Parameters, gradients and tensor optimizer state of the optimizers, by stable names.

    Args:
        optimizers: the optimizers that stepped.
        name_of: maps a parameter to its qualified name, or None if it has none.
    """
    found: dict[str, torch.Tensor] = {}
    for k, optimizer in enumerate(optimizers):
        for g, group in enumerate(optimizer.param_groups):
            for i, param in enumerate(group["params"]):
                name = name_of(param) or f"optimizer{k}.group{g}.{i}"
                found[f"param/{name}"] = param
                if param.grad is not None:
                    found[f"grad/{name}"] = param.grad
                for key, value in optimizer.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.numel() > 1:
                        found[f"state/{name}/{key}"] = value
    return found


def save(path: Path, tensors: dict[str, torch.Tensor]) -> bool:
    """Save detached CPU copies; False (and nothing written) if over the budget."""
    # A DTensor (FSDP2, tensor parallelism) is saved as the shard or replica this rank holds.
    tensors = {k: plain_values(t.detach()) for k, t in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > MAX_BYTES:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: t.to("cpu", copy=True) for k, t in tensors.items()}, path)
    return True


def max_differences(a: Path, b: Path) -> dict[str, float] | None:
    """Largest absolute difference per kind (param, grad, state) between two snapshots."""
    if not (a.exists() and b.exists()):
        return None
    left = torch.load(a, weights_only=True)
    right = torch.load(b, weights_only=True)
    result = {"param": 0.0, "grad": 0.0, "state": 0.0}
    for name, x in left.items():
        y = right.get(name)
        if y is None or y.shape != x.shape or not x.is_floating_point():
            continue
        kind = name.split("/", 1)[0]
        diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        result[kind] = max(result[kind], diff)
    return result


def compare_in_order(a: Path, b: Path) -> SnapshotMatch:
    """Compare two snapshots value by value in the order they were taken (their names may
    differ: a plain run does not know module names). Bitwise, with the largest difference."""
    left = list(torch.load(a, weights_only=True).values())
    right = list(torch.load(b, weights_only=True).values())
    differing, largest = 0, 0.0
    for x, y in zip(left, right, strict=False):
        if x.shape != y.shape or x.dtype != y.dtype:
            differing += 1
            continue
        if not torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)):
            differing += 1
            if x.is_floating_point() and x.numel():
                largest = max(largest, (x.double() - y.double()).abs().max().item())
    differing += abs(len(left) - len(right))
    return {
        "equal": differing == 0,
        "tensors": max(len(left), len(right)),
        "differing": differing,
        "max_abs_diff": largest,
    }
