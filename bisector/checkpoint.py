"""Compare two checkpoints (torch.save or safetensors) tensor by tensor, bit by bit.

JSON schema versions of CheckpointReport (keys are only added; ``schema`` changes only if a
meaning changes):
    1: first version.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bisector.errors import TraceError
from bisector.safetensors_reader import header_length, read_safetensors
from bisector.tensor_diff import TensorDiff, compare_tensors, dtype_name

SCHEMA = 1

# How torch's weights_only unpickler words a refusal to build an object (which needs code), as
# opposed to a malformed pickle.
_NEEDS_CODE = ("GLOBAL", "allowlist", "Can only create new object", "Can only build")
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


@dataclass(frozen=True)
class CheckpointReport:
    """What comparing two checkpoints found.

    Attributes:
        reproducible: every tensor and plain value bitwise equal, no name missing or extra, no
            shape, dtype or kind mismatch.
        tensors: tensors compared; differing ones first (largest max_abs_diff, then largest
            max_ulp_diff; a NaN difference ranks above every number), then equal ones by name
            (numbers in names compare as numbers: layers.2 before layers.10).
        missing: names in A that B lacks.
        extra: names in B that A lacks.
        mismatched: {"name", "a", "b"} with "float32[4, 8]"-style descriptions (or the Python
            type of a plain value) where shape, dtype or kind differ.
        values: plain (non-tensor) values that differ: {"name", "a", "b"}.
        groups: per prefix (a name minus its last component; "" for top-level names):
            {"prefix", "tensors", "differing", "max_abs_diff", "nan_differing"}, ranked like
            ``tensors``: differing groups first, then by prefix.
        paths: the two files, A then B.
    """

    reproducible: bool
    tensors: list[TensorDiff]
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the JSON contract)."""
        data = asdict(self)
        ordered = {"schema": data.pop("schema"), "reproducible": data.pop("reproducible")}
        ordered.update(data)
        return ordered

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (an infinite max_abs_diff is written ``Infinity``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)


def sniff_checkpoint(path: str | os.PathLike) -> str | None:
    """Tell a checkpoint's format from its first bytes (and a zip file's directory).

    Args:
        path: any file.

    Returns:
        "torch" (a torch.save zip archive or legacy pickle), "safetensors", or None for anything
        else, including a file that cannot be read.
    """
    try:
        with open(path, "rb") as f:
            first = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if first.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        # torch.save puts everything under one folder: "<stem>/data.pkl".
        return "torch" if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names) else None
    if len(first) >= 2 and first[0] == 0x80 and 2 <= first[1] <= 5:
        return "torch"
    if len(first) == 9 and first[8:9] == b"{" and header_length(first, size) is not None:
        return "safetensors"
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, object]:
    """Load a checkpoint as a flat mapping from dotted names to tensors and plain values.

    torch.save files are loaded with ``weights_only=True`` (never running code from the file)
    and memory-mapped when they are zip archives; safetensors files are memory-mapped.

    Args:
        path: a torch.save file (any extension) or a .safetensors file.

    Returns:
        Name -> leaf, e.g. {"model.0.weight": tensor, "optimizer.state.0.step": tensor,
        "optimizer.param_groups.0.lr": 0.001, "step": 2}.

    Raises:
        TraceError: the file is missing, a folder, unreadable, corrupt, not a checkpoint, or
            needs code to load (one line naming the file).
    """
    path = Path(path)
    if path.is_dir():
        raise TraceError(
            f"{path} is a folder, not a checkpoint file "
            "(sharded and distributed checkpoints are not supported)"
        )
    try:
        with open(path, "rb") as f:
            first = f.read(9)
    except FileNotFoundError:
        raise TraceError(f"checkpoint file not found: {path}") from None
    except OSError as exc:
        raise TraceError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    if not first:
        raise TraceError(f"{path} is empty, not a checkpoint")
    kind = sniff_checkpoint(path)
    # A "{" after 8 bytes is safetensors with a broken header length: let the reader say so.
    if kind == "safetensors" or (kind is None and first[8:9] == b"{"):
        return dict(read_safetensors(path))
    zipped = first.startswith(b"PK\x03\x04")
    if kind is None:
        if zipped:
            raise TraceError(
                f"{path} is a corrupt or truncated zip file, not a readable checkpoint"
            )
        raise TraceError(f"{path} is not a PyTorch (torch.save) or safetensors checkpoint")
    return _flatten(_torch_load(path, mmap=zipped))


def diff_checkpoints(path_a: str | os.PathLike, path_b: str | os.PathLike) -> CheckpointReport:
    """Compare two checkpoints; the formats may differ (torch.save vs safetensors).

    Args:
        path_a: checkpoint A.
        path_b: checkpoint B.

    Returns:
        The CheckpointReport.

    Raises:
        TraceError: either file cannot be loaded (see ``load_checkpoint``).

    Example:
        >>> report = diff_checkpoints("run_a/step10.pt", "run_b/step10.pt")
        >>> [t.name for t in report.tensors if not t.equal][:1]
        ['model.layers.0.mlp.up.weight']
    """
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    tensors: list[TensorDiff] = []
    mismatched, values = [], []
    for name in (n for n in a if n in b):
        left, right = a[name], b[name]
        if isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor):
            left, right = _plain(left), _plain(right)
            if left.dtype == right.dtype and left.shape == right.shape:
                tensors.append(compare_tensors(name, left, right))
                continue
        elif not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
            if not _same_value(left, right):
                values.append({"name": name, "a": _json_value(left), "b": _json_value(right)})
            continue
        mismatched.append({"name": name, "a": _describe(left), "b": _describe(right)})
    differing = sorted((t for t in tensors if not t.equal), key=_rank)
    equal = sorted((t for t in tensors if t.equal), key=lambda t: _natural(t.name))
    missing = [n for n in a if n not in b]
    extra = [n for n in b if n not in a]
    return CheckpointReport(
        reproducible=not (differing or missing or extra or mismatched or values),
        tensors=differing + equal,
        missing=missing,
        extra=extra,
        mismatched=mismatched,
        values=values,
        groups=_groups(tensors),
        paths=[str(path_a), str(path_b)],
    )


def _torch_load(path: Path, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for bad files; each becomes one line
        message = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and any(m in message for m in _NEEDS_CODE):
            raise TraceError(
                f"{path} needs code to load (it pickles objects other than tensors and plain "
                "values), and bisector never runs code from a checkpoint; re-save it as a "
                "state_dict: torch.save(model.state_dict(), path)"
            ) from None
        raise TraceError(
            f"{path} cannot be loaded as a checkpoint ({type(exc).__name__}: "
            f"{_detail(message)}); it may be corrupt or truncated"
        ) from None


def _detail(message: str) -> str:
    """The informative line of a torch.load error, without weights_only's advice around it."""
    for line in message.splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(_BOILERPLATE):
            first_sentence = line.split(". ")[0]
            return first_sentence if len(first_sentence) <= 160 else first_sentence[:157] + "..."
    return "no details"


def _flatten(obj: object, prefix: str = "", out: dict[str, object] | None = None) -> dict:
    out = {} if out is None else out
    # Empty containers stay as values, so an empty optimizer state is still visible.
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(obj, (list, tuple)) and obj:
        for index, value in enumerate(obj):
            _flatten(value, f"{prefix}.{index}" if prefix else str(index), out)
    else:
        out[prefix or "(root)"] = obj
    return out


def _rank(t: TensorDiff) -> tuple:
    size = math.inf if t.nan_differing else t.max_abs_diff
    return (-size, -(t.max_ulp_diff or 0), _natural(t.name))


def _natural(name: str) -> tuple:
    # "layers.2" before "layers.10": numeric components compare as numbers.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _groups(tensors: list[TensorDiff]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for t in tensors:
        prefix = t.name.rpartition(".")[0]
        group = groups.setdefault(
            prefix,
            {
                "prefix": prefix,
                "tensors": 0,
                "differing": 0,
                "max_abs_diff": 0.0,
                "nan_differing": 0,
            },
        )
        group["tensors"] += 1
        if not t.equal:
            group["differing"] += 1
            group["max_abs_diff"] = max(group["max_abs_diff"], t.max_abs_diff)
            group["nan_differing"] += t.nan_differing

    def rank(g: dict[str, Any]) -> tuple:
        size = math.inf if g["nan_differing"] else g["max_abs_diff"]
        return (g["differing"] == 0, -size, _natural(g["prefix"]))

    return sorted(groups.values(), key=rank)


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        # Bitwise, like tensors: nan == nan, -0.0 != 0.0.
        return struct.pack("<d", a) == struct.pack("<d", b)
    try:
        same = a == b
    except Exception:
        return repr(a) == repr(b)
    return same if isinstance(same, bool) else repr(a) == repr(b)


def _json_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Sparse tensors as dense, quantized ones as their float values: comparable by bits."""
    if tensor.is_quantized:
        return tensor.dequantize()
    if tensor.layout != torch.strided:
        return tensor.to_dense()
    return tensor


def _describe(leaf: object) -> str:
    if isinstance(leaf, torch.Tensor):
        return f"{dtype_name(leaf.dtype)}[{', '.join(str(n) for n in leaf.shape)}]"
    return type(leaf).__name__
