"""The Recorder: records every aten call of a run (forward, backward, optimizer) into a trace.

It owns everything it installs: a TorchDispatchMode that sees each aten call, global module
hooks (module paths), global optimizer step hooks (steps and the optimizer phase). All of it is
removed on exit, also when the run fails. Events are buffered in typed arrays and written to the
trace in chunks; fingerprints stay on the device until a chunk is written.

Dataflow: each tensor input is resolved to the event that produced its current value, by
(storage, version counter): views share both with their base, and in-place writes bump the
version. A tensor whose value no recorded event produced (a parameter made before recording
started, a batch built from numpy) becomes a *leaf* event with a fingerprint of its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from bisector.capture import settings
from bisector.capture.attribution import BACKWARD as _BACKWARD
from bisector.capture.attribution import OPTIMIZER as _OPTIMIZER_PHASE
from bisector.capture.attribution import OTHER as _OTHER
from bisector.capture.attribution import STEPS_REMEMBERED, Attribution
from bisector.capture.closures import wrap_closure
from bisector.capture.compiled import CompileBoundary
from bisector.capture.cuda_graphs import CudaGraphs
from bisector.capture.draws import DrawSites
from bisector.capture.escapes import Escapes
from bisector.capture.events import EventBuffer
from bisector.capture.fingerprint import hashable, plain_values
from bisector.capture.lines import Locator
from bisector.capture.module_calls import ModuleCalls
from bisector.capture.modules import ModuleTracker
from bisector.capture.ops import OpInfo, args_key, canonical_args, complete_collective, leaves
from bisector.capture.optimizers import Stepped, live_optimizers
from bisector.capture.processes import Processes
from bisector.capture.replicas import job_rank, replicated_values, write_step
from bisector.capture.values import ValueTable, byte_span, covers_storage, storage_of
from bisector.runfiles import RunFiles, captured_inputs, snapshot_name
from bisector.schema import (
    BACKWARD,
    COMPILED_PREFIX,
    MODEL,
    MORE_STEPS_FOR_OPTIMIZERS,
    OPS,
    OPTIMIZER,
    leaf_op,
)
from bisector.torch_api import (
    TorchDispatchMode,
    current_autograd_node,
    current_dispatch_mode,
    disable_current_modes,
    skip_dynamo,
)
from bisector.trace import (
    FLAG_RANDOM,
    FLAG_WIDE,
    MAX_ROWS,
    TraceWriter,
)

_UNTRACKED = (-1, 0)  # (producer event, slot) of an input we cannot follow
# Live values listed in a footer at most (two numbers each); past it, the list is cut short
# and the analysis takes every value as live (no difference is dismissed as scratch).
_MAX_LIVE = 1 << 22
# Distinct argument keys remembered (see ``Recorder._args_id``); past it, the cache restarts.
_MAX_ARGS_KEYS = 1 << 16


def _wide(refs: list) -> tuple[list, int]:
    """An op with more tensor inputs than an event holds (``torch.stack`` of a batch of 65536
    samples): repeated inputs (views of one storage, the same value) are kept once; if that is
    still too many, the first MAX_ROWS are kept and the event is flagged FLAG_WIDE (the analysis
    never calls it a kernel: a difference in the others would not be seen)."""
    refs = list(dict.fromkeys(refs))
    if len(refs) <= MAX_ROWS:
        return refs, 0
    return refs[:MAX_ROWS], FLAG_WIDE


class StopRun(BaseException):
    """Ends a run once the requested steps are recorded.

    A BaseException, so that a user's ``except Exception`` around a training step cannot swallow
    it by accident. The trace is complete on disk before it is raised.
    """


class InternalFailure(BaseException):
    """bisector's own code failed inside the user's process (a bug in bisector, not the script).

    Raised in place of the exception our hook, handler or writer raised, once the trace is
    finished with what was recorded so far. A BaseException, so that the user's ``except
    Exception`` cannot swallow it and train on unrecorded. ``details`` holds our traceback.
    """

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


# Set on an exception raised by the user's own op call (not ours) as it passes our handler.
_USERS = "_bisector_raised_by_user_code"


def _ours(method):
    """Mark a Recorder method that runs inside the user's process on their behalf (a hook, the
    op handler): an exception it raises, other than one from the user's own op, is a bug in
    bisector and becomes an ``InternalFailure`` (see ``Recorder._fail``)."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    return guarded


def ending(exc_type, exc) -> tuple[str, str | None]:
    """How a run ended, for a trace or digest footer: (status, error) from the exception that
    left the recording context (None: it ran to its end)."""
    if exc_type is None:
        return "complete", None
    if issubclass(exc_type, StopRun):
        return "stopped", None
    if issubclass(exc_type, InternalFailure):
        return "internal-error", str(exc)
    if issubclass(exc_type, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    if issubclass(exc_type, SystemExit):
        code = exc.code if exc is not None else None
        return ("complete", None) if code in (None, 0) else ("exited", f"exit status {code}")
    return "failed", f"{exc_type.__name__}: {exc}"


@dataclass(frozen=True)
class RecordOptions:
    """How a Recorder records.

    Attributes:
        steps: stop recording after this many optimizer steps (when the script never steps an
            optimizer: after this many calls of its first top-level module), or later, once
            every optimizer of the script has stepped while recording (at most
            ``MORE_STEPS_FOR_OPTIMIZERS`` steps more; not with ``start_step``: a rung of the
            ladder records the step it was given). None: record all.
        exit_on_stop: raise StopRun when ``steps`` are reached, ending the script (the runner's
            mode). Otherwise recording stops and the script goes on.
        chunk_events: events buffered before a chunk is written (and fingerprints read back).
        argv: argv to store in the header (default: sys.argv).
        capture: event indices whose inputs are saved (for a replay of the op).
        capture_dir: folder for those inputs (``event-<index>.pt``).
        snapshot_dir: save parameters, gradients and optimizer state after each optimizer
            step there (``step-<n>.safetensors``), for an exact growth of the difference.
        start_step: record ops only from this optimizer step on (the steps before run
            unrecorded, at full speed); the trace's events keep their true step numbers.
        progress_file: keep this rank's progress there (see capture/progress.py), for the
            watchdog of a torchrun job.
        user_paths: folders or files of the user's own code, besides the script's folder and
            the working folder: an event's line is the innermost line there (capture/lines.py).
        stop_when_captured: with ``exit_on_stop``, end the run once every input asked for is
            saved (not in a job of several ranks: the others would wait for this one).
        modules_only: record each module call (and its backward) as one event, and no op
            (the module rung: see capture/module_calls.py).
        inside: record only the ops run inside this module (its path) and its backward, not
            the optimizer step (whose ops on its parameters would read state made by ops left
            out as differing leaves); the values they read from outside become leaves.
    """

    steps: int | None = None
    exit_on_stop: bool = False
    chunk_events: int = 16384
    argv: tuple[str, ...] | None = None
    capture: frozenset[int] = frozenset()
    capture_dir: str | None = None
    snapshot_dir: str | None = None
    start_step: int = 0
    progress_file: str | None = None
    user_paths: tuple[str, ...] = ()
    stop_when_captured: bool = True
    modules_only: bool = False
    inside: str | None = None


class _OpMode(TorchDispatchMode):
    """Sends every aten call to the Recorder while it records."""

    def __init__(self, recorder: Recorder):
        super().__init__()
        self._recorder = recorder

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # Let Dynamo compile while this mode is active; compiled code is recorded at its
        # boundary (see capture/compiled.py), not op by op.
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorder = self._recorder
        if os.getpid() != recorder.pid:  # a process the script forked: noted, not recorded
            if recorder.recording:
                recorder._in_other_process()
            return func(*args, **kwargs)
        if not recorder.recording or recorder._compiled_depth:
            if recorder.attributing and not recorder._compiled_depth:
                try:
                    recorder._place(func, args, kwargs)  # (see Recorder._maybe_start)
                except Exception as exc:
                    recorder._fail(exc)
            return func(*args, **kwargs)
        if recorder._graphs.capturing is not None:
            return recorder._on_captured_op(func, args, kwargs)
        try:  # (``_ours`` inlined: this runs once per op)
            return recorder._on_op(func, args, kwargs)
        except Exception as exc:
            recorder._fail(exc)

    # Dynamo must never compile the handler (nor what it calls). torch ensures it by wrapping
    # ``__torch_dispatch__`` in ``torch._dynamo.disable``, whose wrapper costs a context switch
    # per op and imports Dynamo at the first one (1.3 s of every recorded run). Where torch
    # lets a code object be marked to be skipped, it is marked instead, here, before torch
    # decides (when the class is made) whether to wrap it.
    _dynamo_skipped = skip_dynamo(__torch_dispatch__.__code__)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return not cls._dynamo_skipped


class Recorder:
    """Records the aten calls of the code run inside it into a trace file.

    Args:
        path: the trace file to write.
        options: see RecordOptions.

    Example:
        >>> with Recorder("run.trace", RecordOptions(steps=2)):
        ...     train()
    """

    def __init__(self, path: str | os.PathLike, options: RecordOptions | None = None):
        self.path = Path(path)
        self.options = options or RecordOptions()
        self.pid = os.getpid()
        self.recording = False
        self.status = "new"
        self._writer: TraceWriter | None = None
        self._mode: _OpMode | None = None
        self._hooks: list = []
        self._locator = Locator(self.options.user_paths)
        self._modules = ModuleTracker(self._root_enter, guard=self._guard, locator=self._locator)
        self._draws = DrawSites(self._locator, lambda: self.step)
        self._buffer = EventBuffer(self.options.chunk_events)
        self._attribution = Attribution(self._modules, self._buffer.string)
        self._op_infos: dict[Any, OpInfo] = {}
        self._location_ids: dict[tuple, int] = {}
        self._args_ids: dict[tuple, int] = {}  # args_key -> string id of canonical_args
        self._values = ValueTable()
        # (event, slot) of a collective just recorded, until the next op: a tensor first seen
        # then is its backend's (gloo's reduce-scatter returns through a buffer of its own).
        # The trace only links it (a leaf whose input is the collective); the events are
        # already written, so analysis (``_collective_results``) blames the collective.
        self._after_collective: tuple[int, int] | None = None
        self.step = 0
        self._optimizer_steps = 0
        self._main_root: weakref.ref | None = None
        self._main_root_calls = 0
        self._owns_parameters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._parameter_storages: set[int] = set()
        self._seen_optimizers: weakref.WeakSet = weakref.WeakSet()
        self._stepped_recording = Stepped()  # optimizers whose step ended while recording
        self.model_calls = 0  # calls of top-level modules that own parameters
        self.parameter_writes = 0  # in-place writes into those parameters while recording
        files = RunFiles(self.path)
        self._processes = Processes(files.processes, self.pid)
        self._replicas_path = files.replicas
        self._kept: list[tuple[int, int]] = []  # values taken out of torch (saved, tolist)
        self._escapes = Escapes(self._keep_value)
        self._optimizer_present: bool | None = None
        self._started = 0.0
        self._captured: set[int] = set()
        self._optimizers: set[str] = set()
        self._stepped: list = []
        self._progress: Any = None
        self.boundary = Boundary(self)
        self._graphs = CudaGraphs(self.boundary)
        self._compiled = CompileBoundary(self.boundary)
        self._module_calls = ModuleCalls(self.boundary, self._guard)
        self._inside: dict[int, bool] = {}  # module id -> inside ``options.inside``
        self._thread = threading.local()  # _compiled_depth, per thread (autograd's run apart)
        self.compiled_calls = 0

    # ----- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        header = settings.header(list(self.options.argv) if self.options.argv is not None else None)
        header["start_step"] = self.options.start_step
        header["inside"] = self.options.inside
        header["modules_only"] = self.options.modules_only
        self._writer = TraceWriter(self.path, header)
        self._buffer.writer = self._writer
        self._started = time.perf_counter()
        self._processes.path.unlink(missing_ok=True)  # notes of an earlier run of this path
        self._replicas_path.unlink(missing_ok=True)
        try:
            self._processes.install()
            self._escapes.install()
            self._modules.install()
            self._draws.install()
            self._compiled.install()
            self._hooks = [
                register_optimizer_step_pre_hook(self._optimizer_pre),
                register_optimizer_step_post_hook(self._optimizer_post),
            ]
            self._graphs.install()
        except BaseException:  # undo what was installed: nothing of ours stays in the process
            self._uninstall()
            with contextlib.suppress(Exception):
                self._writer.close({"status": "failed", "error": "bisector could not install"})
            self._writer = None
            raise
        if self.options.progress_file:
            from bisector.capture.progress import Progress

            self._progress = Progress(self.options.progress_file)
        self.status = "waiting"
        self._maybe_start()
        return self

    def _maybe_start(self) -> None:
        """Start recording ops once the start step is reached. Some steps before it (as many
        as attribution remembers), the dispatch mode already attributes the ops (module and
        line of the autograd nodes they make): a graph built before an optimizer step can run
        backward after it (a GAN's generator output, made before the discriminator's steps),
        and its backward ops are then recorded with the module and line of their forward."""
        if self.status != "waiting":
            return
        start = self.options.start_step
        early = start - STEPS_REMEMBERED + 1
        if self._mode is None and self.step >= early and not self.options.modules_only:
            self._mode = _OpMode(self)
            self._mode.__enter__()
        if self.step >= start:
            if self.options.modules_only:
                self._module_calls.install()
            self.recording = True
            self.status = "recording"

    @property
    def attributing(self) -> bool:
        """True in the steps before ``start_step`` (as many as attribution remembers): their
        ops are not recorded, but the module and line of the autograd nodes they make are
        remembered, for a backward run after them."""
        return self.status == "waiting" and self._mode is not None

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        try:
            if self.status in ("recording", "waiting"):
                try:
                    self._finish(*ending(exc_type, exc))
                except Exception as failure:
                    self._fail(failure)
        finally:
            self._uninstall()
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self._mode = None
            if self._progress is not None:
                self._progress.close()
        return False

    def name_modules(self, model: torch.nn.Module) -> None:
        """Name ``model``'s submodules by their path in it (``pool``, ``encoder.0``), as if it
        had been called: for frameworks that call a model's methods, not the model itself
        (Lightning's ``training_step``), whose submodules would otherwise be roots."""
        self._modules.register(model)

    @property
    def events(self) -> int:
        """Events recorded so far."""
        return self._buffer.count

    def stop(self) -> None:
        """Stop recording now and finish the trace; the code being recorded goes on, without
        our dispatch mode when it is the innermost (a mode pushed after ours keeps it until
        the ``with`` block ends; it then passes every op through)."""
        if self.status in ("recording", "waiting"):
            self._finish("stopped")
            self._uninstall()
            mode = self._mode
            if mode is not None and current_dispatch_mode() is mode:
                mode.__exit__(None, None, None)
                self._mode = None

    def _uninstall(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._processes.remove()
        self._escapes.remove()
        self._modules.remove()
        self._draws.remove()
        self._compiled.remove()
        self._graphs.remove()
        self._module_calls.remove()

    @property
    def graph_replays(self) -> int:
        """CUDA graph replays seen (each recorded as one event while recording)."""
        return self._graphs.replays

    def _finish(self, status: str, error: str | None = None) -> None:
        """Write what is buffered and the footer; from here on ops pass through unrecorded."""
        self.recording = False
        unstepped = self._unstepped_described() if self._writer is not None else []
        self.status = status
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        try:
            self._buffer.flush()
        finally:
            writer.close(
                {
                    "status": status,
                    "error": error,
                    "events": self._buffer.count,
                    "steps": self._optimizer_steps,
                    "seconds": time.perf_counter() - self._started,
                    "settings_at_end": settings.determinism(),
                    "cuda_used": torch.cuda.is_initialized(),
                    "cuda_memory": settings.cuda_memory(),
                    "seeds_at_end": settings.seeds(),
                    "optimizers": sorted(self._optimizers),
                    "unstepped_optimizers": unstepped,
                    "modules": settings.notable_modules(),
                    "cuda_graph_replays": self._graphs.replays,
                    "compiled_calls": self.compiled_calls,
                    "model_calls": self.model_calls,
                    "parameter_writes": self.parameter_writes,
                    "processes": self._processes.summary(),
                    "live_at_end": self._live_values(),
                    "draws": self._draws.summary(),
                    "module_info": self._modules.described,
                }
            )
            self._values.close()

    def _guard(self, function):
        """``function`` with ``_ours``'s treatment, for callbacks we hand to other objects."""

        @functools.wraps(function)
        def guarded(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                self._fail(exc)

        return guarded

    def _fail(self, exc: Exception) -> None:
        """Our own code raised ``exc``: keep what was recorded (the trace is finished with
        status ``internal-error``), take everything out, and raise InternalFailure. An
        exception of the user's own op (marked by ``_mark_users``) passes on untouched."""
        if getattr(exc, _USERS, False) or os.getpid() != self.pid:
            raise exc  # the user's, or in a forked process: the trace is the parent's
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.status in ("recording", "waiting"):
            # the writer itself may be what failed: the footer is lost then
            with contextlib.suppress(Exception):
                self._finish("internal-error", message)
            self._uninstall()
        raise InternalFailure(message, details) from exc

    def _live_values(self) -> list[int] | None:
        """(event, slot) of every value whose storage is still alive now, flattened: what the
        script still holds (parameters, optimizer state, outputs). A differing value outside
        this set, that nothing read into a differing result, was scratch (see analysis).
        None when there are too many to list, or when only the ops of one module were recorded
        (what it makes is read outside it, unrecorded): every value counts as live then."""
        if self.options.inside is not None:
            return None
        live: list[int] = [x for pair in self._kept[:_MAX_LIVE] for x in pair]
        for event, slot in self._values.alive():
            if len(live) >= _MAX_LIVE:
                return None
            live += (event, slot)
        return live

    @_ours
    def _keep_value(self, t: torch.Tensor) -> None:
        """The script takes this tensor's value out of torch (``torch.save``, ``.tolist()``,
        ``.numpy()``): an output, whose difference always counts."""
        if not self.recording or os.getpid() != self.pid or self._compiled_depth:
            return
        user, library, _ = self._locator.locate(3)
        with _outside_mode():
            ref = self._ref(t, _OTHER, self._buffer.string(""), self._location(user, library))
        if ref[0] >= 0:
            self._kept.append(ref)

    # ----- hooks ------------------------------------------------------------------------------

    @_ours
    def _optimizer_pre(self, optimizer, args, kwargs) -> None:
        if os.getpid() != self.pid:
            if self.recording:
                self._processes.note(OPTIMIZER)
            return
        self._attribution.optimizer_depth += 1
        self._optimizers.add(type(optimizer).__name__)
        if optimizer not in self._seen_optimizers:  # its parameters are trained too
            self._seen_optimizers.add(optimizer)
            self._count_writes_into(p for group in optimizer.param_groups for p in group["params"])
        self._stepped.append(optimizer)
        return self._closure_outside_optimizer(args, kwargs)

    def _closure_outside_optimizer(self, args: tuple, kwargs: dict):
        """Wrap a closure passed to ``step`` (LBFGS, Lightning's automatic optimization) so
        that the forward and backward it runs get their own phase and module, not the
        optimizer's. Returns the hook's (args, kwargs), or None when there is no closure."""
        recorder = self

        def wrap(closure):
            @functools.wraps(closure)
            def outside_optimizer(*a, **k):
                attribution = recorder._attribution
                depth, attribution.optimizer_depth = attribution.optimizer_depth, 0
                try:
                    return closure(*a, **k)
                finally:
                    attribution.optimizer_depth = depth
                    attribution.forward_open = False

            return outside_optimizer

        return wrap_closure(args, kwargs, wrap)

    @_ours
    def _optimizer_post(self, optimizer, args, kwargs) -> None:
        if os.getpid() != self.pid:
            return
        attribution = self._attribution
        attribution.optimizer_depth = max(0, attribution.optimizer_depth - 1)
        if attribution.optimizer_depth:
            return
        self._optimizer_steps += 1
        if self.status == "recording":
            self._stepped_recording.add(optimizer)
        if self.options.snapshot_dir and self.recording:
            self._snapshot()
        if self.recording:
            self._note_replicas()
        self._stepped.clear()
        self._compiled_depth = 0  # a failed compiled backward must not hide ops for ever
        self.step += 1
        self._attribution.step_done()
        if self._progress is not None:
            self._progress.update(self._buffer.count, self.step)
        self._maybe_start()
        self._check_stop()

    def _note_replicas(self) -> None:
        """In a job of several ranks, fingerprint what every rank should hold alike (see
        capture/replicas.py): one host wait per step."""
        rank = job_rank()
        if rank is None:
            return
        with _outside_mode():
            named = replicated_values(self._modules.roots())
            write_step(self._replicas_path, self.step, rank, named)

    def _snapshot(self) -> None:
        """Save the training state after this step (one host copy per step, not per op)."""
        from bisector.capture import snapshots

        def name_of(param):
            named = self._modules.parameter_name(param)
            return named[1] if named else None

        tensors = snapshots.state_tensors(self._stepped, name_of)
        self.recording = False  # the copies are ours, not the script's
        try:
            path = Path(str(self.options.snapshot_dir)) / snapshot_name(self.step)
            snapshots.save(path, tensors)
        finally:
            self.recording = True

    def _in_other_process(self) -> None:
        """An op in a process the script forked: note what kind of work it is."""
        self._processes.note(OPS)
        if current_autograd_node() is not None:
            self._processes.note(BACKWARD)

    def _owns_parameters_of(self, module: torch.nn.Module) -> bool:
        owns = self._owns_parameters.get(module)
        if owns is None:
            owns = self._owns_parameters[module] = next(module.parameters(), None) is not None
            if owns:
                self._count_writes_into(module.parameters())
        return owns

    def _count_writes_into(self, parameters) -> None:
        """In-place writes into these tensors' storages are training (``parameter_writes``)."""
        self._parameter_storages.update(
            s._cdata for s in map(storage_of, parameters) if s is not None
        )

    def _root_enter(self, module: torch.nn.Module) -> None:
        model = self._owns_parameters_of(module)
        if os.getpid() != self.pid:
            if model and self.recording:
                self._processes.note(MODEL)
            return
        if model:
            self.model_calls += 1
        # The step unit of a script without optimizer is the model: the first top-level module
        # that owns parameters, not a data transform called before it.
        if self._main_root is None and model:
            self._main_root = weakref.ref(module)
        if self._main_root is not None and self._main_root() is module:
            self._main_root_calls += 1
            if self._main_root_calls > 1 and self._optimizer_steps == 0 and self._no_optimizer():
                # A script without an optimizer counts top-level forward calls as steps.
                self.step += 1
                self._maybe_start()
                self._check_stop()
        self._attribution.forward_open = True
        if self.options.modules_only and self.recording:
            self._module_calls.watch_parameters()

    def _unstepped_described(self) -> list[str]:
        """For the footer: the optimizers still unstepped when recording stopped early."""
        if self.status != "recording":
            return []

        def name_of(param: torch.Tensor) -> str | None:
            named = self._modules.parameter_name(param)
            return named[1] if named else None

        return self._stepped_recording.described(name_of)

    def _no_optimizer(self) -> bool:
        if self._optimizer_present is None:
            self._optimizer_present = bool(live_optimizers())
        return not self._optimizer_present

    def _check_stop(self) -> None:
        steps = self.options.steps
        if steps is None or self.step < steps or self.status != "recording":
            return
        if (
            self._optimizer_steps
            and not self.options.start_step  # (a rung of the ladder records its step only)
            and self.step < steps + MORE_STEPS_FOR_OPTIMIZERS
            and self._stepped_recording.unstepped()
        ):
            return  # (see MORE_STEPS_FOR_OPTIMIZERS)
        self.stop()
        if self.options.exit_on_stop:
            raise StopRun(f"stopped recording after {self.step} steps")

    # ----- one aten call ----------------------------------------------------------------------

    def _info(self, func) -> OpInfo:
        info = self._op_infos.get(func)
        if info is None:
            info = self._op_infos[func] = OpInfo.of(func)
        return info

    def _place(self, func, args: tuple, kwargs: dict):
        """(its OpInfo, its leaves, the tensors among them, (phase, module id, location id)) of
        an aten call the handler passes on, or None for one that is not attributed (an ignored
        op, data moved in from another process). Attributing remembers the autograd nodes the
        call makes (see ``Attribution.context``)."""
        info = self._op_infos.get(func) or self._info(func)
        if info.ignored:
            return None
        # (from the handler's frame, or its caller's where the handler calls this itself: the
        # walk passes over our own frames either way)
        user, library, transfer = self._locator.walk(sys._getframe(2))
        if transfer:
            return None
        flat = leaves(args, kwargs)
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        return info, flat, tensors, self._context(tensors, user, library)

    def _on_op(self, func, args: tuple, kwargs: dict):
        """Record one aten call (the dispatch handler guards it as ``_ours`` does)."""
        placed = self._place(func, args, kwargs)
        if placed is None:
            return _call_users(func, args, kwargs)
        info, flat, tensors, (phase, module_id, location_id) = placed
        if self.options.inside is not None and (
            phase == _OPTIMIZER_PHASE or not self._is_inside(module_id)
        ):  # (what it writes is read later as leaves; the optimizer step is no module's)
            return _call_users(func, args, kwargs)
        reads = tensors if info.reads_every_tensor else info.reads(args, kwargs, flat)
        refs = [r for t in reads for r in self._refs(t, phase, module_id, location_id)]
        args_id = self._args_id(flat)

        written = info.writes(args, kwargs) if info.written else []
        n_bumped = len(written)  # autograd bumps the version of these after our handler
        if info.write_only:
            # A collective that has output arguments may also use its inputs as scratch (gloo's
            # reduce-scatter reduces in its input): whatever they hold after it comes from it.
            written += _apart_from(info.reads(args, kwargs, flat), info.outputs_only(args))
        previous: list[tuple[int, int] | None] = [
            None if covers_storage(t) else self._ref(t, phase, module_id, location_id)
            for t in written
        ]

        captured = self._capture(info.name, args, kwargs) if self.options.capture else False
        if info.collective and self._progress is not None:
            self._progress.waiting(info.name)
        try:
            out = func(*args, **kwargs)
            if info.collective:  # waiting for its data is part of the user's op (a peer may
                complete_collective(info.name, out)  # have died: that error is theirs)
        except Exception as exc:
            _mark_users(exc)
            raise
        if info.collective and self._progress is not None:
            self._progress.waiting(None)

        no_data = [info.no_data] * len(written)
        # With no dropout, attention's generator-state results are never initialised.
        unset = info.rng_returns if info.rng_returns and info.without_dropout(args, kwargs) else ()
        results = info.results(out)
        if info.unsafe_alias and results:
            results = self._not_aliasing(results, args, kwargs, flat, info)
        if info.partial_returns:  # registered first: a view of the part written comes last
            results.sort(key=lambda result: result[0] not in info.partial_returns)
        for i, t in results:
            written.append(t)
            previous.append(None)
            no_data.append(info.no_data or i in unset or i in info.partial_returns)

        index = self._buffer.count
        # Past MAX_ROWS fresh results (unbind-like ops make views, not these), the rest is
        # not followed: where it is read, it is fingerprinted as a leaf.
        del written[MAX_ROWS:]
        for slot, t in enumerate(written):
            self._buffer.add_output(t, no_data[slot], previous[slot], index)
            self._register(t, index, slot, bump=slot < n_bumped)
        flags = FLAG_RANDOM if info.random and info.draws_random(args, kwargs) else 0
        if len(refs) > MAX_ROWS:  # (see _wide)
            refs, wide = _wide(refs)
            flags |= wide
        self._buffer.add_event(
            info.name, module_id, location_id, args_id, phase, self.step, refs, len(written), flags
        )
        self._after_collective = (index, 0) if info.collective and written else None
        if self._progress is not None:
            self._progress.update(self._buffer.count, self.step)
        if (
            captured
            and self._captured >= self.options.capture
            and self.options.exit_on_stop
            and self.options.stop_when_captured
        ):
            self.stop()  # everything asked for is saved: no need to run further
            raise StopRun("captured the inputs asked for")
        return out

    @staticmethod
    def _not_aliasing(results: list, args: tuple, kwargs: dict, flat: list, info: OpInfo) -> list:
        """The results that are new memory. The ``unsafe`` ops return views of an input although
        their schema says fresh (``unsafe_split``, ``unsafe_chunk``, ``_unsafe_view``): such a
        result is part of the input's value (its reads resolve to the input's producer, its
        geometry is in the reader's arguments), not a value of its own that would hide the
        input's. (A collective also returns the very tensors it wrote without saying so: those
        are its writes, and stay results.)"""
        inputs = {
            s._cdata for s in map(storage_of, info.reads(args, kwargs, flat)) if s is not None
        }
        kept = []
        for i, t in results:
            storage = storage_of(t)
            if storage is None or storage._cdata not in inputs:
                kept.append((i, t))
        return kept

    # ----- code recorded at its boundary: driven by capture/compiled.py and cuda_graphs.py ---
    # through ``Boundary``

    @property
    def _compiled_depth(self) -> int:
        """How deep the calling thread is inside compiled code (its ops are not recorded)."""
        return getattr(self._thread, "_compiled_depth", 0)

    @_compiled_depth.setter
    def _compiled_depth(self, value: int) -> None:
        self._thread._compiled_depth = value

    def _enter_module(self, module: torch.nn.Module) -> bool:
        """Enter a compiled module whose own hooks will not run (``Module.compile()``);
        returns whether it was entered (False: it is already the innermost)."""
        return self._modules.enter(module)

    def _leave_module(self) -> None:
        self._modules.leave()

    def _hide_module_hooks(self) -> bool:
        """Take the module hooks out while compiled code runs (Dynamo would trace them);
        returns whether they were in."""
        return self._modules.suspend()

    def _show_module_hooks(self, hidden: bool) -> None:
        if hidden:
            self._modules.resume()

    @_ours
    def _boundary_inputs(
        self, tensors: list[torch.Tensor], backward_of: tuple[int, int, int] | None = None
    ) -> tuple[list, tuple[int, int, int]]:
        """Refs of the tensors a compiled call reads, and the (phase, module, location) of the
        call, taken before it runs; ``backward_of``: the context of the forward call whose
        backward this is."""
        if os.getpid() != self.pid:  # compiled code in a forked process: not ours to record
            self._processes.note(OPS)
            return [], (_OTHER, 0, 0)
        if backward_of is not None:
            context = (_BACKWARD, backward_of[1], backward_of[2])
        else:
            user, library, _ = self._locator.locate(2)
            context = self._context(tensors, user, library)
        with _outside_mode():  # leaves are fingerprinted here, as in the dispatch handler
            return [r for t in tensors for r in self._refs(t, *context)], context

    @_ours
    def _boundary_event(
        self,
        name: str,
        reads: tuple[list, tuple[int, int, int]],
        written: list[torch.Tensor],
        outputs: list[torch.Tensor],
        module: torch.nn.Module | None,
    ) -> None:
        """Record one call of code seen only at its boundary (compiled code, a CUDA graph
        replay): it read ``reads``, wrote ``written`` in place and returned ``outputs``."""
        if os.getpid() != self.pid:
            return
        refs, (phase, module_id, location_id) = reads
        if module is not None:
            name_of = self._modules.name_of(module)
            if name_of is not None and phase != _BACKWARD:
                module_id = self._buffer.string(name_of)
        index = self._buffer.count
        tensors = written + [t for t in outputs if all(t is not w for w in written)]
        with _outside_mode():
            for slot, t in enumerate(tensors):
                self._buffer.add_output(t.detach(), False, None, index)
                self._register(t, index, slot)
        args_id = self._buffer.string(canonical_args(tensors))
        self._buffer.add_event(
            name, module_id, location_id, args_id, phase, self.step, refs, len(tensors)
        )
        if name.startswith(COMPILED_PREFIX):
            self.compiled_calls += 1
        if self._progress is not None:
            self._progress.update(self._buffer.count, self.step)

    @_ours
    def _on_captured_op(self, func, args: tuple, kwargs: dict):
        """An op run while a CUDA graph is captured: not recorded (its kernels are captured,
        ours would be too), only what it reads and writes is noted for the replays."""
        info = self._info(func)
        out = _call_users(func, args, kwargs)
        if info.ignored:
            return out
        read = info.reads(args, kwargs, leaves(args, kwargs))
        written = info.writes(args, kwargs) + [t for _, t in info.results(out)]
        views = []
        if info.is_view:  # a view of a written storage may outlive the tensor that wrote it
            views = [t for t in leaves((out,), {}) if isinstance(t, torch.Tensor)]
        capture = self._graphs.capturing
        assert capture is not None  # (called only while a graph is captured)
        capture.add(read, written, views)
        return out

    def _capture(self, op: str, args: tuple, kwargs: dict) -> bool:
        """Save the inputs of this call if its event index was asked for; True if saved."""
        index = self._buffer.count
        if index not in self.options.capture or self.options.capture_dir is None:
            return False
        from bisector.capture.inputs import save_inputs

        path = captured_inputs(Path(self.options.capture_dir), index)
        try:
            save_inputs(path, op, args, kwargs)
        except (TypeError, OSError, RuntimeError) as exc:  # the replay says why it is missing
            path.with_suffix(".error").write_text(f"{type(exc).__name__}: {exc}")
        self._captured.add(index)
        return True

    def _is_inside(self, module_id: int) -> bool:
        """Whether the module of this id is ``options.inside`` or lies in it."""
        inside = self._inside.get(module_id)
        if inside is None:
            path, wanted = self._buffer.text(module_id), str(self.options.inside)
            inside = self._inside[module_id] = path == wanted or path.startswith(wanted + ".")
        return inside

    def _args_id(self, flat: list) -> int:
        """The string id of ``canonical_args(flat)``, cached by ``args_key``."""
        key = args_key(flat)
        try:
            args_id = self._args_ids.get(key) if key is not None else None
        except TypeError:  # an unhashable argument: no key
            key = args_id = None
        if args_id is None:
            args_id = self._buffer.string(canonical_args(flat))
            if key is not None:
                if len(self._args_ids) >= _MAX_ARGS_KEYS:
                    self._args_ids.clear()
                self._args_ids[key] = args_id
        return args_id

    def _context(self, tensors: list[torch.Tensor], user, library) -> tuple[int, int, int]:
        """(phase, module id, location id) of the call being dispatched from the ``user`` frame
        (and the ``library`` frame inside it): see ``Attribution.context``."""
        return self._attribution.context(tensors, user, self._location(user, library))

    def _location(self, user, library) -> int:
        key = self._locator.cache_key(user, library)
        location_id = self._location_ids.get(key)
        if location_id is None:
            location_id = self._buffer.string(self._locator.describe(user, library))
            self._location_ids[key] = location_id
        return location_id

    # ----- dataflow ---------------------------------------------------------------------------

    def _ref(
        self, t: torch.Tensor, phase: int, module_id: int, location_id: int
    ) -> tuple[int, int]:
        """(event index, slot) of the event that produced the tensor's current value (where one
        event wrote several parts of its storage: the part the tensor is, else the last)."""
        return self._refs(t, phase, module_id, location_id)[-1]

    def _refs(
        self, t: torch.Tensor, phase: int, module_id: int, location_id: int
    ) -> list[tuple[int, int]]:
        """Every (event index, slot) the tensor's current value comes from (see
        ``ValueTable.find``); a value no recorded event made is recorded as a leaf first."""
        storage = storage_of(t)
        if storage is None:
            return [_UNTRACKED]
        refs, previous = self._values.find(t, storage)
        if refs is not None:
            return refs
        if previous is None:
            previous = self._after_collective
        return [(self._add_leaf(t, storage, phase, module_id, location_id, previous), 0)]

    def _register(self, t: torch.Tensor, index: int, slot: int, bump: bool = False) -> None:
        """Remember that event ``index`` (output ``slot``) produced the tensor's current value
        (``bump``: see ``ValueTable.register``); count in-place writes into parameters."""
        key = self._values.register(t, index, slot, bump)
        if bump and key is not None and key in self._parameter_storages:
            self.parameter_writes += 1

    def _add_leaf(
        self, t, storage, phase: int, module_id: int, location_id: int, previous=None
    ) -> int:
        """Record a tensor no recorded event produced, and register it; returns its event
        index. ``previous``: (event, slot) of the storage's last value we know, read by it.

        A tensor that is part of its storage is fingerprinted itself (contiguous), or as the
        bytes it spans (strided); the rest of the storage is read by a leaf of its own where a
        view reads it, never with this one: bytes no tensor reads may never have been written
        (an MSE loss is a 0-d view of its elementwise buffer), and would make the leaf differ
        between runs. Past ``MAX_LEAF_SPANS`` leaves of one value, the whole storage (see
        ``ValueTable.leaf_span``)."""
        named = self._modules.parameter_name(t)
        if named is not None:
            kind, name = named
            module_id = self._buffer.string(self._modules.owner_of(name))
        else:
            kind = "parameter" if isinstance(t, torch.nn.Parameter) else "tensor"
            name = canonical_args([t])
        whole, span = t, None
        values = plain_values(t)
        if hashable(values) and not covers_storage(t, storage):
            own = byte_span(t)
            span = self._values.leaf_span(t, storage, own)
            if span != own or not values.is_contiguous():
                start, end = span
                whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)
                whole = whole[start:end]
        index = self._buffer.count
        self._buffer.add_output(whole, False, None, index)
        name_id = self._buffer.string(name)
        self._buffer.add_event(
            leaf_op(kind),
            module_id,
            location_id,
            name_id,
            phase,
            self.step,
            [previous] if previous is not None else [],
            1,
        )
        if span is None:
            self._register(t, index, 0)
        else:
            self._values.register_leaf(t, index, storage, span)
        return index


class Boundary:
    """What capture/compiled.py and capture/cuda_graphs.py may do to a Recorder: code seen
    only at its boundary (a compiled call, a CUDA graph replay) is recorded as one event, and
    the ops inside it are not recorded (``opaque_depth`` above zero)."""

    def __init__(self, recorder: Recorder):
        self._recorder = recorder

    @property
    def recording(self) -> bool:
        return self._recorder.recording

    @property
    def opaque_depth(self) -> int:
        """How deep the calling thread is inside code seen only at its boundary."""
        return self._recorder._compiled_depth

    def enter_opaque(self) -> None:
        self._recorder._compiled_depth += 1

    def leave_opaque(self) -> None:
        self._recorder._compiled_depth -= 1

    def enter_module(self, module: torch.nn.Module) -> bool:
        return self._recorder._enter_module(module)

    def leave_module(self) -> None:
        self._recorder._leave_module()

    def hide_module_hooks(self) -> bool:
        return self._recorder._hide_module_hooks()

    def show_module_hooks(self, hidden: bool) -> None:
        self._recorder._show_module_hooks(hidden)

    def parameters(self) -> list[tuple[torch.Tensor, str]]:
        """Every parameter of the models seen so far, with the path of the module that owns
        it."""
        modules = self._recorder._modules
        found: list[tuple[torch.Tensor, str]] = []
        for root in modules.roots():
            for parameter in root.parameters():
                named = modules.parameter_name(parameter)
                if named is not None:
                    found.append((parameter, modules.owner_of(named[1])))
        return found

    def module_id(self, path: str) -> int:
        """The id of a module's path in the trace's strings."""
        return self._recorder._buffer.string(path)

    def backward_context(self, module: torch.nn.Module) -> tuple[int, int, int]:
        """The (phase, module, location) a module's backward is recorded with: its own path,
        the line of the user's code that runs the backward."""
        recorder = self._recorder
        user, library, _ = recorder._locator.locate(3)
        name = recorder._modules.name_of(module) or type(module).__name__
        return _BACKWARD, recorder._buffer.string(name), recorder._location(user, library)

    def inputs(
        self, tensors: list[torch.Tensor], backward_of: tuple[int, int, int] | None = None
    ) -> tuple[list, tuple[int, int, int]]:
        """Refs of what a call reads and the call's context, taken before it runs."""
        return self._recorder._boundary_inputs(tensors, backward_of)

    def event(self, name: str, reads, written, outputs, module) -> None:
        """Record the call as one event (see ``Recorder._boundary_event``)."""
        self._recorder._boundary_event(name, reads, written, outputs, module)


def _call_users(func, args: tuple, kwargs: dict):
    """Run the user's op; an exception it raises is theirs and passes our guards untouched."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        _mark_users(exc)
        raise


def _mark_users(exc: Exception) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _USERS, True)


@contextlib.contextmanager
def _outside_mode():
    """Run our own tensor work (fingerprints) from outside the dispatch handler as if inside
    it: unseen by the recording mode, and out of autograd."""
    with torch.no_grad(), disable_current_modes():
        yield


def _apart_from(tensors: list[torch.Tensor], others: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors that share no storage with any of ``others``."""
    taken = {s._cdata for s in map(storage_of, others) if s is not None}
    return [t for t in tensors if (s := storage_of(t)) is not None and s._cdata not in taken]
