"""Compare two tensors bit by bit: how many elements differ, by how much, and by how many ULPs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Elements compared at a time: bounds the temporary copies (bit views, float64 differences).
CHUNK = 1 << 22

_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_TOP_BIT = np.uint64(1 << 63)
# Floating dtypes read as numbers with a sign bit; float8_e8m0fnu (no sign) and packed float4
# are compared by bits only.
_FLOAT_NAMES = (
    "float64 float32 float16 bfloat16 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz"
)
_INT_NAMES = "int64 int32 int16 int8 uint8 uint16 uint32 uint64"
# getattr: newer dtypes are missing from older torch builds.
_FLOATS = {getattr(torch, n) for n in _FLOAT_NAMES.split() if hasattr(torch, n)}
_INTS = {getattr(torch, n) for n in _INT_NAMES.split() if hasattr(torch, n)}


@dataclass(frozen=True)
class TensorDiff:
    """One tensor present in both checkpoints with the same shape and dtype.

    Attributes:
        name: dotted name, e.g. "model.0.weight" or "optimizer.state.0.exp_avg".
        dtype: e.g. "float32".
        shape: e.g. [4, 8] ([] for a scalar).
        equal: every element bitwise equal.
        differing: elements whose bits differ (a complex element counts once).
        max_abs_diff: largest |A-B| over differing elements without a NaN, computed in float64
            (for integer and bool tensors the exact integer difference); 0.0 when equal.
        max_ulp_diff: largest distance in units in the last place over the same elements, for
            floating and complex dtypes (complex: the larger of the two components; -0.0 and
            +0.0 are 0 apart); None for other dtypes.
        nan_differing: differing elements where either side is NaN (left out of the two maxima).
    """

    name: str
    dtype: str
    shape: list[int]
    equal: bool
    differing: int = 0
    max_abs_diff: float = 0.0
    max_ulp_diff: int | None = None
    nan_differing: int = 0


def compare_tensors(name: str, a: torch.Tensor, b: torch.Tensor) -> TensorDiff:
    """Compare two tensors of the same shape and dtype bit by bit, a chunk at a time.

    Args:
        name: the name to report.
        a: tensor from checkpoint A (any device; moved to the CPU a chunk at a time).
        b: tensor from checkpoint B.

    Returns:
        The TensorDiff (see its attributes for what NaN, -0.0 and integers give). For dtypes
        without a numeric reading here (packed float4, bits types) only ``equal`` and
        ``differing`` are filled.
    """
    kind = _kind(a.dtype)
    differing = nans = max_ulp = 0
    max_abs = 0.0
    for ca, cb in _paired_chunks(a, b):
        # One row per element; complex elements become (real, imag) rows.
        ra, rb = _rows(ca.cpu()), _rows(cb.cpu())
        bits_a, bits_b = _bits(ra), _bits(rb)
        if torch.equal(bits_a, bits_b):  # the common case, and much faster than the rest
            continue
        changed = (bits_a != bits_b).any(dim=1)
        positions = changed.nonzero().squeeze(1)
        differing += len(positions)
        if kind == "opaque":
            continue
        if len(positions) < len(changed):
            ra, rb = ra.index_select(0, positions), rb.index_select(0, positions)
        if kind == "int":
            max_abs = max(max_abs, float(_max_gap(_order_int(ra), _order_int(rb))))
            continue
        nan = (torch.isnan(ra) | torch.isnan(rb)).any(dim=1)
        nan_count = int(nan.sum())
        if nan_count:
            nans += nan_count
            ra, rb = ra[~nan], rb[~nan]
        if not len(ra):
            continue
        max_abs = max(max_abs, _max_abs(ra, rb))
        max_ulp = max(max_ulp, _max_ulp(_bits(ra), _bits(rb)))
    return TensorDiff(
        name=name,
        dtype=dtype_name(a.dtype),
        shape=list(a.shape),
        equal=differing == 0,
        differing=differing,
        max_abs_diff=max_abs,
        max_ulp_diff=max_ulp if kind == "float" else None,
        nan_differing=nans,
    )


def _paired_chunks(a: torch.Tensor, b: torch.Tensor):
    """Yield matching 1-D pieces of a and b of at most CHUNK elements each.

    The split depends only on the shape, so a contiguous and a strided tensor line up; a
    strided block is copied, never the whole tensor.
    """
    if a.numel() <= CHUNK or a.dim() == 0:
        yield a.reshape(-1), b.reshape(-1)
    elif a.dim() == 1:
        for i in range(0, a.shape[0], CHUNK):
            yield a[i : i + CHUNK], b[i : i + CHUNK]
    else:
        rows = CHUNK // max(1, a[0].numel())
        if rows == 0:
            for i in range(a.shape[0]):
                yield from _paired_chunks(a[i], b[i])
        else:
            for i in range(0, a.shape[0], rows):
                yield a[i : i + rows].reshape(-1), b[i : i + rows].reshape(-1)


def _kind(dtype: torch.dtype) -> str:
    """ "float" (also complex), "int" (also bool), or "opaque" (compared by bits only)."""
    if dtype.is_complex or dtype in _FLOATS:
        return "float"
    if dtype == torch.bool or dtype in _INTS:
        return "int"
    return "opaque"


def _rows(flat: torch.Tensor) -> torch.Tensor:
    """A 1-D piece as rows of numbers: [n, 2] for complex (real, imag), else [n, 1]."""
    if flat.is_complex():
        return torch.view_as_real(flat.resolve_conj())
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    elif _kind(flat.dtype) == "opaque":
        flat = flat.view(_SIGNED[flat.element_size()])
    return flat.unsqueeze(1)


def _bits(rows: torch.Tensor) -> torch.Tensor:
    """Integers with the same bits, so NaN == NaN when the bits match and -0.0 != 0.0."""
    if rows.is_floating_point():
        return rows.view(_SIGNED[rows.element_size()])
    return rows


def _max_abs(ra: torch.Tensor, rb: torch.Tensor) -> float:
    """Largest |a - b| in float64 over rows without NaN (rows of 2 are complex numbers)."""
    va, vb = ra.double(), rb.double()
    if va.shape[1] == 1:
        # Differing bits and no NaN: never inf - inf of one sign, so no NaN here.
        return float((va - vb).abs().max())
    # A complex pair may hold the same inf in one component; where() keeps that at 0, not NaN.
    delta = torch.where(va == vb, 0.0, va - vb)
    return float(torch.hypot(delta[:, 0], delta[:, 1]).max())


def _max_ulp(bits_a: torch.Tensor, bits_b: torch.Tensor) -> int:
    """Largest distance in ULPs between float bit patterns of the same width."""
    ordered_a, ordered_b = _order_float(bits_a), _order_float(bits_b)
    if bits_a.element_size() < 8:
        # Keys of 32 bits or fewer: their difference fits in int64.
        return int((ordered_a - ordered_b).abs().max())
    # 64-bit keys can be 2**64 apart: compare them as unsigned numbers.
    return _max_gap(_unsigned(ordered_a.numpy()), _unsigned(ordered_b.numpy()))


def _order_float(bits: torch.Tensor) -> torch.Tensor:
    """Map float bit patterns to int64 keys in the order of the floats, one key per ULP.

    Negative floats count down from -0.0, which meets +0.0 at 0: for a negative pattern,
    flipping the magnitude bits and adding 1 gives minus its magnitude, without overflow. So
    the key distance between two floats is the number of representable values between them.
    """
    signed = bits.reshape(-1).to(torch.int64)  # sign-extends narrower widths
    magnitude_bits = torch.iinfo(bits.dtype).max
    return torch.where(signed < 0, (signed ^ magnitude_bits) + 1, signed)


def _unsigned(signed: np.ndarray) -> np.ndarray:
    """int64 -> uint64 in the same order (shifted by 2**63)."""
    return signed.astype(np.int64).view(np.uint64) ^ _TOP_BIT


def _order_int(rows: torch.Tensor) -> np.ndarray:
    """Map integers of any width to uint64 keys in the same order (signed ones shifted by 2**63)."""
    values = rows.reshape(-1).numpy()
    if np.issubdtype(values.dtype, np.unsignedinteger):
        return values.astype(np.uint64)
    return _unsigned(values)


def _max_gap(keys_a: np.ndarray, keys_b: np.ndarray) -> int:
    # Subtracting the smaller uint64 from the larger cannot overflow, unlike int64 a - b.
    gaps = np.maximum(keys_a, keys_b) - np.minimum(keys_a, keys_b)
    return int(gaps.max()) if gaps.size else 0


def dtype_name(dtype: torch.dtype) -> str:
    """The dtype as reports write it: "float32", "bfloat16"."""
    return str(dtype).removeprefix("torch.")
