"""Shared fixtures: nothing a test installs (hooks, dispatch modes) may outlive it."""

from __future__ import annotations

import multiprocessing.process
import os
import sys
from pathlib import Path

# The suite runs a test per core (pytest-xdist), and most of a test is child processes running
# torch with as many threads as cores: OpenMP threads that spin while they wait take the cores
# the other tests' processes need. Passive waiting changes no result (the work and how it is
# split among threads stay the same) and made the frameworks' tests about 8% faster here.
# Set before torch is imported; the children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
import torch.nn.modules.module as nn_module
import torch.optim.optimizer as optim_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).parent.parent

_REGISTRIES = (
    (nn_module, "_global_forward_pre_hooks"),
    (nn_module, "_global_forward_hooks"),
    (nn_module, "_global_backward_hooks"),
    (nn_module, "_global_backward_pre_hooks"),
    (optim_module, "_global_optimizer_pre_hooks"),
    (optim_module, "_global_optimizer_post_hooks"),
)


# Functions the recorder wraps while it records (values leaving torch, processes started).
_PATCHED = (
    (torch, "save"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "numpy"),
    (multiprocessing.process.BaseProcess, "start"),
)


def _installed() -> dict[str, object]:
    state: dict[str, object] = {name: len(getattr(module, name)) for module, name in _REGISTRIES}
    state["dispatch_modes"] = len(_get_current_dispatch_mode_stack())
    for owner, name in _PATCHED:
        state[f"{owner.__name__}.{name}"] = getattr(owner, name)
    return state


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Fail a test that leaves hooks or dispatch modes installed."""
    before = _installed()
    yield
    after = _installed()
    assert after == before, f"hooks or modes left installed: {before} -> {after}"


@pytest.fixture(autouse=True)
def _default_threads():
    """Tests that change torch's thread count must not leak it into others."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def source_line(script: Path, marker: str = "# SOURCE") -> int:
    """The line number of the marker comment in a test script."""
    for number, line in enumerate(script.read_text().splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"no {marker!r} in {script}")


def bisector_command() -> list[str]:
    """How to run the CLI in a subprocess: the installed console script, else the module."""
    return [sys.executable, "-m", "bisector"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "120"  # pin the console width of rich output
    return env
