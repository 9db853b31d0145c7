"""Read .safetensors files with the safetensors library, mapped from the file as it does (a
checkpoint larger than RAM can be compared).

The format: 8 bytes little-endian header length N, then N bytes of JSON
``{name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the raw little-endian data. ``header_length`` reads just enough of it to tell a
safetensors file from a torch.save one (``checkpoint.sniff_checkpoint``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

from bisector.errors import TraceError

# The safetensors library refuses headers over 100 MB; so does the sniffing.
MAX_HEADER = 100 * 1024 * 1024


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
    """Every tensor of a safetensors file (the ``__metadata__`` strings are skipped).

    Args:
        path: the .safetensors file.

    Returns:
        Tensor name -> tensor.

    Raises:
        TraceError: the file cannot be read or breaks the format (one line naming the file).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as exc:
        why = str(exc).splitlines()[0].removeprefix("Error while deserializing header: ")
        raise TraceError(f"{path} is a corrupt safetensors file: {why}") from None
    except OSError as exc:
        raise TraceError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
