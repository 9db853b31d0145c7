"""The value table: which recorded event produced the current value of each storage.

Every tensor an op reads is looked up here to find its producer (the dataflow edge of the
trace); every tensor an op writes is registered. A storage is known by its address while it
lives (a weak reference keeps the address from being reused meanwhile), its value by the
version counter of the tensor that last wrote it. Where one event writes several parts of a
storage (a foreach copy into the views of one flat buffer), each part keeps its slot.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bisector.capture.fingerprint import plain_values
from bisector.torch_api import StorageWeakRef


class ValueTable:
    """Storage -> [version, event, slot, weak reference, bump, parts or None]."""

    def __init__(self) -> None:
        self._states: dict[int, list] = {}
        self._pruned_at = 0

    def find(
        self, t: torch.Tensor, storage
    ) -> tuple[list[tuple[int, int]] | None, tuple[int, int] | None]:
        """(refs, None): the (event, slot) pairs the tensor's current value comes from (one,
        or each part it reads of what one event wrote in parts). (None, previous): the value
        is not one we saw made: another version counter over the same storage (``p.data.add_``
        bumps ``p.data``'s, not ``p``'s) or a write we did not see; ``previous`` is the last
        value we know there (the caller reads it again as a leaf whose input that is, so a
        difference it carries is not taken for a new one), or None for a storage never seen."""
        version = version_of(t)
        entry = self._states.get(storage._cdata)
        if entry is None:
            return None, None
        if entry[0] == version or (entry[4] and entry[0] + 1 == version):
            if entry[0] != version:
                # The version bump of an in-place op happens after the op's handler returns.
                entry[0], entry[4] = version, False
            if entry[5] is None:
                return [(entry[1], entry[2])], None
            return [(entry[1], slot) for slot in parts_read(entry[5], byte_span(t))], None
        return None, (entry[1], entry[2])

    def register(self, t: torch.Tensor, index: int, slot: int, bump: bool = False) -> int | None:
        """Remember that event ``index`` (output ``slot``) produced the tensor's current value;
        returns the storage's key (None: no storage). ``bump``: the op wrote the tensor in
        place, so autograd's ADInplaceOrView layer will bump its version counter by one once
        the handler has returned."""
        storage = storage_of(t)
        if storage is None:
            return None
        key = storage._cdata
        entry = self._states.get(key)
        part = None if covers_storage(t, storage) else (*byte_span(t), slot)
        if entry is None:
            parts = None if part is None else [part]
            self._states[key] = [version_of(t), index, slot, StorageWeakRef(storage), bump, parts]
            if len(self._states) > 2 * self._pruned_at + 4096:
                self._prune()
            return key
        if part is None:
            parts = None
        elif entry[1] == index and entry[5] is not None:  # another part, same event
            parts = [*entry[5], part]
        else:
            parts = [part]
        entry[0], entry[1], entry[2], entry[4], entry[5] = version_of(t), index, slot, bump, parts
        return key

    def alive(self) -> Iterator[tuple[int, int]]:
        """(event, slot) of the last value of every storage still alive."""
        for _, event, slot, ref, *_ in self._states.values():
            if not ref.expired():
                yield event, slot

    def _prune(self) -> None:
        self._states = {k: v for k, v in self._states.items() if not v[3].expired()}
        self._pruned_at = len(self._states)


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
    if storage is None:
        return True
    covered = t.numel() * t.element_size() == storage.nbytes()
    return t.storage_offset() == 0 and t.is_contiguous() and covered


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
    """The tensor's untyped storage, or None for tensors without one (sparse, some subclasses).
    A DTensor's is that of the shard or replica it holds: a value is followed through it."""
    try:
        return plain_values(t).untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
