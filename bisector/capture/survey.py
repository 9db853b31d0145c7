"""A light survey of the ops a script runs (for ``bisector doctor``): per (op, device), how
often and the user's line of the first call. No fingerprints, no trace: one run, cheap."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bisector.capture.lines import Locator
from bisector.torch_api import (
    TorchDispatchMode,
    arg_tree_leaves,
    autograd_sequence_nr,
    current_autograd_node,
)
from bisector.trace import split_location

_MAX_NODES = 1 << 16  # forward lines remembered for their backward ops


class Survey(TorchDispatchMode):
    """Counts the ops run inside it; stops the script (``on_stop``) after ``steps`` optimizer
    steps. Owns its optimizer hook, removed on exit."""

    def __init__(self, steps: int | None, on_stop):
        super().__init__()
        self.ops: dict[tuple[str, str], list] = {}
        self.steps = 0
        self._limit = steps
        self._on_stop = on_stop
        self._locator = Locator()
        self._hook: Any = None
        self._pid = os.getpid()
        self._forward_lines: dict[int, str] = {}  # autograd sequence nr -> the forward's line
        self._last_seq = -1

    def __enter__(self) -> Survey:
        self._hook = register_optimizer_step_post_hook(self._stepped)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if os.getpid() == self._pid:
            tensors = [a for a in arg_tree_leaves(*args, **kwargs) if isinstance(a, torch.Tensor)]
            device = tensors[0].device.type if tensors else "cpu"
            key = (str(func), device)
            where = self._where(key not in self.ops)
            entry = self.ops.get(key)
            if entry is None:
                random = torch.Tag.nondeterministic_seeded in getattr(func, "tags", ())
                self.ops[key] = [1, where, random]
            else:
                entry[0] += 1
        return func(*args, **kwargs)

    def _where(self, wanted: bool) -> str:
        """The user's line of the op being dispatched ("" if not ``wanted``): for a backward
        op, the line of the forward op whose autograd node runs it (as the recorder does)."""
        node = current_autograd_node()
        if node is not None:
            return self._forward_lines.get(node._sequence_nr(), "") if wanted else ""
        seq = autograd_sequence_nr()
        if seq != self._last_seq:  # this op made an autograd node: note where, for its backward
            self._last_seq = seq
            self._forward_lines[seq - 1] = where = self._line()
            if len(self._forward_lines) > _MAX_NODES:
                for old in list(self._forward_lines)[: _MAX_NODES // 2]:
                    del self._forward_lines[old]
            return where
        return self._line() if wanted else ""

    def _line(self) -> str:
        user, library, _ = self._locator.locate(4)
        return split_location(self._locator.describe(user, library))[0]

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self._limit is not None and self.steps >= self._limit:
            self._on_stop()
