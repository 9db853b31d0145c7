"""The module rung: each module call recorded as one event, forward and backward, no op inside.

Between step digests and op-level recording, ``find`` records the first differing step at this
level: an event per module call (``module.forward``) that reads the module's inputs and writes
its outputs, and an event per module backward (``module.backward``) that reads the gradients of
its outputs and writes those of its inputs. The first call whose inputs are equal in both runs
and whose outputs differ (analysis/modules.py) holds the cause; op-level recording then records
the ops of that module only (``RecordOptions.inside``).

Inputs are taken by global hooks: positional arguments before the module runs, keyword
arguments after it (a global pre-hook sees no keywords). Backward events come from global full
backward hooks, which put an identity autograd function around each module's inputs and
outputs: that changes no value, but a module that then modifies such a tensor in place (a
``ReLU(inplace=True)`` after a hooked module) makes autograd raise. ``find`` then records every
op of the step instead. A parameter's gradient gets an event of its module's backward when it
is added into ``.grad`` (hooks on the parameters), reading what that backward read.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.modules import module as nn_module

from bisector.schema import MODULE_BACKWARD, MODULE_FORWARD
from bisector.torch_api import tree_leaves

if TYPE_CHECKING:
    from bisector.capture.recorder import Boundary


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


class ModuleCalls:
    """Records module calls through the recorder's ``Boundary`` while installed.

    Args:
        boundary: the recorder's boundary (refs of inputs, events).
        guard: wraps the hooks (an exception in them is bisector's bug, not the script's).
    """

    def __init__(self, boundary: Boundary, guard) -> None:
        self._boundary = boundary
        self._guard = guard
        self._handles: list = []
        # Refs taken before each running call, innermost last; and per module, the refs of
        # the gradients of its outputs until its backward ends (a module called twice has
        # two, taken back in reverse order).
        self._forward: list[tuple[list, tuple[int, int, int]]] = []
        self._backward: dict[int, list[tuple[list, tuple[int, int, int]]]] = {}
        # Per module (its id in the trace's strings), the refs of the gradients of its outputs
        # in its latest backward: what its parameters' gradients are computed from.
        self._latest: dict[int, tuple[list, tuple[int, int, int]]] = {}
        self._watched: set[int] = set()  # ids of the parameters hooked

    def install(self) -> None:
        if self._handles:
            return
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._guard(self._before)),
            nn_module.register_module_forward_hook(
                self._guard(self._after), with_kwargs=True, always_call=True
            ),
            nn_module.register_module_full_backward_pre_hook(self._guard(self._before_backward)),
            nn_module.register_module_full_backward_hook(self._guard(self._after_backward)),
        ]
        self.watch_parameters()
        # (torch's notes on how these hooks behave, which are not the script's business)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="For backward hooks to be called")

    def watch_parameters(self) -> None:
        """Hook the parameters of the models seen so far (again when a new model is called):
        a parameter's gradient is made in its module's backward but is not among the
        gradients of its inputs (an embedding's only output), so it gets an event of its own
        when it is added into ``.grad``."""
        if not self._handles:
            return
        on_grad = self._guard(self._parameter_grad)
        for parameter, owner in self._boundary.parameters():
            if id(parameter) not in self._watched:
                self._watched.add(id(parameter))
                hook = functools.partial(on_grad, owner=owner)
                self._handles.append(parameter.register_post_accumulate_grad_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._forward.clear()
        self._backward.clear()
        self._latest.clear()
        self._watched.clear()

    def _before(self, module: torch.nn.Module, args: tuple) -> None:
        if not self._boundary.recording:
            return
        self._forward.append(self._boundary.inputs(_tensors(args)))

    def _after(self, module: torch.nn.Module, args: tuple, *rest: Any) -> None:
        # (module, args, kwargs, output); (module, args, output) where the forward raised
        kwargs, output = rest if len(rest) == 2 else ({}, rest[0])
        if not self._forward:
            return
        refs, context = self._forward.pop()
        if not self._boundary.recording:
            return
        if kwargs:
            refs = refs + self._boundary.inputs(_tensors(kwargs))[0]
        self._boundary.event(MODULE_FORWARD, (refs, context), [], _tensors(output), module)

    def _before_backward(self, module: torch.nn.Module, grad_output: tuple) -> None:
        if not self._boundary.recording:
            return
        context = self._boundary.backward_context(module)
        reads = self._boundary.inputs(_tensors(grad_output), backward_of=context)
        self._backward.setdefault(id(module), []).append(reads)
        self._latest[context[1]] = reads

    def _after_backward(
        self, module: torch.nn.Module, grad_input: tuple, grad_output: tuple
    ) -> None:
        pending = self._backward.get(id(module))
        if not pending:
            return
        reads = pending.pop()
        if self._boundary.recording:
            self._boundary.event(MODULE_BACKWARD, reads, [], _tensors(grad_input), module)

    def _parameter_grad(self, parameter: torch.Tensor, owner: str) -> None:
        """A gradient was added into ``parameter``'s ``.grad``: an event of its module's
        backward, reading what that backward read (none known: not recorded, since an event
        that reads nothing would look like a cause)."""
        if not self._boundary.recording or parameter.grad is None:
            return
        reads = self._latest.get(self._boundary.module_id(owner))
        if reads is not None:
            self._boundary.event(MODULE_BACKWARD, reads, [], [parameter.grad], None)
