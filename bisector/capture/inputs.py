"""The inputs of one op call, saved for a replay (``find``'s capture pass, see
confirm/replay.py): tensors copied to the CPU with their devices, arguments as plain data that
``torch.load(weights_only=True)`` reads back, a generator with its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bisector.runfiles import captured_op

# Python types torch.load(weights_only=True) reads back as they are.
_PLAIN = (bool, int, float, str, type(None))


def encode(value: Any) -> Any:
    """Arguments of an op call as plain data torch.load(weights_only=True) can read."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().to("cpu", copy=True), "device": str(value.device)}
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {"__dict__": {str(k): encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, (torch.layout, torch.memory_format)):
        return {"__torch__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.Generator):  # its state now, before the op draws from it
        return {"__generator__": value.get_state(), "device": str(value.device)}
    raise TypeError(f"cannot save an argument of type {type(value).__name__}")


def save_inputs(path: Path, op: str, args: tuple, kwargs: dict) -> None:
    """Save the inputs of one op call (tensors copied to the CPU, devices remembered), and the
    op's name beside them (``captured_op``: the parent reads it without loading torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"op": op, "args": encode(tuple(args)), "kwargs": encode(dict(kwargs))}, path)
    captured_op(path).write_text(op)
