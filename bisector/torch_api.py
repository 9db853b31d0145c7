"""The parts of torch that are not public API, in one place.

bisector needs a few of torch's internals: the dispatch-mode stack, pytree flattening, the
autograd node being run, weak references to storages, Dynamo's compiled-module class and the
C-level setters of the determinism flags. They can change between releases, so every use goes
through this module, and ``missing()`` names any that this torch lacks (``bisector doctor``
prints them; tests/test_structure.py checks that none is missing on the torch under test).

Checked on torch 2.11 (CUDA 13, on the H200s) and 2.13 (CPU, in CI).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import CodeType
from typing import Any

import torch
from torch.utils._python_dispatch import (
    TorchDispatchMode,
    _disable_current_modes,
    _get_current_dispatch_mode,
)
from torch.utils._pytree import arg_tree_leaves, tree_leaves

# The module whose private setters the determinism flags go through (see confirm/interventions:
# a script that turns a flag back is held to the intervention by wrapping the setter).
C = torch._C

__all__ = [
    "C",
    "TorchDispatchMode",
    "arg_tree_leaves",
    "autograd_sequence_nr",
    "current_raw_stream",
    "current_autograd_node",
    "current_dispatch_mode",
    "disable_current_modes",
    "dynamo_counters",
    "missing",
    "optimized_module_class",
    "skip_dynamo",
    "supports_ignore_compile_internals",
    "free_weak",
    "tree_leaves",
    "weak_expired",
    "weak_storage",
]

# Every private name used, as (module, attribute): what ``missing`` checks.
_USED = (
    ("torch.utils._python_dispatch", "_disable_current_modes"),
    ("torch.utils._python_dispatch", "_get_current_dispatch_mode"),
    ("torch.utils._pytree", "arg_tree_leaves"),
    ("torch.utils._pytree", "tree_leaves"),
    ("torch._C", "_current_autograd_node"),
    ("torch._C._autograd", "_get_sequence_nr"),
    ("torch._C", "_set_deterministic_algorithms"),
    ("torch._C", "_set_cublas_allow_tf32"),
    ("torch._C", "_set_float32_matmul_precision"),
    ("torch._dynamo.eval_frame", "OptimizedModule"),
    ("torch._dynamo.utils", "counters"),
    ("torch._C._dynamo.eval_frame", "set_code_exec_strategy"),
    ("torch._C._dynamo.eval_frame", "_FrameExecStrategy"),
    ("torch._C._dynamo.eval_frame", "_FrameAction"),
    ("torch", "UntypedStorage._weak_ref"),
    ("torch", "UntypedStorage._free_weak_ref"),
    ("torch", "UntypedStorage._expired"),
)
# Those of a CUDA build only (a CPU build has no CUDA streams).
_USED_CUDA = (("torch._C", "_cuda_getCurrentRawStream"),)


# Weak references to storages, as plain ints (what torch's ``StorageWeakRef`` holds): an int
# is made in a tenth of the time of that object, and is never tracked by the garbage collector.
# While a reference lives, the storage's address is not reused by another storage.
def weak_storage(storage: Any) -> int:
    """A weak reference to ``storage`` (free it with ``free_weak``)."""
    return storage._weak_ref()


weak_expired: Callable[[int], bool] = torch.UntypedStorage._expired  # type: ignore[attr-defined,assignment]
free_weak: Callable[[int], None] = torch.UntypedStorage._free_weak_ref  # type: ignore[attr-defined]


def disable_current_modes():
    """A context in which no dispatch mode sees the ops run (our own tensor work)."""
    return _disable_current_modes()


def current_dispatch_mode() -> Any:
    """The innermost dispatch mode pushed, or None."""
    return _get_current_dispatch_mode()


# The autograd node whose backward is running in this thread, or None. (Bound directly: called
# once per recorded op.)
current_autograd_node: Callable[[], Any] = torch._C._current_autograd_node


def current_raw_stream(device_index: int) -> int:
    """The raw handle (``cudaStream_t``) of a CUDA device's current stream: what
    ``torch.cuda.current_stream(device).cuda_stream`` is, without making a Stream object."""
    return torch._C._cuda_getCurrentRawStream(device_index)


# The sequence number the next autograd node will get (nodes made since can be told apart).
autograd_sequence_nr: Callable[[], int] = torch._C._autograd._get_sequence_nr


def optimized_module_class() -> type[Any]:
    """Dynamo's wrapper of a compiled module (imported only when needed: Dynamo is slow to
    import)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def dynamo_counters() -> Any:
    """Dynamo's counters (graph breaks, frames compiled)."""
    from torch._dynamo.utils import counters

    return counters


def skip_dynamo(code: CodeType) -> bool:
    """Have Dynamo run this code, and all it calls, as it is, never compiled: what
    ``torch._dynamo.disable`` does, without its wrapper run at each call, which also imports
    Dynamo (about 1.3 s) the first time. False where this torch has no way to."""
    try:
        from torch._C._dynamo import eval_frame

        skip = eval_frame._FrameAction.SKIP
        eval_frame.set_code_exec_strategy(code, eval_frame._FrameExecStrategy(skip, skip))
    except (ImportError, AttributeError, TypeError, RuntimeError):
        return False
    return True


def supports_ignore_compile_internals() -> bool:
    """True if a dispatch mode can leave compiled code alone (torch >= 2.8)."""
    return hasattr(TorchDispatchMode, "ignore_compile_internals")


def missing() -> list[str]:
    """The private names bisector uses that this torch does not have."""
    gone = []
    used = _USED + (_USED_CUDA if torch.version.cuda is not None else ())
    for module_name, attribute in used:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            gone.append(f"{module_name}.{attribute}")
            continue
        found: Any = module
        for name in attribute.split("."):
            found = getattr(found, name, None)
        if found is None:
            gone.append(f"{module_name}.{attribute}")
    return gone
