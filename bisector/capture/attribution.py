"""Which phase and module an op belongs to, and which line: the recorder's attribution.

- ``optimizer`` inside ``optimizer.step()`` (but not inside a closure it runs: that forward and
  backward keep their own phase), the module being the owner of the parameters it updates;
- ``backward`` while autograd runs a node: the module and line of the forward op that created
  the node (remembered by the sequence number autograd gave it), or, inside the user's own
  ``autograd.Function.backward``, that line; a forward that activation checkpointing recomputes
  inside the backward is its module's (and so is the backward of what it made);
- ``forward`` from a top-level module call until the backward starts (so the loss computed
  after ``model(x)`` counts), the module being the innermost one running; outside every module
  call, an op in a method of a module (Lightning's ``training_step``) is that module's, and
  ``forward`` until the step's backward has run (after it: ``other``, as gradient clipping in
  ``on_before_optimizer_step``);
- ``other`` otherwise.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch

from bisector.capture.lines import in_custom_backward
from bisector.capture.modules import ModuleTracker
from bisector.torch_api import autograd_sequence_nr, current_autograd_node
from bisector.trace import PHASES

FORWARD, BACKWARD, OPTIMIZER, OTHER = (PHASES.index(p) for p in PHASES)
# Autograd nodes remembered at most in one step (or in a script without optimizer steps): past
# it, the older half is forgotten.
_MAX_NODES = 1 << 17
# The optimizer steps whose nodes are remembered: the current one, the one before and, for a
# backward on the thread that ran the forwards, older ones up to _MAX_NODES nodes in all (a
# WGAN's critic steps several times on a batch its generator made before them).
STEPS_REMEMBERED = 8


class Attribution:
    """The phase state of a recording: the recorder's hooks set ``optimizer_depth`` and
    ``forward_open``; ``context`` attributes each op.

    Args:
        modules: the module stack and parameter names.
        string: the trace's string table (text -> id).
    """

    def __init__(self, modules: ModuleTracker, string: Callable[[str], int]):
        self._modules = modules
        self._string = string
        self._node_info: dict[int, tuple[int, int]] = {}  # autograd seq nr -> (module, location)
        # Those of the step before: a graph can be built before an optimizer step and run
        # backward after it (a GAN's generator output, made before the discriminator's step,
        # backpropagated for the generator's). Looked up last: on a GPU, the nodes that a
        # checkpoint recomputes are numbered by autograd's device thread, from a counter of its
        # own, and the older the table, the likelier a number of it is one of theirs too.
        self._previous: dict[int, tuple[int, int]] = {}
        # Those of older steps, newest last. Looked up only for a backward on the thread that
        # ran the forwards (a CPU's backward): its numbers come from one counter, never reused.
        self._older: deque[dict[int, tuple[int, int]]] = deque()
        self._thread = threading.get_ident()
        self._last_seq = -1
        self.optimizer_depth = 0  # inside optimizer.step() (its closure excepted)
        self.forward_open = False  # a top-level forward ran and its backward has not started
        self._backward_ran = False  # since the last optimizer step
        # The module depth where the running backward began (None: no backward runs), and the
        # nodes made by forwards that a checkpoint recomputed inside it.
        self._backward_depth: int | None = None
        self._recomputed: dict[int, tuple[int, int]] = {}
        # One tuple per distinct (module, location), shared by the nodes (10 MiB at most).
        self._places: dict[tuple[int, int], tuple[int, int]] = {}

    def context(self, tensors: list[torch.Tensor], user, location_id: int) -> tuple[int, int, int]:
        """(phase, module id, location id) of an op reading ``tensors``, called from the
        ``user`` frame at ``location_id``."""
        node = current_autograd_node()
        if self.optimizer_depth:
            self._backward_depth = None
            return OPTIMIZER, self._string(self._optimizer_module(tensors)), location_id
        if node is not None:
            self.forward_open = False
            self._backward_ran = True
            if self._backward_depth is None:  # a backward begins
                self._backward_depth = self._modules.depth
            elif self._modules.depth > self._backward_depth:
                # A module runs inside the backward: a checkpoint recomputes its forward (the
                # reentrant one then runs a backward of what it made, inside this one).
                module_id = self._string(self._modules.current)
                self._remember(self._recomputed, module_id, location_id)
                return BACKWARD, module_id, location_id
            seq = node._sequence_nr()
            created = (
                self._node_info.get(seq) or self._recomputed.get(seq) or self._previous.get(seq)
            )
            if created is None and self._older and threading.get_ident() == self._thread:
                created = next((t[seq] for t in reversed(self._older) if seq in t), None)
            if created is None:
                return BACKWARD, self._string(self._accumulate_module(node)), location_id
            module_id, forward_location = created
            if user is None or not in_custom_backward(user):
                location_id = forward_location
            return BACKWARD, module_id, location_id
        self._backward_depth = None
        module = self._modules.current
        if not module and user is not None:
            module = self._modules.method_owner(user)
            if module and not self._backward_ran:
                self.forward_open = True
        module_id = self._string(module)
        self._remember(self._node_info, module_id, location_id)
        phase = FORWARD if (self._modules.depth or self.forward_open) else OTHER
        return phase, module_id, location_id

    def _remember(self, nodes: dict[int, tuple[int, int]], module_id: int, location_id: int):
        """The autograd node an op creates has the sequence number just taken; remember where
        it was created so that its backward ops get this module and line."""
        seq = autograd_sequence_nr()
        if seq != self._last_seq:
            self._last_seq = seq
            place = (module_id, location_id)
            nodes[seq - 1] = self._places.setdefault(place, place)
            if len(nodes) > _MAX_NODES:  # keep the newest
                for key in list(nodes)[: _MAX_NODES // 2]:
                    del nodes[key]

    def step_done(self) -> None:
        """An optimizer step ended: the next forward starts afresh (the nodes made in this
        step are kept for later steps: their backward may come after them)."""
        self.forward_open = False
        self._backward_ran = False
        if self._previous:
            self._older.append(self._previous)
        kept = sum(len(table) for table in self._older)
        while self._older and (
            len(self._older) > STEPS_REMEMBERED - 2 or kept + len(self._node_info) > _MAX_NODES
        ):
            kept -= len(self._older.popleft())
        self._previous, self._node_info = self._node_info, {}
        self._recomputed.clear()

    def _optimizer_module(self, tensors: list[torch.Tensor]) -> str:
        for t in tensors:
            named = self._modules.parameter_name(t)
            if named is not None:
                return self._modules.owner_of(named[1])
        return ""

    def _accumulate_module(self, node) -> str:
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            named = self._modules.parameter_name(variable)
            if named is not None:
                return self._modules.owner_of(named[1])
        return ""
