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
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
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
    "StorageWeakRef",
    "TorchDispatchMode",
    "arg_tree_leaves",
    "autograd_sequence_nr",
    "current_autograd_node",
    "current_dispatch_mode",
    "disable_current_modes",
    "dynamo_counters",
    "missing",
    "optimized_module_class",
    "supports_ignore_compile_internals",
    "tree_leaves",
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
)


def disable_current_modes():
    """A context in which no dispatch mode sees the ops run (our own tensor work)."""
    return _disable_current_modes()


def current_dispatch_mode() -> Any:
    """The innermost dispatch mode pushed, or None."""
    return _get_current_dispatch_mode()


def current_autograd_node() -> Any:
    """The autograd node whose backward is running in this thread, or None."""
    return torch._C._current_autograd_node()


def autograd_sequence_nr() -> int:
    """The sequence number the next autograd node will get (nodes made since can be told)."""
    return torch._C._autograd._get_sequence_nr()


def optimized_module_class() -> type[Any]:
    """Dynamo's wrapper of a compiled module (imported only when needed: Dynamo is slow to
    import)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def dynamo_counters() -> Any:
    """Dynamo's counters (graph breaks, frames compiled)."""
    from torch._dynamo.utils import counters

    return counters


def supports_ignore_compile_internals() -> bool:
    """True if a dispatch mode can leave compiled code alone (torch >= 2.8)."""
    return hasattr(TorchDispatchMode, "ignore_compile_internals")


def missing() -> list[str]:
    """The private names bisector uses that this torch does not have."""
    gone = []
    for module_name, attribute in _USED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            gone.append(f"{module_name}.{attribute}")
            continue
        if not hasattr(module, attribute):
            gone.append(f"{module_name}.{attribute}")
    return gone
