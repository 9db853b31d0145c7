"""Bitwise, order-sensitive fingerprints of tensors, computed on the tensor's own device.

A fingerprint is the 64-bit integer ``sum_i word_i * weight_i * block_i (mod 2**64)`` over the
tensor's raw words (its bits reinterpreted as integers: sign-extended, bytes zero-extended). Words
come in blocks of 2**20; within a block, the weight of position j is ``2 * perm(j) + 1``, with
``perm`` a fixed pseudo-random permutation of 30-bit numbers, so weights are odd, distinct and
below 2**31; each block has its own odd 64-bit multiplier ``block_i``. Integer arithmetic is exact
in any order, so the fingerprint is deterministic however the reduction is scheduled. Proofs, for
words of up to 32 bits:

- changing one word by d changes the sum by ``d * w * m``, zero mod 2**64 only if 2**64 divides
  d (w and m are odd): never. So one flipped bit always changes the fingerprint;
- swapping two different words of one block changes it by ``(a - b)(w_j - w_i) m``, nonzero and
  below 2**63 in size: never zero. So element order matters (``torch.hash_tensor``'s XOR would
  not see a swap).

Beside the fingerprint we keep two cheap magnitude stats, a float64 sum and the largest absolute
value, so that a report can say how big a difference is without storing tensors.

Results stay on the device as 0-dim tensors; :class:`Collector` stacks them and reads them back
once per batch, never once per tensor.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np
import torch

from bisector.torch_api import current_raw_stream

# Name of the fingerprint function, stored in every trace header: fingerprints are only
# comparable between traces that name the same one. Change it whenever the function changes.
SCHEME = "wsum64-v2"

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


def _perm30(x: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random permutation of the numbers below 2**30 (uint64 arrays).

    Each step is a bijection modulo 2**30: multiplying by an odd number, adding a constant,
    and ``x ^= x >> k``.
    """
    mask = np.uint64((1 << 30) - 1)
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0x2C1B3C6D) + np.uint64(0x297A2D39)) & mask
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x297A2D39)) & mask
        x ^= x >> np.uint64(13)
        x = (x * np.uint64(0x1B873593)) & mask
        return x ^ (x >> np.uint64(16))


def _weights(count: int) -> np.ndarray:
    """The weights of positions ``0..count-1`` of a block: odd, distinct, below 2**31 (int32)."""
    positions = np.arange(count, dtype=np.uint64)
    return (2 * _perm30(positions) + 1).astype(np.int32)


def block_multiplier(block: int) -> int:
    """The odd 64-bit multiplier of block number ``block`` (1 for block 0), as a signed int."""
    if block == 0:
        return 1
    value = _splitmix64(np.array([block], dtype=np.uint64)) | np.uint64(1)
    return int(value.view(np.int64)[0])


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``, copied without waiting for the work queued there.

    A blocking copy would wait for the user's kernels: a host sync we must never add.
    """
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class _Made:
    """When a device tensor was made, for kernels on other streams: each such stream waits for
    it once (on the device: no host sync) before its first use of the tensor."""

    def __init__(self, device: torch.device) -> None:
        stream = torch.cuda.current_stream(device)
        self._event = torch.cuda.Event()
        self._event.record(stream)
        self._streams = {stream.cuda_stream}

    def before(self, raw: int, device: torch.device) -> None:
        """Make the next kernels of ``device``'s current stream (its raw handle: ``raw``) wait
        until the tensor is made."""
        if raw not in self._streams:
            torch.cuda.current_stream(device).wait_event(self._event)
            self._streams.add(raw)


class _Weights:
    """Per-device cache of the position weights of one block."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, tuple[torch.Tensor, _Made | None]] = {}

    def get(self, device: torch.device, stream: int | None = None) -> torch.Tensor:
        """The weights on ``device``, ready for kernels on ``stream`` (the raw handle of its
        current stream; None: look it up)."""
        known = self._by_device.get(device)
        if known is None:
            weights = to_device(torch.from_numpy(_weights(_BLOCK)), device)
            made = _Made(device) if weights.is_cuda else None
            known = self._by_device[device] = (weights, made)
        weights, made = known
        if made is not None:
            made.before(current_raw_stream(device.index) if stream is None else stream, device)
        return weights


_WEIGHTS = _Weights()


def plain_values(tensor: torch.Tensor) -> torch.Tensor:
    """The plain tensor whose bits stand for ``tensor``: itself, or, for a wrapper subclass that
    holds one plain tensor (a DTensor: the shard or replica this rank holds), that tensor."""
    kind = type(tensor)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        return tensor
    flatten = getattr(tensor, "__tensor_flatten__", None)
    try:
        names, _ = flatten() if flatten is not None else ((), None)
    except Exception:  # a subclass of its own kind: compared as unhashable
        return tensor
    inner = [v for v in (getattr(tensor, n, None) for n in names) if isinstance(v, torch.Tensor)]
    if len(inner) == 1 and type(inner[0]) in (torch.Tensor, torch.nn.Parameter):
        return inner[0]
    return tensor


def hashable(tensor: torch.Tensor) -> bool:
    """True if the tensor has plain bits we can read.

    Sparse, quantized, nested and meta tensors, tensor subclasses (DTensor), tensors whose
    storage was resized to nothing, and dtypes of no whole byte size have not.
    """
    kind = type(tensor)
    if kind is not torch.Tensor and kind is not torch.nn.Parameter:
        return False
    dtype = tensor.dtype
    words = _HAS_WORDS.get(dtype)
    if words is None:
        words = _HAS_WORDS[dtype] = not _is_quantized(dtype) and (
            dtype.itemsize in _WORD_DTYPE or dtype.is_complex
        )
    if not words or tensor.layout != _STRIDED or tensor.is_meta:
        return False
    # A freed storage (FSDP resizes unsharded parameters to 0) has no bits.
    return not tensor.numel() or tensor.untyped_storage().nbytes() > 0


_STRIDED = torch.strided
_HAS_WORDS: dict[torch.dtype, bool] = {}  # dtype -> whether its elements are whole words


def sparse_hashable(tensor: torch.Tensor) -> bool:
    """True for a sparse COO tensor whose values have plain bits (see ``Collector.add_sparse``):
    the gradient of an embedding with ``sparse=True``, which SparseAdam reads."""
    kind = type(tensor)
    if kind is not torch.Tensor and kind is not torch.nn.Parameter:
        return False
    return tensor.layout == torch.sparse_coo and hashable(tensor._values())


def _is_quantized(dtype: torch.dtype) -> bool:
    return str(dtype).startswith("torch.q")  # qint8, quint8, qint32, quint4x2, quint2x4


def _values(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as flat numbers, one per word (complex: real and imaginary parts;
    bool: bytes). Called where autograd is not recording (the dispatch handler, no_grad)."""
    flat = tensor.reshape(-1)
    if flat.is_complex():
        return torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8)
    return flat


def _words(values: torch.Tensor) -> torch.Tensor | None:
    """Flat numbers (from ``_values``) reinterpreted as integers of the same size."""
    word = _WORD_DTYPE.get(values.element_size())
    if word is None:
        return None
    return values.view(word) if values.dtype != word else values


def word_view(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor's bits as a flat, contiguous integer tensor, or None if it has no plain bits.

    Called where autograd is not recording (inside the dispatch handler, or under no_grad).
    """
    return _words(_values(tensor)) if hashable(tensor) else None


def fingerprint_words(words: torch.Tensor) -> torch.Tensor:
    """The 64-bit fingerprint of a flat integer tensor, as a 0-dim int64 tensor on its device."""
    weights = _WEIGHTS.get(words.device)
    total = torch.zeros((), dtype=torch.int64, device=words.device)
    numel = words.numel()
    for block, start in enumerate(range(0, numel, _BLOCK)):
        chunk = words[start : start + _BLOCK].to(torch.int64)
        partial = (chunk * weights[: chunk.numel()]).sum()  # int64 * int32 -> int64
        if block:
            partial = partial * block_multiplier(block)
        total = total + partial
    return total


def magnitude(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 sum and largest absolute value of a tensor, as 0-dim float64 device tensors."""
    flat = _values(tensor)
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
    with torch.no_grad():
        words = word_view(tensor)
        if words is None:
            return None
        return int(fingerprint_words(words).item()) & _MASK64


# The odd multiplier of a sparse tensor's index fingerprint (see ``Collector.add_sparse``).
_INDEX_MIX = block_multiplier(1)

# Outputs of at most this many elements are copied aside (one cheap op) and fingerprinted in
# batches, many at once: per-op launches, not bytes, are what small tensors cost.
SMALL = 1 << 16
# Bytes of such copies held before they are fingerprinted (bounds the memory we add).
_STAGED_BYTES = 64 << 20


class Collector:
    """Queues device-side fingerprints and stats of outputs; reads them back in batches.

    A large tensor is fingerprinted at once, on its device, into 0-dim results. A small one is
    copied aside and fingerprinted later with others of its device and dtype, in a few vectorised
    ops (the same function, computed per segment). Nothing is read back to the host until
    ``drain``, which does it in one transfer per device.
    """

    def __init__(self) -> None:
        self._count = 0
        self._direct: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._rows: dict[torch.device, _ResultRows] = {}
        self._full_rows: list[_ResultRows] = []
        # (device index, -1 for the CPU; dtype) -> [(entry, copy: a tensor, or its bytes)]
        self._staged: dict[tuple[int, torch.dtype], list[tuple[int, Any]]] = {}
        self._staged_bytes = 0
        self._batches: list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # CUDA streams that queued our work since the last batch: an op's output is copied and
        # fingerprinted on the op's stream (FSDP2 copies in and reduces on streams of its own,
        # autograd runs a backward op on its forward's stream), and read on the current one.
        self._streams: dict[tuple[int, int], torch.cuda.Stream] = {}  # (device, raw handle)
        self._side = False  # work was queued on a stream other than the reading one

    def __len__(self) -> int:
        return self._count

    def add(self, tensor: torch.Tensor) -> None:
        """Queue the fingerprint and stats of a hashable tensor (see ``hashable``).

        Called where autograd is not recording (inside the dispatch handler, or under no_grad).
        """
        entry = self._count
        self._count += 1
        if tensor.requires_grad:
            # Inside a dispatch handler autograd still sees a tensor that requires grad (a
            # parameter read as a leaf): our reads and copies must not join its graph.
            tensor = tensor.detach()
        if tensor.is_cuda:
            device = tensor.device
            raw = self._note_stream(device)
            fused = _fused()
            if fused is not None:  # one launch, whatever the size: no copy
                rows = self._rows.get(device)
                if rows is None or rows.full:
                    if rows is not None:
                        self._full_rows.append(rows)
                    rows = self._rows[device] = _ResultRows(device)
                weights = _WEIGHTS.get(device, raw)
                row = rows.take(entry, raw)
                if not fused.launch_in_place(tensor, weights, _BLOCK, rows.buffers, row, raw):
                    values = _values(tensor)
                    words = _words(values)
                    assert words is not None  # (a hashable tensor)
                    fused.fingerprint_into(words, values, weights, _BLOCK, rows.buffers, row)
                    if values.data_ptr() == tensor.data_ptr() and values.numel() == tensor.numel():
                        fused.note_in_place(tensor.dtype, words.dtype, values.dtype)
                return
        if tensor.numel() <= SMALL:
            key = (tensor.get_device(), tensor.dtype)
            copy: torch.Tensor | bytes | None
            if key[0] < 0 and key[1] in _NUMPY_WORDS:  # on the CPU, the cheapest copy there is
                plain = tensor if _plain_layout(tensor) else tensor.resolve_neg().contiguous()
                copy = _bytes_of(plain)
            else:  # no reshape here: a view op per output costs more than the copy itself
                copy = tensor.clone()
            staged = self._staged.get(key)
            if staged is None:
                staged = self._staged[key] = []
            staged.append((entry, copy))
            self._staged_bytes += len(copy) if isinstance(copy, bytes) else copy.nbytes
            if self._staged_bytes > _STAGED_BYTES:
                self._settle()
            return
        if not tensor.is_cuda:
            numbers = _host_large(tensor)
            if numbers is not None:
                fp, total_, largest_ = numbers
                self._direct.append(
                    (
                        entry,
                        torch.tensor(fp, dtype=torch.int64),
                        torch.tensor(total_, dtype=torch.float64),
                        torch.tensor(largest_, dtype=torch.float64),
                    )
                )
                return
        total, largest = magnitude(tensor)
        words = word_view(tensor)
        assert words is not None  # (the caller checked ``hashable``)
        self._direct.append((entry, fingerprint_words(words), total, largest))

    def add_sparse(self, tensor: torch.Tensor) -> None:
        """Queue a sparse COO tensor (see ``sparse_hashable``): as fingerprint, that of its
        values plus an odd multiple of its indices' (both in the order the tensor holds them:
        an uncoalesced tensor's order counts, as a dense tensor's does); as stats, its values'.
        Called where autograd is not recording."""
        entry = self._count
        self._count += 1
        if tensor.requires_grad:
            tensor = tensor.detach()
        if tensor.is_cuda:
            self._note_stream(tensor.device)
        values, indices = tensor._values(), tensor._indices()
        value_words, index_words = word_view(values), word_view(indices)
        assert value_words is not None and index_words is not None  # (``sparse_hashable``)
        fp = fingerprint_words(value_words) + fingerprint_words(index_words) * _INDEX_MIX
        self._direct.append((entry, fp, *magnitude(values)))

    def _note_stream(self, device: torch.device) -> int:
        """The raw handle of ``device``'s current stream, remembered as one that queued our
        work (see ``_join_streams``)."""
        raw = current_raw_stream(device.index)
        if (device.index, raw) not in self._streams:
            self._streams[(device.index, raw)] = torch.cuda.current_stream(device)
        return raw

    def add_blank(self) -> None:
        """Queue a placeholder for an output without fingerprint (uninitialised, unhashable)."""
        self._count += 1

    def truncate(self, count: int) -> None:
        """Forget everything queued after the first ``count`` entries."""
        self._count = min(self._count, count)
        self._direct = [d for d in self._direct if d[0] < count]
        for rows in [*self._full_rows, *self._rows.values()]:
            rows.entries = [e if e < count else -1 for e in rows.entries]
        for key, items in self._staged.items():
            self._staged[key] = [item for item in items if item[0] < count]
        kept = []
        for entries, fps, sums, maxes in self._batches:
            keep = entries < count
            index = torch.from_numpy(np.flatnonzero(keep)).to(fps.device)
            kept.append((entries[keep], fps[index], sums[index], maxes[index]))
        self._batches = kept

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read back everything queued: (fingerprints int64, sums float64, abs-max float32)."""
        return self.drain_async().result()

    def drain_async(self) -> PendingResults:
        """Start reading back everything queued, without waiting for the device: the copies go
        to pinned host memory behind the work already queued. The collector is empty after."""
        self._settle()
        parts = list(self._batches)
        self._mark_read(column for _, *columns in parts for column in columns)
        by_device: dict[torch.device, list] = {}
        for item in self._direct:
            by_device.setdefault(item[1].device, []).append(item)
        for items in by_device.values():
            self._mark_read(t for item in items for t in item[1:])
            entries = np.array([item[0] for item in items], dtype=np.int64)
            fps, sums, maxes = (torch.stack([i[column] for i in items]) for column in (1, 2, 3))
            parts.append((entries, fps, sums, maxes))
        for rows in [*self._full_rows, *self._rows.values()]:
            self._mark_read(rows.buffers)
            used = len(rows.entries)
            entries = np.array(rows.entries, dtype=np.int64)  # -1: an entry truncated away
            fps, sums, maxes = (buffer[:used] for buffer in rows.buffers)
            parts.append((entries, fps, sums, maxes))
        pending = PendingResults(self._count, parts)
        self._side, self._streams = False, {}
        self._count, self._direct, self._batches = 0, [], []
        self._rows, self._full_rows = {}, []
        return pending

    def _join_streams(self) -> None:
        """Make the current stream of each device wait for the work queued on the other streams
        (a dependency on the device: no host sync). The streams are remembered until the
        collector is drained: a batch may be fingerprinted on a side stream (when the staged
        copies overflow inside an op that runs there) and read on another, which must then
        wait for that stream too. ``_side`` is set while tensors made on other streams await
        reading: they are then marked as used by the reading stream, so the caching allocator
        does not hand out their memory before it has read them."""
        for stream in list(self._streams.values()):
            current = torch.cuda.current_stream(stream.device)
            if stream != current:
                current.wait_stream(stream)
                self._side = True

    def _mark_read(self, tensors) -> None:
        """See ``_join_streams``: the reading stream uses these tensors (device ones only)."""
        if self._side:
            for tensor in tensors:
                if tensor.is_cuda:
                    tensor.record_stream(torch.cuda.current_stream(tensor.device))

    def _settle(self) -> None:
        """Fingerprint every staged copy, one batch per (device, dtype), on the current stream."""
        staged, self._staged, self._staged_bytes = self._staged, {}, 0
        self._join_streams()
        for (device_index, dtype), items in staged.items():
            if not items:
                continue
            entries = np.array([entry for entry, _ in items], dtype=np.int64)
            if isinstance(items[0][1], bytes):
                self._batches.append((entries, *_host_batch(dtype, [c for _, c in items])))
                continue
            if device_index >= 0:  # the batch is computed here: read after it
                stream = torch.cuda.current_stream(device_index)
                self._streams.setdefault((stream.device_index, stream.cuda_stream), stream)
                self._mark_read(copy for _, copy in items)
            self._batches.append((entries, *_batch([copy for _, copy in items])))


class PendingResults:
    """Fingerprints and stats on their way to the host (see ``Collector.drain_async``)."""

    def __init__(self, count: int, parts: list) -> None:
        self._count = count
        self._parts = []
        self._events = []
        for entries, *columns in parts:
            device = columns[0].device
            if device.type == "cuda":
                hosts = [torch.empty(c.shape, dtype=c.dtype, pin_memory=True) for c in columns]
                for host, column in zip(hosts, columns, strict=True):
                    host.copy_(column, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                self._events.append(event)
                columns = hosts
            self._parts.append((entries, columns))

    def ready(self) -> bool:
        """True once the results are on the host (never waits)."""
        return all(event.query() for event in self._events)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fingerprints int64, sums float64, abs-max float32), waiting for the copies."""
        for event in self._events:
            event.synchronize()
        fps = np.zeros(self._count, dtype=np.int64)
        sums = np.zeros(self._count, dtype=np.float64)
        maxes = np.zeros(self._count, dtype=np.float64)
        for entries, columns in self._parts:
            keep = entries >= 0
            for column, out in zip(columns, (fps, sums, maxes), strict=True):
                out[entries[keep]] = column.numpy()[keep]
        return fps, sums, maxes.astype(np.float32)


class _ResultRows:
    """Zeroed device vectors that fused kernels add their results into, one row per output."""

    CAPACITY = 4096

    def __init__(self, device: torch.device):
        self.buffers = (
            torch.zeros(self.CAPACITY, dtype=torch.int64, device=device),
            torch.zeros(self.CAPACITY, dtype=torch.float64, device=device),
            torch.zeros(self.CAPACITY, dtype=torch.float32, device=device),
        )
        self.entries: list[int] = []
        self._made = _Made(device)  # kernels on other streams add into the zeros once made

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.CAPACITY

    def take(self, entry: int, stream: int) -> int:
        """The row for collector entry ``entry``, written by a kernel on ``stream`` (the raw
        handle of the device's current stream)."""
        self._made.before(stream, self.buffers[0].device)
        self.entries.append(entry)
        return len(self.entries) - 1


_FUSED: list = []


def _fused():
    """The Triton kernel module, or None where Triton is missing (or BISECTOR_NO_TRITON is set)."""
    if not _FUSED:
        module = None
        if not os.environ.get("BISECTOR_NO_TRITON"):
            try:
                from bisector.capture import triton_fingerprint as module
            except Exception:  # noqa: BLE001 - no Triton, or a Triton that cannot start
                module = None
        _FUSED.append(module)
    return _FUSED[0]


# CPU dtypes whose small outputs are fingerprinted with numpy: (word dtype, value dtype).
_NUMPY_WORDS = {
    torch.float32: (np.int32, np.float32),
    torch.float64: (np.int64, np.float64),
    torch.float16: (np.int16, np.float16),
    torch.int64: (np.int64, np.int64),
    torch.int32: (np.int32, np.int32),
    torch.int16: (np.int16, np.int16),
    torch.int8: (np.uint8, np.int8),  # (1-byte words are zero-extended)
    torch.uint8: (np.uint8, np.uint8),
    torch.bool: (np.uint8, np.uint8),
}
_HOST_WEIGHTS: list[np.ndarray] = []


# The script's CPU tensors are read through their addresses, never through ``Tensor.numpy``:
# that marks the tensor's storage as not resizable for good (FSDP2 then fails to free its
# unsharded parameters), and while recording it is wrapped to note values the script takes out.
def _plain_layout(tensor: torch.Tensor) -> bool:
    """Its elements lie in its memory as they are, in logical order (contiguous, no negative
    bit to apply)."""
    return tensor.is_contiguous() and not tensor.is_neg()


def _bytes_of(tensor: torch.Tensor) -> bytes:
    """A copy of the bytes of a contiguous CPU tensor (see ``_plain_layout``)."""
    size = tensor.nbytes
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def _array_of(tensor: torch.Tensor, dtype) -> np.ndarray:
    """A numpy array over the memory of a contiguous CPU tensor (see ``_plain_layout``),
    valid while the tensor lives; torch is not told, so its storage stays as it was."""
    size = tensor.nbytes
    if not size:
        return np.zeros(0, dtype=dtype)
    memory = (ctypes.c_char * size).from_address(tensor.data_ptr())
    return np.frombuffer(memoryview(memory), dtype=dtype)


def _host_weights() -> np.ndarray:
    """The weights of one block as uint64 (unsigned, so that numpy's products and sums wrap
    mod 2**64 by definition, as the fingerprint's do)."""
    if not _HOST_WEIGHTS:
        _HOST_WEIGHTS.append(_weights(_BLOCK).astype(np.uint64))
    return _HOST_WEIGHTS[0]


def _host_batch(
    dtype: torch.dtype, copies: list[bytes]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_batch`` for the bytes of small CPU tensors of one dtype, with numpy: one pass over
    all of them, each segment summed by ``reduceat``."""
    word, value = _NUMPY_WORDS[dtype]
    size = np.dtype(word).itemsize
    raw = b"".join(copies)
    lengths = np.fromiter((len(c) for c in copies), dtype=np.int64, count=len(copies)) // size
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(raw) // size) - np.repeat(starts, lengths)
    # (a signed word becomes its value mod 2**64: sign-extended, as the definition has it)
    products = np.frombuffer(raw, dtype=word).astype(np.uint64) * _host_weights()[position]
    values = np.frombuffer(raw, dtype=value).astype(np.float64)
    fps = np.zeros(len(copies), dtype=np.uint64)
    sums = np.zeros(len(copies), dtype=np.float64)
    maxes = np.zeros(len(copies), dtype=np.float64)
    filled = lengths > 0  # (reduceat takes an empty segment's next element)
    if filled.any():
        at = starts[filled]
        fps[filled] = np.add.reduceat(products, at)
        sums[filled] = np.add.reduceat(values, at)
        maxes[filled] = np.maximum.reduceat(np.abs(values), at)
    return torch.from_numpy(fps.view(np.int64)), torch.from_numpy(sums), torch.from_numpy(maxes)


def _host_large(tensor: torch.Tensor) -> tuple[int, float, float] | None:
    """(fingerprint, float64 sum, largest absolute value) of a CPU tensor, with numpy: an
    unsigned 64-bit dot product per block is an order of magnitude faster than torch's int64
    multiply on a CPU. None for a dtype numpy lacks (bfloat16 is read through its bits)."""
    if tensor.dtype != torch.bfloat16 and tensor.dtype not in _NUMPY_WORDS:
        return None
    if not _plain_layout(tensor):
        tensor = tensor.resolve_neg().contiguous()  # (a copy of our own)
    if tensor.dtype == torch.bfloat16:
        words = _array_of(tensor, np.int16)
        values = (words.astype(np.int32) << 16).view(np.float32)  # the same numbers, as fp32
    else:
        word, value = _NUMPY_WORDS[tensor.dtype]
        values = _array_of(tensor, value)
        words = values.view(word)
    weights = _host_weights()
    total = 0
    for block, start in enumerate(range(0, words.size, _BLOCK)):
        chunk = words[start : start + _BLOCK].astype(np.uint64)
        total += int(np.dot(chunk, weights[: chunk.size])) * block_multiplier(block)
    total &= _MASK64
    signed = total - (1 << 64) if total >= 1 << 63 else total
    if not values.size:
        return signed, 0.0, 0.0
    largest = max(float(values.max()), -float(values.min()))  # (nan if any is nan)
    return signed, float(np.sum(values, dtype=np.float64)), largest


def _batch(copies: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fingerprints, sums and abs-maxes of flat tensors of one device and dtype, as vectors.

    Each tensor has at most SMALL elements, so all its words fall in block 0: its fingerprint is
    ``sum_j word_j * weight_j`` with j its position in the tensor, as for a single tensor.
    """
    device = copies[0].device
    count = len(copies)
    flat = torch._utils._flatten_dense_tensors(copies)  # one op: all of them, in logical order
    elements = _values(flat)  # one per word, so words and values share their segments
    words = _words(elements)
    assert words is not None  # (copies of hashable tensors)
    per_element = words.numel() // flat.numel() if flat.numel() else 1
    total = words.numel()
    lengths = to_device(
        torch.tensor([c.numel() * per_element for c in copies], dtype=torch.int64), device
    )
    # output_size given: repeat_interleave need not read the lengths back to size its result
    segment = torch.repeat_interleave(
        torch.arange(count, device=device), lengths, output_size=total
    )
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(total, device=device) - torch.repeat_interleave(
        starts, lengths, output_size=total
    )
    weights = _WEIGHTS.get(device).index_select(0, position)  # (indexing with [] is far slower)
    products = words.to(torch.int64) * weights.to(torch.int64)
    fps = torch.zeros(count, dtype=torch.int64, device=device).index_add_(0, segment, products)

    values = elements.to(torch.float64)
    sums = torch.zeros(count, dtype=torch.float64, device=device).index_add_(0, segment, values)
    maxes = torch.zeros(count, dtype=torch.float64, device=device).scatter_reduce_(
        0, segment, values.abs(), reduce="amax", include_self=True
    )
    return fps, sums, maxes
