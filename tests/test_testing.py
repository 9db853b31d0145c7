"""The reproducibility gate (bisector.testing) and its pytest fixture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_gate_keeps_the_traces_its_message_names_and_never_writes_here(tmp_path, monkeypatch):
    """Without a workdir: a temporary folder, removed when the runs agree and kept when they
    differ (the message's `bisector diff` must work); nothing in the current folder."""
    import re
    import tempfile

    monkeypatch.chdir(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("bisector-gate-*"))
    torch.set_num_threads(1)
    assert_reproducible(_pool_with_atomics, steps=2)
    assert set(Path(tempfile.gettempdir()).glob("bisector-gate-*")) == before, "removed"
    torch.set_num_threads(2)
    with pytest.raises(AssertionError) as failure:
        assert_reproducible(_pool_with_atomics, steps=2)
    named = re.findall(r"bisector diff (\S+) (\S+)", str(failure.value))
    assert named and all(Path(p).exists() for p in named[0]), str(failure.value)
    assert not list(tmp_path.iterdir()), "the gate wrote into the current folder"


def test_script_gate_writes_nothing_here(tmp_path, monkeypatch):
    from bisector.testing import assert_script_reproducible

    monkeypatch.chdir(tmp_path)
    report = assert_script_reproducible(REPO / "tests" / "scripts" / "deterministic.py", ("2",))
    assert report.reproducible
    assert not (tmp_path / ".bisector").exists()


def test_a_failing_gate_shows_the_test_not_bisector(tmp_path):
    """pytest's failure output points at the test's own line; bisector's frames are hidden."""
    test = tmp_path / "test_gate_user.py"
    test.write_text(
        "import torch\n"
        "from bisector.testing import assert_reproducible\n\n"
        "def train():\n"
        "    g = torch.Generator().manual_seed(1)\n"
        "    x = torch.randn(60000, 16, generator=g)\n"
        "    w = torch.nn.Parameter(torch.ones(16, 64))\n"
        "    opt = torch.optim.SGD([w], lr=0.1)\n"
        "    index = torch.randint(0, 100, (60000,), generator=g)\n"
        "    for _ in range(2):\n"
        "        out = torch.zeros(100, 64).index_put_((index,), x @ w, accumulate=True)\n"
        "        opt.zero_grad()\n"
        "        out.pow(2).mean().backward()\n"
        "        opt.step()\n\n"
        "def test_train():\n"
        "    torch.set_num_threads(2)\n"
        "    assert_reproducible(train)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=600,
    )
    assert done.returncode == 1, done.stdout
    assert "assert_reproducible(train)" in done.stdout
    assert "bisector/testing.py" not in done.stdout, done.stdout
    assert "runs are not bitwise identical: first source: aten.index_put_" in done.stdout
