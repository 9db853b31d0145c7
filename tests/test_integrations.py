"""Callbacks for Lightning and the transformers Trainer (bisector.integrations), run as users
run the examples: two runs, then `bisector diff` of their digests and of their traces."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, subprocess_env
from test_cli import run_cli

import bisector
from bisector import digests

EXAMPLES = REPO / "examples"


def _two_runs(tmp_path, example: str, *args: str) -> None:
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / example), "--name", name, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=subprocess_env(),
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]


def _diff(tmp_path, suffix: str):
    return run_cli(
        "diff",
        str(tmp_path / f"a{suffix}"),
        str(tmp_path / f"b{suffix}"),
        "--json",
        str(tmp_path / f"diff{suffix}.json"),
    )


def _line(example: str, text: str) -> int:
    for number, line in enumerate((EXAMPLES / example).read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(text)


def test_lightning_callback_finds_the_pooling_op(tmp_path):
    pytest.importorskip("lightning")
    torch.set_num_threads(2)
    _two_runs(tmp_path, "lightning_callback.py")
    steps = _diff(tmp_path, ".digests")
    assert steps.returncode == 1, steps.stdout
    # the pooled sums differ in their last bits: the loss shows it, or (rounded away there) the
    # gradients, which the digests take after the step's closure has made them
    first = steps.stdout.splitlines()[0]
    assert first.startswith(("Runs diverge at step 0: loss 0", "Runs diverge at step 0: grad "))
    ops = _diff(tmp_path, ".trace")
    assert ops.returncode == 1, ops.stdout
    source = "return out.index_put_((cluster,), rows, accumulate=True)"
    expected = f"lightning_callback.py:{_line('lightning_callback.py', source)}"
    flat = " ".join(ops.stdout.split())
    assert "aten.index_put_.default" in flat and "module pool" in flat, ops.stdout
    assert "forward, step 0" in flat and expected in flat, ops.stdout


def test_lightning_callback_twin_is_reproducible(tmp_path):
    pytest.importorskip("lightning")
    _two_runs(tmp_path, "lightning_callback.py", "--twin")
    assert _diff(tmp_path, ".digests").returncode == 0
    assert _diff(tmp_path, ".trace").returncode == 0


def test_trainer_callback_finds_the_unseeded_draw(tmp_path):
    pytest.importorskip("transformers")
    _two_runs(tmp_path, "hf_trainer_callback.py", "--unseeded")
    assert _diff(tmp_path, ".digests").returncode == 1
    ops = _diff(tmp_path, ".trace")
    flat = " ".join(ops.stdout.split())
    draw = f"hf_trainer_callback.py:{_line('hf_trainer_callback.py', 'torch.rand(input_ids.shape')}"
    assert "aten.rand.generator" in flat and draw in flat, ops.stdout


def test_trainer_callback_seeded_is_reproducible(tmp_path):
    pytest.importorskip("transformers")
    _two_runs(tmp_path, "hf_trainer_callback.py")
    assert _diff(tmp_path, ".digests").returncode == 0
    assert _diff(tmp_path, ".trace").returncode == 0


def test_watch_takes_gradients_after_a_closure(tmp_path):
    """optimizer.step(closure) runs forward and backward inside the step (LBFGS, Lightning):
    the digest's gradients are those the closure made, not the previous step's."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with bisector.watch(model, optimizer, tmp_path / "run.digests"):
        optimizer.step(closure)
        optimizer.step(closure=closure)
    loaded = digests.load(tmp_path / "run.digests")
    for step in (0, 1):
        kinds = [loaded.names[i][0] for i in loaded.steps[step].ids]
        assert kinds.count("grad") == 2, (step, kinds)  # weight and bias, once each
        assert kinds.index("grad") > kinds.index("batch")  # taken after the closure's forward
