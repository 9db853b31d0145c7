"""Read .safetensors files without the safetensors package, mapping tensors instead of copying.

The format: 8 bytes little-endian header length N, then N bytes of JSON
``{name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the raw little-endian data; offsets count from the first byte after the header.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
import warnings
from pathlib import Path

import torch

from bisector.errors import TraceError

# The safetensors library refuses headers over 100 MB; so do we (a larger one is corrupt).
MAX_HEADER = 100 * 1024 * 1024


def _dtypes() -> dict[str, torch.dtype]:
    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    # These exist only in newer torch builds.
    optional = {
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
    }
    for code, name in optional.items():
        if hasattr(torch, name):
            table[code] = getattr(torch, name)
    return table


DTYPES = _dtypes()


def header_length(first: bytes, file_size: int) -> int | None:
    """The header length a file's first 8 bytes announce, or None if it cannot be a header.

    Args:
        first: the file's first bytes (at least 8).
        file_size: the file's size in bytes.

    Returns:
        The header length when it fits in the file and under MAX_HEADER, else None.
    """
    if len(first) < 8:
        return None
    (length,) = struct.unpack("<Q", first[:8])
    if length < 2 or length > MAX_HEADER or 8 + length > file_size:
        return None
    return length


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map every tensor of a safetensors file (the ``__metadata__`` strings are skipped).

    The tensors share memory with a read-only memory map of the file, so a file larger than RAM
    can be compared; do not write into them.

    Args:
        path: the .safetensors file.

    Returns:
        Tensor name -> tensor, in the header's order.

    Raises:
        TraceError: the file cannot be read or breaks the format (one line naming the file).
    """
    path = Path(path)
    if sys.byteorder != "little":
        raise TraceError(f"cannot read {path}: safetensors data is little-endian, this host is not")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(8)
            length = header_length(first, size)
            if length is None:
                raise _corrupt(path, "the header length does not fit in the file")
            raw_header = f.read(length)
            # mmap takes its own reference to the file, so closing f afterwards is fine.
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise TraceError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _check_entry(path, name, entry, size - start)
        tensors[name] = _map(mapped, dtype, shape, start + begin, end - begin)
    return tensors


def _check_entry(
    path: Path, name: str, entry: object, data_size: int
) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"the entry for {name!r} is not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in DTYPES:
        raise _corrupt(path, f"{name!r} has an unsupported dtype {code!r}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _corrupt(path, f"{name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise _corrupt(path, f"{name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise _corrupt(path, f"{name!r} points past the end of the file ({begin}..{end})")
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise _corrupt(
            path, f"{name!r} holds {end - begin} bytes, but {code}{shape} needs {expected}"
        )
    return dtype, shape, begin, end


def _map(mapped: mmap.mmap, dtype: torch.dtype, shape: list[int], offset: int, nbytes: int):
    if nbytes == 0:
        # frombuffer refuses a count of 0.
        return torch.empty(shape, dtype=dtype)
    # frombuffer warns that the buffer is read-only: on purpose, nothing writes to it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(mapped, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
    return flat.view(shape)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _corrupt(path: Path, why: str) -> TraceError:
    return TraceError(f"{path} is a corrupt safetensors file: {why}")
