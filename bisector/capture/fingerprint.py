"""Bitwise, order-sensitive fingerprints of tensors, computed on the tensor's own device.

A fingerprint is the 64-bit integer ``sum_i word_i * weight_i (mod 2**64)`` over the tensor's
raw words (its bits reinterpreted as integers), with one odd pseudo-random weight per position.
Integer arithmetic is exact in any order, so the fingerprint itself is deterministic however the
reduction is scheduled. Because every weight is odd, changing any single word (one flipped bit)
always changes the fingerprint, and because weights differ by position, swapping two different
elements changes it too (unlike ``torch.hash_tensor``'s XOR).

Beside the fingerprint we keep two cheap magnitude stats, a float64 sum and the largest absolute
value, so that a report can say how big a difference is without storing tensors.

Results stay on the device as 0-dim tensors; :class:`Collector` stacks them and reads them back
once per batch, never once per tensor.
"""

from __future__ import annotations

import numpy as np
import torch

# Name of the fingerprint function, stored in every trace header: fingerprints are only
# comparable between traces that name the same one. Change it whenever the function changes.
SCHEME = "wsum64-v1"

# Words are processed in blocks so that widening to int64 never needs more than this many elements
# of scratch memory, whatever the tensor's size.
_BLOCK = 1 << 20
_MASK64 = (1 << 64) - 1

# Integer dtype of the same element size, used to reinterpret a tensor's bits.
_WORD_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays: a cheap, well-mixed, fixed pseudo-random map."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _odd_weights(start: int, count: int) -> np.ndarray:
    """``count`` odd 64-bit weights for positions ``start..start+count-1`` (int64 bits)."""
    positions = np.arange(start, start + count, dtype=np.uint64)
    return (_splitmix64(positions) | np.uint64(1)).view(np.int64)


def block_multiplier(block: int) -> int:
    """The odd multiplier of block number ``block``, as a signed 64-bit Python int."""
    value = int(_odd_weights(1 << 40 | block, 1)[0])
    return value


class _Weights:
    """Per-device cache of the position weights of one block."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        weights = self._by_device.get(device)
        if weights is None:
            weights = torch.from_numpy(_odd_weights(0, _BLOCK)).to(device)
            self._by_device[device] = weights
        return weights


_WEIGHTS = _Weights()


def word_view(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor's bits as a flat, contiguous integer tensor, or None if it has no plain bits.

    Sparse, quantized, nested and meta tensors and tensor subclasses have no plain bits we can read.
    """
    if type(tensor) is not torch.Tensor and not isinstance(tensor, torch.nn.Parameter):
        return None
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        return None
    flat = tensor.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8)
    size = flat.element_size()
    word = _WORD_DTYPE.get(size)
    if word is None:
        return None
    return flat.view(word) if flat.dtype != word else flat


def fingerprint_words(words: torch.Tensor) -> torch.Tensor:
    """The 64-bit fingerprint of a flat integer tensor, as a 0-dim int64 tensor on its device."""
    weights = _WEIGHTS.get(words.device)
    total = torch.zeros((), dtype=torch.int64, device=words.device)
    numel = words.numel()
    for block, start in enumerate(range(0, numel, _BLOCK)):
        chunk = words[start : start + _BLOCK].to(torch.int64)
        partial = (chunk * weights[: chunk.numel()]).sum()
        if block:
            partial = partial * block_multiplier(block)
        total = total + partial
    return total


def magnitude(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 sum and largest absolute value of a tensor, as 0-dim float64 device tensors."""
    flat = tensor.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    total = flat.sum(dtype=torch.float64)
    if flat.numel() == 0:
        return total, torch.zeros((), dtype=torch.float64, device=flat.device)
    # One pass for both extremes; much cheaper than abs().max() or an inf-norm on CPU.
    low, high = torch.aminmax(flat)
    largest = torch.maximum(high.to(torch.float64), -low.to(torch.float64))
    return total, largest


def fingerprint(tensor: torch.Tensor) -> int | None:
    """Fingerprint of one tensor as a Python int (reads it back: for tests and tools, not per op).

    Args:
        tensor: any strided tensor, on any device.

    Returns:
        The fingerprint as an unsigned 64-bit int, or None for tensors without plain bits.

    Example:
        >>> a = torch.tensor([1.0, 2.0]); b = torch.tensor([2.0, 1.0])
        >>> fingerprint(a) != fingerprint(b)
        True
    """
    words = word_view(tensor)
    if words is None:
        return None
    return int(fingerprint_words(words).item()) & _MASK64


class Collector:
    """Queues device-side fingerprints and stats of outputs; reads them back in batches.

    ``add`` returns immediately, leaving the work queued on the tensor's device. ``drain`` reads
    everything queued so far back to the host in one transfer per device.
    """

    def __init__(self) -> None:
        self._fps: list[torch.Tensor] = []
        self._sums: list[torch.Tensor] = []
        self._maxes: list[torch.Tensor] = []
        self._zeros: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cpu_zero = (torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.float64))

    def __len__(self) -> int:
        return len(self._fps)

    def add(self, tensor: torch.Tensor, words: torch.Tensor) -> None:
        """Queue the fingerprint of ``words`` and the magnitude stats of ``tensor``."""
        self._fps.append(fingerprint_words(words))
        total, largest = magnitude(tensor)
        self._sums.append(total)
        self._maxes.append(largest)

    def add_blank(self) -> None:
        """Queue a placeholder for an output without fingerprint (uninitialised, unhashable)."""
        izero, fzero = self._cpu_zero
        self._fps.append(izero)
        self._sums.append(fzero)
        self._maxes.append(fzero)

    def truncate(self, count: int) -> None:
        """Forget everything queued after the first ``count`` entries."""
        del self._fps[count:], self._sums[count:], self._maxes[count:]

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read back everything queued: (fingerprints int64, sums float64, abs-max float32)."""
        fps, sums, maxes = self._fps, self._sums, self._maxes
        self._fps, self._sums, self._maxes = [], [], []
        return (
            _gather(fps, torch.int64),
            _gather(sums, torch.float64),
            _gather(maxes, torch.float64).astype(np.float32),
        )


def _gather(values: list[torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    """Stack 0-dim tensors that may live on several devices into one host array, in order."""
    out = np.zeros(len(values), dtype=torch.empty((), dtype=dtype).numpy().dtype)
    if not values:
        return out
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        by_device.setdefault(value.device, []).append(i)
    for indices in by_device.values():
        stacked = torch.stack([values[i] for i in indices]).to("cpu").numpy()
        out[np.asarray(indices)] = stacked
    return out
