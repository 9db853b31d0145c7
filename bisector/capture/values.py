"""The value table: which recorded event produced the current value of each storage.

Every tensor an op reads is looked up here to find its producer (the dataflow edge of the
trace); every tensor an op writes is registered. A storage is known by its address while it
lives (a weak reference keeps the address from being reused meanwhile), its value by the
version counter of the tensor that last wrote it. Where one event writes several parts of a
storage (a foreach copy into the views of one flat buffer), each part keeps its slot. A value no
recorded event made is read as a leaf of the bytes the reading tensor spans, not of its whole
storage (whose other bytes may never have been written: an MSE loss is a 0-d view of its
elementwise buffer); a later read of bytes no leaf spans is a leaf of its own.

Entries are tuples of ints (and the weak reference as an int), replaced rather than changed:
such tuples are not tracked by Python's garbage collector, which otherwise promotes every entry
to its oldest generation and, with a large heap (torch, transformers), runs a full collection
every few thousand ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bisector.capture.fingerprint import plain_values
from bisector.torch_api import free_weak, weak_expired, weak_storage

# An entry's fields: (version, event, slot, weak reference, bump, parts or None, leaves or None)
_VERSION, _EVENT, _SLOT, _WEAK, _BUMP, _PARTS, _LEAVES = range(7)

# Leaves of one storage value kept apart at most; the next is read as the whole storage.
MAX_LEAF_SPANS = 64


class ValueTable:
    """Storage -> (version, event, slot, weak reference, bump, parts or None, leaves or None).

    ``parts``: (byte start, end, slot) of each part one event wrote; ``leaves``: (byte start,
    end, event) of each leaf read of the storage's current value (a value no event made).

    Call ``close`` once done: it lets go of the weak references.
    """

    def __init__(self) -> None:
        self._states: dict[int, tuple] = {}
        self._pruned_at = 0

    def find(
        self, t: torch.Tensor, storage
    ) -> tuple[list[tuple[int, int]] | None, tuple[int, int] | None]:
        """(refs, None): the (event, slot) pairs the tensor's current value comes from (one,
        or each part it reads of what one event wrote in parts). (None, previous): the value
        is not one we saw made: another version counter over the same storage (``p.data.add_``
        bumps ``p.data``'s, not ``p``'s) or a write we did not see; ``previous`` is the last
        value we know there (the caller reads it again as a leaf whose input that is, so a
        difference it carries is not taken for a new one), or None for a storage never seen
        or bytes of a leaf's storage that no leaf read spans."""
        entry = self._states.get(storage._cdata)
        if entry is None:
            return None, None
        version = version_of(t)
        if entry[_VERSION] != version:
            if not (entry[_BUMP] and entry[_VERSION] + 1 == version):
                return None, (entry[_EVENT], entry[_SLOT])
            # The version bump of an in-place op happens after the op's handler returns.
            entry = self._states[storage._cdata] = (version, *entry[1:4], False, *entry[5:])
        if entry[_LEAVES] is not None:
            start, end = byte_span(t)
            for first, last, event in reversed(entry[_LEAVES]):
                if first <= start and end <= last:
                    return [(event, 0)], None
            return None, None
        if entry[_PARTS] is None:
            return [(entry[_EVENT], entry[_SLOT])], None
        event = entry[_EVENT]
        return [(event, slot) for slot in parts_read(entry[_PARTS], byte_span(t))], None

    def register(self, t: torch.Tensor, index: int, slot: int, bump: bool = False) -> int | None:
        """Remember that event ``index`` (output ``slot``) produced the tensor's current value;
        returns the storage's key (None: no storage). ``bump``: the op wrote the tensor in
        place, so autograd's ADInplaceOrView layer will bump its version counter by one once
        the handler has returned."""
        storage = storage_of(t)
        if storage is None:
            return None
        if t.layout is _SPARSE_COO:  # (keyed by its values' storage: see ``storage_of``)
            # Its indices, read through ``_indices()`` (SparseAdam), are part of this value.
            self.register(t._indices(), index, slot)
        key = storage._cdata
        entry = self._states.get(key)
        part = None if covers_storage(t, storage) else (*byte_span(t), slot)
        if entry is None:
            parts = None if part is None else (part,)
            weak = weak_storage(storage)
            self._states[key] = (version_of(t), index, slot, weak, bump, parts, None)
            if len(self._states) > 2 * self._pruned_at + 4096:
                self._prune()
            return key
        if part is None:
            parts = None
        elif entry[_EVENT] == index and entry[_PARTS] is not None:  # another part, same event
            parts = (*entry[_PARTS], part)
        else:
            parts = (part,)
        self._states[key] = (version_of(t), index, slot, entry[_WEAK], bump, parts, None)
        return key

    def leaf_span(self, t: torch.Tensor, storage, own: tuple[int, int]) -> tuple[int, int]:
        """The bytes a new leaf of the tensor reads: its ``own`` span, or the whole storage once
        ``MAX_LEAF_SPANS`` leaves of the storage's current value are kept."""
        entry = self._states.get(storage._cdata)
        if entry is None or entry[_LEAVES] is None or entry[_VERSION] != version_of(t):
            return own
        return own if len(entry[_LEAVES]) < MAX_LEAF_SPANS else (0, storage.nbytes())

    def register_leaf(self, t: torch.Tensor, index: int, storage, span: tuple[int, int]) -> None:
        """Remember that leaf event ``index`` read bytes ``span`` of the storage's current value
        (beside the leaves of the same value read before)."""
        key = storage._cdata
        entry = self._states.get(key)
        version = version_of(t)
        leaf = (*span, index)
        if entry is None:
            self._states[key] = (version, index, 0, weak_storage(storage), False, None, (leaf,))
            return
        same = entry[_LEAVES] is not None and entry[_VERSION] == version
        leaves = (*entry[_LEAVES], leaf) if same else (leaf,)
        self._states[key] = (version, index, 0, entry[_WEAK], False, None, leaves)

    def alive(self) -> Iterator[tuple[int, int]]:
        """(event, slot) of the last value of every storage still alive."""
        for entry in self._states.values():
            if not weak_expired(entry[_WEAK]):
                yield entry[_EVENT], entry[_SLOT]

    def _prune(self) -> None:
        kept = {}
        for key, entry in self._states.items():
            if weak_expired(entry[_WEAK]):
                free_weak(entry[_WEAK])
            else:
                kept[key] = entry
        self._states = kept
        self._pruned_at = len(kept)

    def close(self) -> None:
        """Let go of every weak reference; the table is empty after."""
        states, self._states = self._states, {}
        for entry in states.values():
            free_weak(entry[_WEAK])

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at interpreter exit, torch may be gone)
            self.close()


def version_of(t: torch.Tensor) -> int:
    """The version counter of the tensor's values (-1 for an inference tensor)."""
    try:
        return plain_values(t)._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def covers_storage(t: torch.Tensor, storage=None) -> bool:
    """True if the tensor's elements are exactly its whole storage (``storage``: the tensor's,
    where the caller has it already)."""
    t = plain_values(t)
    if storage is None:
        storage = storage_of(t)
    if storage is None or t.layout is _SPARSE_COO:  # (a sparse tensor is read whole)
        return True
    return t.nbytes == storage.nbytes() and t.storage_offset() == 0 and t.is_contiguous()


def byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the bytes of its storage that the tensor's elements lie in."""
    t = plain_values(t)
    size = t.element_size()
    start = int(t.storage_offset()) * size
    if t.numel() == 0:
        return start, start
    last = sum((n - 1) * abs(stride) for n, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + (int(last) + 1) * size


def parts_read(parts: list[tuple[int, int, int]], span: tuple[int, int]) -> list[int]:
    """The slots of the parts a read of ``span`` overlaps: the one part it is, where it is one;
    the last part where it overlaps none (it reads what the event left as it was)."""
    start, end = span
    exact = [slot for s, e, slot in parts if (s, e) == (start, end)]
    if exact:
        return exact[-1:]
    overlapping = [slot for s, e, slot in parts if s < end and start < e]
    return overlapping or [parts[-1][2]]


def storage_of(t: torch.Tensor):
    """The tensor's untyped storage, or None for tensors without one (compressed sparse
    layouts, some subclasses). A DTensor's is that of the shard or replica it holds, a sparse
    COO tensor's that of its values (a sparse gradient: an embedding's, read by SparseAdam): a
    value is followed through them. (Called where the dispatch mode does not see our ops.)"""
    try:
        plain = plain_values(t)
        if plain.layout is _SPARSE_COO:
            return plain._values().untyped_storage()
        return plain.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


_SPARSE_COO = torch.sparse_coo
