"""torch.compile under the recorder: compiled code runs compiled, and is recorded at its boundary.

A TorchDispatchMode normally stops Dynamo from compiling anything (it falls back to eager, so a
recorded run would not compute what a plain run computes). The recorder's mode declares
``ignore_compile_internals``, so Dynamo compiles as usual; what runs inside compiled code (fused
kernels, and the few aten calls it makes itself) is not recorded. Instead each call of a compiled
module or function is one event, ``compiled.<Name>``: its inputs are the tensors passed in (and
the module's parameters and buffers), its outputs the tensors it returns and the inputs it wrote
in place. In backward, each compiled backward graph is one event too, ``compiled.<Name>.backward``,
reading the incoming gradients and what its forward read and returned, writing the gradients it
computes.

``torch.compile`` is wrapped while the recorder is active, so this sees what the script compiles
from then on. The recorder's global module hooks are taken out for the time of each compiled
call, so that Dynamo traces the same code as in a plain run (and compiles the same graph).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from bisector.schema import COMPILED_PREFIX
from bisector.torch_api import (
    autograd_sequence_nr,
    optimized_module_class,
    supports_ignore_compile_internals,
    tree_leaves,
)

if TYPE_CHECKING:
    from bisector.capture.recorder import Boundary

_HOOKS_WARNING = r"Using `torch.compile\(module\)` when there are global hooks"


def supported() -> bool:
    """True if this torch lets a dispatch mode leave compiled code alone (torch >= 2.8)."""
    return supports_ignore_compile_internals()


class CompileBoundary:
    """Wraps ``torch.compile`` while installed; records each compiled call through the recorder.

    Args:
        boundary: the recorder's side of it: records the boundary events, and holds how deep
            the calling thread is in code seen only at its boundary (ops are not recorded
            there).
    """

    def __init__(self, boundary: Boundary):
        self._boundary = boundary
        self._original: Callable | None = None
        self._filter: tuple | None = None

    def install(self) -> None:
        if self._original is not None or not supported():
            return
        original = self._original = torch.compile
        boundary = self

        @functools.wraps(original)
        def compile(model=None, *args, **kwargs):
            if model is None:  # @torch.compile(...) with options: a decorator
                return lambda fn: compile(fn, *args, **kwargs)
            return boundary.wrap(model, original(model, *args, **kwargs))

        torch.compile = compile
        # OptimizedModule warns that global module hooks (the recorder's) fire for it too; they
        # are meant to (it names the module) and do not reach the compiled code.
        warnings.filterwarnings("ignore", message=_HOOKS_WARNING)
        self._filter = warnings.filters[0]

    def remove(self) -> None:
        if self._original is not None:
            torch.compile = self._original
            self._original = None
            with contextlib.suppress(ValueError):
                warnings.filters.remove(self._filter)  # type: ignore[attr-defined]
            getattr(warnings, "_filters_mutated", lambda: None)()  # drop cached decisions

    def wrap(self, target: Any, compiled: Any) -> Any:
        """Return ``compiled`` (what torch.compile made of ``target``) recorded at its boundary."""
        if compiled is target or not callable(compiled):  # compiling turned off (no-compile)
            return compiled
        if isinstance(compiled, optimized_module_class()):
            module = compiled._orig_mod
            compiled.forward = self._call(compiled.forward, type(module).__name__, module)
            return compiled
        owner = getattr(target, "__self__", None)  # Module.compile() compiles its _call_impl
        owning = owner if isinstance(owner, torch.nn.Module) else None
        name = type(owning).__name__ if owning is not None else _name(target)
        return functools.wraps(target)(self._call(compiled, name, owning))

    def _call(self, fn: Callable, name: str, module: torch.nn.Module | None) -> Callable:
        boundary = self._boundary

        def call(*args, **kwargs):
            entered = boundary.recording and module is not None and boundary.enter_module(module)
            hooks = boundary.hide_module_hooks()
            try:
                if not boundary.recording:
                    return fn(*args, **kwargs)
                inputs = _tensors((args, kwargs))
                if module is not None:
                    inputs += list(module.parameters()) + list(module.buffers())
                versions = [_version(t) for t in inputs]
                start = autograd_sequence_nr()
                refs = boundary.inputs(inputs)
                boundary.enter_opaque()
                try:
                    result = fn(*args, **kwargs)
                finally:
                    boundary.leave_opaque()
            finally:
                boundary.show_module_hooks(hooks)
                if entered:
                    boundary.leave_module()
            written = [t for t, v in zip(inputs, versions, strict=True) if _version(t) != v]
            outputs = _tensors(result)
            boundary.event(COMPILED_PREFIX + name, refs, written, outputs, module)
            if torch.is_grad_enabled():
                self._hook_backward(outputs, start, inputs + outputs, name, module, refs[1])
            return result

        return call

    def _hook_backward(self, outputs, start, forward: list, name: str, module, context) -> None:
        """Record the backward of what this call computed: each autograd node it created (a
        compiled graph's, or those of eager code Dynamo left uncompiled inside it) is one
        event, in the module and at the line of the forward call; ops inside are not."""
        boundary = self._boundary
        for node in _nodes_since(outputs, start):

            def pre(grad_outputs):
                boundary.enter_opaque()

            def post(grad_inputs, grad_outputs):
                boundary.leave_opaque()
                if boundary.recording:
                    refs = boundary.inputs(_tensors(grad_outputs) + forward, backward_of=context)
                    outputs = _tensors(grad_inputs)
                    boundary.event(f"{COMPILED_PREFIX}{name}.backward", refs, [], outputs, module)

            node.register_prehook(pre)
            node.register_hook(post)


def _nodes_since(outputs: list[torch.Tensor], start: int) -> list:
    """Autograd nodes created since sequence number ``start`` (during the compiled call),
    found by walking back from its outputs through such nodes only."""
    found, seen = [], set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "AccumulateGrad" in node.name() or node._sequence_nr() < start:
            continue  # a leaf's gradient sink, or made before the call: outside it
        found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return found


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors
        return -1


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
