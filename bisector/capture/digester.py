"""Step digests from a running script: per optimizer step, fingerprints of the RNG states, the
batch, the loss, every gradient, parameter, optimizer-state tensor and buffer.

Values are fingerprinted on their device (fingerprint.Collector, as for ops) and read back
without waiting: a step is written once its results have reached the host, so a digest never
makes the host wait for the device in the middle of training. Two ways in:

- ``Watch``: inside a training script, for one model and optimizer (``bisector.watch``);
- ``GlobalDigests``: for a whole script run by ``find`` (every optimizer, every root module).

Both own what they install (hooks, the wrapper of ``torch.autograd.backward`` that sees the loss)
and remove it on close, also when the script fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.modules import module as nn_module
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from bisector.capture import settings
from bisector.capture.closures import wrap_closure
from bisector.capture.fingerprint import (
    Collector,
    PendingResults,
    hashable,
    plain_values,
    sparse_hashable,
)
from bisector.capture.modules import calling_module, models_in_script
from bisector.capture.optimizers import Stepped
from bisector.digests import DigestWriter, in_optimizer, unnamed_parameter
from bisector.schema import MORE_STEPS_FOR_OPTIMIZERS
from bisector.torch_api import tree_leaves

# Tensors of the batch, and losses, digested per step at most (a loop over micro-batches).
_MAX_BATCH_TENSORS = 16
_MAX_LOSSES = 16


class StepDigester:
    """Takes the values of each step and writes them to a digest file, in step order.

    Args:
        path: the digest file to write.
        every: digest one step in ``every`` (the others cost nothing).
        argv: argv to store in the header (default: sys.argv).
    """

    def __init__(self, path: str | os.PathLike, every: int = 1, argv: list[str] | None = None):
        if every < 1:
            raise ValueError("every must be at least 1")
        header = settings.header(argv)
        header["every"] = every
        self._writer = DigestWriter(path, header)
        self.path = Path(path)
        self.every = every
        self.step = 0
        self._collector = Collector()
        self._names: list[tuple[str, str, int, str]] = []
        self._pending: deque[tuple[int, list, PendingResults]] = deque()
        self._batches = 0
        self._losses = 0
        self._started = time.perf_counter()
        self.closed = False
        # Step 0's generator states are taken at its first value, after the script seeded.
        self._rng_taken = False

    @property
    def active(self) -> bool:
        """True if the current step is digested."""
        return not self.closed and self.step % self.every == 0

    @property
    def bytes_written(self) -> int:
        return self._writer.bytes_written

    def add(self, kind: str, name: str, tensor: Any) -> None:
        """Take one value of the current step (ignored unless a plain tensor)."""
        if not self.active or not isinstance(tensor, torch.Tensor):
            return
        tensor = plain_values(tensor)  # a DTensor: the shard or replica this rank holds
        sparse = sparse_hashable(tensor)  # (an embedding's sparse gradient)
        if not sparse and not hashable(tensor):
            return
        if not self._rng_taken:
            self._rng_states()
        with torch.no_grad():
            if sparse:
                self._collector.add_sparse(tensor.detach())
            else:
                self._collector.add(tensor.detach())
        dtype = str(tensor.dtype).removeprefix("torch.")
        self._names.append((kind, name, tensor.numel(), dtype))

    def batch(self, values: Iterable[Any]) -> None:
        """Take the tensors among the arguments of a top-level forward call."""
        for tensor in values:
            if self._batches >= _MAX_BATCH_TENSORS:
                return
            if isinstance(tensor, torch.Tensor):
                self.add("batch", str(self._batches), tensor)
                self._batches += 1

    def loss(self, tensor: torch.Tensor) -> None:
        """Take a tensor that backward() is called on."""
        if self._losses < _MAX_LOSSES:
            self.add("loss", str(self._losses), tensor)
            self._losses += 1

    def gradients(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Take the gradients the optimizer is about to use."""
        for name, param in named:
            if param.grad is not None:
                self.add("grad", name, param.grad)

    def end_step(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        states: list[tuple[str, dict]],
        buffers: list[tuple[str, torch.Tensor]],
    ) -> None:
        """Take the parameters, optimizer state and buffers after the step, and close it."""
        if self.active:
            for name, param in named:
                self.add("param", name, param)
            for name, state in states:
                for key, value in state.items():
                    self.add("state", f"{name}.{key}", value)
            for name, buffer in buffers:
                self.add("buffer", name, buffer)
            if not self._rng_taken:
                self._rng_states()
            self._pending.append((self.step, self._names, self._collector.drain_async()))
            self._names = []
        self.step += 1
        self._batches = self._losses = 0
        self._write(wait=False)
        self._rng_taken = False
        self._rng_states()

    def close(
        self, status: str = "complete", error: str | None = None, unstepped: list[str] | None = None
    ) -> None:
        """Write every step taken and the footer; safe to call twice.

        Args:
            unstepped: the script's optimizers that never stepped (capture/optimizers.py).
        """
        if self.closed:
            return
        self.closed = True
        try:
            self._write(wait=True)
        finally:
            self._writer.close(
                {
                    "status": status,
                    "error": error,
                    "steps": self.step,
                    "steps_written": self._writer.steps_written,
                    "seconds": time.perf_counter() - self._started,
                    "settings_at_end": settings.determinism(),
                    "unstepped_optimizers": unstepped or [],
                }
            )

    def _write(self, wait: bool) -> None:
        """Write the steps whose results are on the host, oldest first."""
        while self._pending and (wait or self._pending[0][2].ready()):
            step, names, pending = self._pending.popleft()
            self._writer.add_step(step, names, *pending.result())

    def _rng_states(self) -> None:
        """The generator states at the start of the step: they decide dropout, shuffling..."""
        if not self.active:
            return
        self._rng_taken = True
        state = random.getstate()[1]
        self.add("rng", "python", torch.tensor(np.asarray(state, dtype=np.uint32).view(np.int32)))
        numpy_state = np.random.get_state(legacy=True)[1]  # type: ignore[index]
        self.add("rng", "numpy", torch.from_numpy(np.ascontiguousarray(numpy_state).view(np.int32)))
        self.add("rng", "torch", torch.get_rng_state())
        if torch.cuda.is_initialized():
            for device in range(torch.cuda.device_count()):
                self.add("rng", f"cuda:{device}", torch.cuda.get_rng_state(device))


class _LossTap:
    """Wraps ``torch.autograd.backward`` (which ``Tensor.backward`` calls) to see the losses."""

    def __init__(self, on_loss) -> None:
        self._on_loss = on_loss
        self._original: Any = None

    def install(self) -> None:
        original = self._original = torch.autograd.backward
        on_loss = self._on_loss

        def backward(tensors, *args, **kwargs):
            for tensor in tensors if isinstance(tensors, (list, tuple)) else (tensors,):
                on_loss(tensor)
            return original(tensors, *args, **kwargs)

        torch.autograd.backward = backward

    def remove(self) -> None:
        if self._original is not None:
            torch.autograd.backward = self._original
            self._original = None


def _remove_all(handles: list) -> None:
    for handle in handles:
        handle.remove()


def _optimizer_state(optimizer, named) -> list[tuple[str, dict]]:
    return [(name, optimizer.state[p]) for name, p in named if p in optimizer.state]


class _DigestHooks:
    """What Watch and GlobalDigests own: a digester, its hooks and the loss tap; ``close``
    removes them all and finishes the file."""

    def __init__(self, digester: StepDigester):
        self.digester = digester
        self._loss = _LossTap(digester.loss)
        self._handles: list = []

    def close(self, status: str = "complete", error: str | None = None) -> None:
        """Remove the hooks and finish the file. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._loss.remove()
        if not self.digester.closed:
            self.digester.close(status, error, self._unstepped())

    def _unstepped(self) -> list[str]:
        """The script's optimizers that never stepped, in words (GlobalDigests waits for them)."""
        return []

    @staticmethod
    def _after_closure(args: tuple, kwargs: dict, take: Callable[[], None]):
        """For an optimizer step's pre-hook: take the gradients with ``take`` once they exist.
        Where the step is given a closure (Lightning's automatic optimization, LBFGS), the
        forward and backward run inside it: returns (args, kwargs) with the closure wrapped to
        take them after its first call; else takes them now and returns None."""
        taken = False

        def wrap(closure):
            def closure_then_take(*a, **k):
                nonlocal taken
                result = closure(*a, **k)
                if not taken:
                    taken = True
                    take()
                return result

            return closure_then_take

        wrapped = wrap_closure(args, kwargs, wrap)
        if wrapped is None:
            take()
        return wrapped


class Watch(_DigestHooks):
    """Step digests of one model and optimizer, from inside a training script.

    Use ``bisector.watch(model, optimizer, path)``; see there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        path: str | os.PathLike,
        every: int = 1,
    ):
        super().__init__(StepDigester(path, every))
        self._model = model
        self._optimizer = optimizer
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        if optimizer is None:
            self._named = list(model.named_parameters())
        else:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self._named = [(names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
        self._started = False

    def start(self) -> Watch:
        """Install the hooks and the loss tap (once): if one fails, those already installed
        are taken out again and the error is raised."""
        if self._started:
            return self
        model, optimizer = self._model, self._optimizer
        with contextlib.ExitStack() as undo:
            handles = [model.register_forward_pre_hook(self._forward, with_kwargs=True)]
            undo.callback(_remove_all, handles)
            if optimizer is not None:
                handles.append(optimizer.register_step_pre_hook(self._before_step))
                handles.append(optimizer.register_step_post_hook(self._after_step))
            else:  # no optimizer: a step is one forward call of the model
                handles.append(model.register_forward_hook(self._after_forward))
            self._loss.install()
            undo.pop_all()
        self._handles, self._started = handles, True
        return self

    @property
    def path(self) -> Path:
        return self.digester.path

    def close(self, status: str = "complete", error: str | None = None) -> None:
        """Stop watching: remove the hooks and finish the file. Safe to call twice."""
        super().close(status, error)

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")
        return False

    def _forward(self, module, args, kwargs) -> None:
        self.digester.batch(tree_leaves((args, kwargs)))

    def _before_step(self, optimizer, args, kwargs):
        return self._after_closure(args, kwargs, lambda: self.digester.gradients(self._named))

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.digester.end_step(
            self._named,
            _optimizer_state(optimizer, self._named),
            list(self._model.named_buffers()),
        )

    def _after_forward(self, module, args, output) -> None:
        self.digester.add("loss", "output", output if isinstance(output, torch.Tensor) else None)
        self.digester.end_step(self._named, [], list(self._model.named_buffers()))


class GlobalDigests(_DigestHooks):
    """Step digests of a whole script: every optimizer that steps and every root module (a
    module called while no other runs), found through global hooks. Used by ``find``'s first
    level, in the child process.

    Args:
        path: the digest file.
        steps: end the run (``on_stop``) after this many optimizer steps; None: never.
        on_stop: called once ``steps`` are digested and the file is complete.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        steps: int | None,
        on_stop,
        argv=None,
        progress_file: str | None = None,
    ):
        super().__init__(StepDigester(path, 1, argv))
        self._progress = None
        if progress_file:
            from bisector.capture.progress import Progress

            self._progress = Progress(progress_file)
        self._steps = steps
        self._on_stop = on_stop
        self._depth = 0
        # root -> the prefix of its names: its variable's name where the script holds several
        # models (a GAN's ``G.out.weight`` and ``D.out.weight``), else "" (as the trace names)
        self._roots: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._names: dict[int, tuple[weakref.ref, str]] = {}
        self._optimizer_depth = 0
        self._stepped: list = []
        self._seen = Stepped()

    def install(self) -> None:
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post, with_kwargs=True, always_call=True),
            register_optimizer_step_pre_hook(self._before_step),
            register_optimizer_step_post_hook(self._after_step),
        ]
        self._loss.install()

    def _unstepped(self) -> list[str]:
        def name_of(param: torch.Tensor) -> str | None:
            entry = self._names.get(id(param))
            return entry[1] if entry is not None and entry[0]() is param else None

        return self._seen.described(name_of)

    def close(self, status: str = "complete", error: str | None = None) -> None:
        super().close(status, error)
        if self._progress is not None:
            self._progress.close()

    def _pre(self, module, args) -> None:
        self._depth += 1
        if self._depth == 1 and module not in self._roots:
            # Called from a method of a module that holds it (``self.head`` in Lightning's
            # ``training_step``): the parameters are named from that module (``table``).
            root = calling_module(module) or module
            variable = models_in_script().get(root)
            prefix = f"{variable}." if variable else ""
            self._roots[module] = prefix if root is module else ""
            for name, param in root.named_parameters(remove_duplicate=False):
                self._names.setdefault(id(param), (weakref.ref(param), prefix + name))

    def _post(self, module, args, kwargs, output) -> None:
        if self._depth == 1:
            self.digester.batch(tree_leaves((args, kwargs)))
        self._depth = max(0, self._depth - 1)

    def _named(self, optimizer) -> list[tuple[str, torch.Tensor]]:
        named = []
        for g, group in enumerate(optimizer.param_groups):
            for i, param in enumerate(group["params"]):
                entry = self._names.get(id(param))
                known = entry is not None and entry[0]() is param
                name = entry[1] if entry is not None and known else unnamed_parameter(g, i)
                named.append((name, param))
        return named

    def _before_step(self, optimizer, args, kwargs):
        self._optimizer_depth += 1
        if self._optimizer_depth == 1:
            self._stepped = []
        self._stepped.append(optimizer)
        # Named when taken: with a closure, the step's first forward (which names the
        # parameters of a model first called there) runs inside it.
        return self._after_closure(
            args, kwargs, lambda: self.digester.gradients(self._named(optimizer))
        )

    def _after_step(self, optimizer, args, kwargs) -> None:
        self._optimizer_depth = max(0, self._optimizer_depth - 1)
        if self._optimizer_depth:
            return
        named, states = [], []
        for k, stepped in enumerate(self._stepped):
            pairs = [
                (in_optimizer(name, k, len(self._stepped)), p) for name, p in self._named(stepped)
            ]
            named += pairs
            states += _optimizer_state(stepped, pairs)
        buffers = [
            (prefix + name, buffer)
            for root, prefix in list(self._roots.items())
            for name, buffer in root.named_buffers()
        ]
        self.digester.end_step(named, states, buffers)
        if self._progress is not None:
            self._progress.update(0, self.digester.step)
        for stepped in self._stepped:
            self._seen.add(stepped)
        if self._steps is None or self.digester.step < self._steps:
            return
        if self.digester.step < self._steps + MORE_STEPS_FOR_OPTIMIZERS and self._seen.unstepped():
            return  # (see capture/optimizers.py)
        self.close("stopped")
        self._on_stop()
