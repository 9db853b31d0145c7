"""CUDA graphs under the recorder: captures pass through, each replay is one event.

While a CUDA graph is being captured, nothing may synchronise and every kernel launched is
captured, fingerprints included; so ops dispatched during a capture are not recorded: the
recorder only notes which tensors they read from outside the capture and which they wrote.
A replay runs the captured kernels without PyTorch's dispatcher; after it, the recorder records
one event, ``cuda_graph.replay``, reading the (still alive) tensors the capture read and writing
the (still alive) tensors it wrote, fingerprinted on the replay's stream. So a value a replay
writes is followed from the replay on, and a difference that appears in a replay is a source at
that event (ops inside are not visible).

``torch.cuda.CUDAGraph``'s ``capture_begin``, ``capture_end`` and ``replay`` are wrapped while the
recorder is active (``torch.cuda.graph`` and ``make_graphed_callables`` use them). Captures and
replays inside compiled code (``mode="reduce-overhead"``) belong to the compiled boundary.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bisector.schema import REPLAY_OP

if TYPE_CHECKING:
    from bisector.capture.recorder import Boundary


@dataclass
class Capture:
    """What the ops of one capture read from outside it and wrote (weak references: the
    capture keeps nothing alive).

    Storages are told apart by address, and inside a capture the allocator reuses the address
    of a freed storage for a new one: so every write is kept, and only at a replay are the
    tensors still alive taken (the last one per storage).
    """

    reads: list[weakref.ref] = field(default_factory=list)
    writes: list[weakref.ref] = field(default_factory=list)
    _written: set[int] = field(default_factory=set)  # storages written during the capture
    _read: set[int] = field(default_factory=set)

    def add(
        self, read: list[torch.Tensor], written: list[torch.Tensor], views: list[torch.Tensor]
    ) -> None:
        """Note one op: the tensors it read, wrote, and returned as views of its inputs (a view
        of a written storage may outlive the tensor that wrote it: AccumulateGrad keeps a
        detached view of the gradient as ``.grad``)."""
        for t in read:
            key = _key(t)
            if key is not None and key not in self._written and key not in self._read:
                self._read.add(key)
                self.reads.append(weakref.ref(t))
        for t in written:
            key = _key(t)
            if key is not None:
                self._written.add(key)
                self.writes.append(weakref.ref(t))
        for t in views:
            if _key(t) in self._written:
                self.writes.append(weakref.ref(t))

    @staticmethod
    def alive(refs: list[weakref.ref]) -> list[torch.Tensor]:
        """The tensors still alive, the last one per storage, in order."""
        last: dict[int, torch.Tensor] = {}
        for t in (r() for r in refs):
            key = None if t is None else _key(t)
            if t is not None and key is not None:
                last.pop(key, None)
                last[key] = t
        return list(last.values())


class CudaGraphs:
    """Wraps CUDAGraph's capture and replay; counts replays and records each as one event.

    Args:
        boundary: the recorder's side of it, which records the replay events.
    """

    def __init__(self, boundary: Boundary):
        self._boundary = boundary
        self._originals: dict[str, object] = {}
        self._captures: dict[int, Capture] = {}  # id(graph) -> what its capture did
        self._capture: Capture | None = None
        self.replays = 0

    @property
    def capturing(self) -> Capture | None:
        """The capture running, if any. Not per thread: autograd runs the backward of a
        captured step on its own device thread, into the same capture."""
        return self._capture

    def install(self) -> None:
        if self._originals:
            return
        cls = torch.cuda.CUDAGraph
        self._originals = {name: getattr(cls, name) for name in ("capture_begin", "capture_end")}
        self._originals["replay"] = cls.replay
        graphs = self

        def capture_begin(graph, *args, **kwargs):
            result = graphs._originals["capture_begin"](graph, *args, **kwargs)
            if not graphs._boundary.opaque_depth:
                graphs._capture = graphs._captures[id(graph)] = Capture()
            return result

        def capture_end(graph, *args, **kwargs):
            graphs._capture = None
            return graphs._originals["capture_end"](graph, *args, **kwargs)

        def replay(graph, *args, **kwargs):
            graphs.replays += 1
            capture = graphs._captures.get(id(graph))
            boundary = graphs._boundary
            if capture is None or not boundary.recording or boundary.opaque_depth:
                return graphs._originals["replay"](graph, *args, **kwargs)
            reads = boundary.inputs(Capture.alive(capture.reads))
            result = graphs._originals["replay"](graph, *args, **kwargs)
            boundary.event(REPLAY_OP, reads, Capture.alive(capture.writes), [], None)
            return result

        cls.capture_begin = capture_begin  # type: ignore[method-assign,assignment]
        cls.capture_end = capture_end  # type: ignore[method-assign,assignment]
        cls.replay = replay  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        for name, original in self._originals.items():
            setattr(torch.cuda.CUDAGraph, name, original)
        self._originals = {}
        self._captures.clear()


def _key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None
