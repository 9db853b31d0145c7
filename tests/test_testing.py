"""The reproducibility gate (bisector.testing) and its pytest fixture."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, subprocess_env
from torch import nn

from bisector.testing import assert_reproducible


def _pool_with_atomics():
    """Two steps of a model whose forward sums rows with index_put_(accumulate=True)."""
    torch.manual_seed(0)
    proj = nn.Linear(16, 64)
    optimizer = torch.optim.SGD(proj.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60000, 16, generator=g)
    segments = torch.randint(0, 100, (60000,), generator=g)
    for _ in range(2):
        out = torch.zeros(100, 64).index_put_((segments,), proj(x), accumulate=True)
        loss = out.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_gate_fails_with_the_first_source_as_message(tmp_path):
    torch.set_num_threads(2)
    with pytest.raises(AssertionError) as failure:
        assert_reproducible(_pool_with_atomics, steps=2, workdir=tmp_path)
    message = str(failure.value)
    assert "aten.index_put_.default" in message and "forward, step 0" in message
    assert "test_testing.py:" in message and "bisector diff" in message
    assert (tmp_path / "a.trace").exists()


def test_gate_passes_a_reproducible_function(tmp_path):
    torch.set_num_threads(1)  # one thread: the same order of additions every time
    report = assert_reproducible(_pool_with_atomics, steps=2, workdir=tmp_path)
    assert report.reproducible and report.compared_events > 20


def test_example_project_test_runs_under_pytest():
    """examples/test_reproducibility.py: 2 passed (function and fixture), 1 xfailed (the GNN)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "examples/test_reproducibility.py",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed, 1 xfailed" in done.stdout, done.stdout
