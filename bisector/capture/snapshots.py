"""Per-step snapshots of the training state (parameters, gradients, optimizer state), so that
two runs can be compared exactly, step by step, for the growth of their difference.

Taken once per optimizer step (after it), never per op: one copy to the host per step. Only the
first steps of a confirmation pair are snapshotted, and a snapshot larger than a budget is
skipped (the growth then falls back to lower bounds from the trace).

The recorded run (which has torch) writes them as safetensors files, with the order the tensors
were taken in the metadata; ``find``'s own process reads them back with numpy, without importing
torch (1.5 s while the runs want the cores): the format is 8 bytes of header length, a JSON
header of names, dtypes, shapes and byte ranges, then the raw little-endian data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bisector.report import SnapshotMatch

if TYPE_CHECKING:
    import torch

# A step whose state is larger than this is not snapshotted.
MAX_BYTES = 2 << 30

# The metadata key of the names in the order they were taken (the header's order is not kept).
_ORDER = "bisector.order"
# safetensors dtypes numpy reads as they are; BF16 is widened by hand; others (FP8) compare
# bitwise only.
_NUMPY = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_FLOATS = ("F64", "F32", "F16", "BF16")
# torch dtypes saved as they are (the rest as bytes: ``_storable``).
_STORED = (
    *("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"),
    *("int64", "int32", "int16", "int8", "uint8", "bool"),
)


def state_tensors(optimizers, name_of) -> dict[str, torch.Tensor]:
    """Parameters, gradients and tensor optimizer state of the optimizers, by stable names.

    Args:
        optimizers: the optimizers that stepped.
        name_of: maps a parameter to its qualified name, or None if it has none.
    """
    import torch

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
    """Save detached CPU copies; False (and nothing written) if over the budget or not
    storable (a layout or dtype no copy here handles: the growth then falls back to bounds)."""
    from safetensors.torch import save_file

    from bisector.capture.fingerprint import plain_values

    # A DTensor (FSDP2, tensor parallelism) is saved as the shard or replica this rank holds.
    tensors = {k: plain_values(t.detach()) for k, t in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > MAX_BYTES:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        copies = {k: _storable(t) for k, t in tensors.items()}
        save_file(copies, str(path), metadata={_ORDER: json.dumps(list(copies))})
    except (RuntimeError, ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)
        return False
    return True


def _storable(t: torch.Tensor) -> torch.Tensor:
    """A dense, contiguous CPU copy of ``t`` in a dtype every safetensors >= 0.4 names: complex
    numbers as pairs of reals, other dtypes (unsigned ints past 8 bits, ...) as their bytes,
    which compare bitwise."""
    import torch

    if t.layout != torch.strided:  # a sparse gradient (Embedding(sparse=True)), dense here
        t = t.to_dense()
    t = t.to("cpu", copy=True).contiguous()
    if t.is_complex():
        t = torch.view_as_real(t)
    if str(t.dtype).removeprefix("torch.") not in _STORED:
        t = t.reshape(-1).view(torch.uint8)
    return t


def max_differences(a: Path, b: Path) -> dict[str, float] | None:
    """Largest absolute difference per kind (param, grad, state) between two snapshots."""
    if not (a.exists() and b.exists()):
        return None
    right = {name: (dtype, shape, raw) for name, dtype, shape, raw in _read(b)}
    result = {"param": 0.0, "grad": 0.0, "state": 0.0}
    for name, dtype, shape, raw in _read(a):
        other = right.get(name)
        if other is None or other[:2] != (dtype, shape) or dtype not in _FLOATS:
            continue
        kind = name.split("/", 1)[0]
        result[kind] = max(result[kind], _largest_difference(dtype, raw, other[2]))
    return result


def compare_in_order(a: Path, b: Path) -> SnapshotMatch:
    """Compare two snapshots value by value in the order they were taken (their names may
    differ: a plain run does not know module names). Bitwise, with the largest difference."""
    left, right = _read(a), _read(b)
    differing, largest = 0, 0.0
    for (_, dtype, shape, x), (_, other_dtype, other_shape, y) in zip(left, right, strict=False):
        if (dtype, shape) != (other_dtype, other_shape):
            differing += 1
        elif not np.array_equal(x, y):
            differing += 1
            if dtype in _FLOATS:
                largest = max(largest, _largest_difference(dtype, x, y))
    differing += abs(len(left) - len(right))
    return {
        "equal": differing == 0,
        "tensors": max(len(left), len(right)),
        "differing": differing,
        "max_abs_diff": largest,
    }


def _read(path: Path) -> list[tuple[str, str, tuple[int, ...], np.ndarray]]:
    """(name, safetensors dtype, shape, the raw bytes) of each tensor of a snapshot, in the
    order they were taken; the bytes are mapped from the file, not read into memory."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (length,) = struct.unpack("<Q", data[:8].tobytes())
    header = json.loads(data[8 : 8 + length].tobytes())
    start = 8 + length
    order = json.loads(header.pop("__metadata__", {}).get(_ORDER, "null")) or sorted(header)
    found = []
    for name in order:
        entry = header[name]
        begin, end = (start + offset for offset in entry["data_offsets"])
        found.append((name, entry["dtype"], tuple(entry["shape"]), data[begin:end]))
    return found


def _largest_difference(dtype: str, x: np.ndarray, y: np.ndarray) -> float:
    """max |x - y| of two tensors' raw bytes of a float dtype, in float64 (nan if any is)."""
    if x.size == 0:
        return 0.0
    difference = np.abs(_float64(dtype, x) - _float64(dtype, y))
    return float(difference.max())


def _float64(dtype: str, raw: np.ndarray) -> np.ndarray:
    if dtype == "BF16":  # the upper half of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
    return raw.view(_NUMPY[dtype]).astype(np.float64)
