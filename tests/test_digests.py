"""Step digests: the ladder of find, bisector.watch, digest-file diffs, environment differences."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import SCRIPTS, source_line
from test_cli import _one_error_line, find_json, run_cli
from torch import nn

import bisector
from bisector import digests
from bisector.errors import TraceError
from bisector.trace import load


def test_ladder_finds_a_source_of_step_7_recording_ops_of_that_step_only(tmp_path):
    result, report = find_json(tmp_path, "late_source.py", "--steps", "10")
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"], first["step"]) == (
        "aten.index_put_.default",
        "pool",
        "forward",
        7,
    )
    assert first["location"].endswith(f"late_source.py:{source_line(SCRIPTS / 'late_source.py')}")
    digest_level, module_level, op_level = report["levels"]
    assert digest_level["level"] == "digests" and digest_level["first_step"] == 7
    assert digest_level["steps"].startswith("0-9")
    # the first differing values of step 7 come from its forward/backward, not from the data
    kinds = [v["kind"] for v in digest_level["first_values"]]
    assert "batch" not in kinds and kinds[0] in ("loss", "grad"), kinds
    # the module rung: the module whose inputs are equal and output differs
    assert module_level["level"] == "modules"
    assert module_level["found"].startswith("pool (forward, step 7): inputs equal")
    assert op_level["level"] == "ops" and op_level["steps"] == "7 (ops of pool)"
    trace = load(tmp_path / "runs" / "a.trace")
    steps = set(trace.columns["step"].tolist())
    assert steps == {7}, "only step 7 is recorded op by op"
    modules = {trace.string("module", i) for i in range(len(trace))}
    assert modules == {"pool"}, "only the ops of the module found are recorded"
    modules = load(tmp_path / "runs" / "a.modules.trace")
    ops = {modules.string("op", i) for i in range(len(modules))}
    assert ops <= {"module.forward", "module.backward", "leaf.tensor", "leaf.parameter"}, ops
    assert "Levels" in result.stdout and "digests" in result.stdout


def test_the_module_rung_finds_a_source_in_a_backward(tmp_path):
    """The cause makes a parameter's gradient (an embedding's backward has no other output):
    the module rung names the module by that gradient, the op rung records its ops only."""
    result, report = find_json(tmp_path, "backward_atomic.py", "--ladder", "--steps", "3")
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"]) == (
        "aten.index_put_.default",
        "embed",
        "backward",
    )
    levels = report["levels"]
    assert [level["level"] for level in levels] == ["digests", "modules", "ops"]
    assert levels[1]["found"].startswith("embed (backward, step 0): inputs equal")
    assert levels[2]["steps"] == "0 (ops of embed)"


def test_the_module_rung_sees_the_gradient_of_a_parameter_the_root_holds(tmp_path):
    """``self.items[ids]`` in the model's own forward, ``items`` its own parameter, the model
    named by its class: the gradient of ``items`` belongs to the root's backward, where the race
    of its ``index_put`` is; the op rung then records the root's ops, not the whole step."""
    script = "root_parameter.py"
    result, report = find_json(tmp_path, script, "--ladder", "--", "--steps", "3")
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"]) == (
        "aten.index_put.default",
        "Recommender",
        "backward",
    ), result.stdout
    assert first["location"].endswith(f"{script}:{source_line(SCRIPTS / script)}")
    step = report["levels"][0]["first_step"]
    assert report["levels"][1]["found"].startswith(f"Recommender (backward, step {step})")
    assert report["levels"][2]["steps"] == f"{step} (ops of Recommender)", result.stdout


def test_the_root_parameter_twin_is_reproducible(tmp_path):
    result, report = find_json(tmp_path, "root_parameter.py", "--ladder", "--", "--rows", "1000")
    assert result.returncode == 0, result.stdout
    assert report["reproducible"] and len(report["levels"]) == 1


def test_the_digests_of_several_models_are_named_by_their_variables(tmp_path):
    """A GAN's generator and discriminator have parameters of the same names (``out.weight``):
    where the script holds several models, each digest is named by the model's variable, as
    the trace names their modules, so that a value of one never stands for the other's."""
    script = SCRIPTS / "frameworks" / "conditional_gan.py"
    result = run_cli(
        "find", str(script), "--ladder", "--steps", "2", "--workdir", str(tmp_path),
        "--", "--twin", "--rows", "2000",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    taken = digests.load(tmp_path / "a.digests")
    names = [
        {taken.names[i][1] for i in values.ids if taken.names[i][0] == "param"}
        for _, values in sorted(taken.steps.items())
    ]
    parts = ("classes.weight", "points.weight", "points.bias", "out.weight", "out.bias")
    assert names[0] == {f"D.{part}" for part in parts}, names  # the discriminator's step
    assert {"G.table", "G.out.weight"} <= names[1], names


def test_the_op_rung_is_scoped_to_the_owner_of_the_first_differing_gradient(tmp_path):
    """A GAN: the generator's output is made before the discriminator's step and backpropagated
    after it, so the module rung, which watches the generator's step only, sees no call of
    the generator. The digests name G.table's gradient first: the op rung records G's ops
    (its backward, attributed to the forward of the step before), and finds the race there."""
    script = "frameworks/conditional_gan.py"
    result, report = find_json(tmp_path, script, "--ladder", "--steps", "2")
    assert result.returncode == 1, result.stdout[-3000:]
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"], first["step"]) == (
        "aten.index_put.default",
        "G",
        "backward",
        1,
    ), first
    assert first["location"].endswith(f"{script}:{source_line(SCRIPTS / script)}")
    digest_level, module_level, op_level = report["levels"]
    assert digest_level["found"].startswith("step 1: grad G.table differs first"), digest_level
    assert module_level["found"].endswith("G holds the first differing value: its ops are "
                                          "recorded first"), module_level  # fmt: skip
    assert op_level["steps"] == "1 (ops of G)", op_level


def test_the_owner_of_the_first_differing_value_is_a_module_path():
    from bisector.api import _owner_of_first_value

    def owner(*values):
        first = [{"kind": kind, "name": name} for kind, name in values]
        return _owner_of_first_value(SimpleNamespace(first=first))

    assert owner(("rng", "torch"), ("grad", "G.table")) == "G"
    assert owner(("param", "optimizer1.layers.0.fc.weight")) == "layers.0.fc"
    assert owner(("loss", "0"), ("grad", "fc.weight")) is None  # the forward differs already
    assert owner(("grad", "table")) is None  # a lone root's own: named by its class
    assert owner(("grad", "group0.3")) is None  # a parameter no module names
    # the forms the digester writes, read back
    written = digests.in_optimizer(digests.unnamed_parameter(0, 3), 1, stepping=2)
    assert written == "optimizer1.group0.3" and owner(("grad", written)) is None
    assert owner(("grad", digests.in_optimizer("G.table", 0, stepping=2))) == "G"


def test_a_script_the_module_hooks_break_is_recorded_op_by_op(tmp_path):
    """A ReLU(inplace=True) writes into an output that the module rung's backward hooks wrap:
    autograd refuses it, and the ladder records every op of the step instead, as before."""
    result, report = find_json(tmp_path, "inplace_pool.py", "--steps", "6")
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"]) == (
        "aten.index_put_.default",
        "pool",
        "forward",
    )
    levels = report["levels"]
    assert levels[1]["found"].startswith("the module hooks broke the script (RuntimeError")
    # The race shows at step 0 in most pairs; where the digests' pair missed it there, the
    # op-level pair records from the step they found, meets a parameter that differs already,
    # and goes back to step 0.
    assert first["step"] <= levels[0]["first_step"]
    rest = levels[2:]
    if "holds the first differing value" in levels[1]["found"]:
        # (the loss rounded alike, a gradient differed first: its module's ops came first)
        assert rest[0]["steps"].endswith(")") and "(ops of " in rest[0]["steps"], levels
        rest = rest[1:]
    assert rest and all(level["steps"].endswith("(every op)") for level in rest), levels


# The plain pairs of intermittent.py (two threads, 60,000-row matmuls) were seen to differ under
# a loaded machine (2 of about 6 runs of this file beside other tests): MKL's own thread choices,
# a source of their own that upsets the planned schedule. Opt-in until the script is immune.
_INTERMITTENT = pytest.mark.skipif(
    not os.environ.get("BISECTOR_SLOW"), reason="set BISECTOR_SLOW=1 (flaky under load)"
)


def _intermittent(tmp_path, perturb: str):
    """find on intermittent.py, whose run k (counted from 0) computes step s with one thread
    for each k=s in ``perturb``."""
    counter = str(tmp_path / "counter")
    return find_json(
        tmp_path, "intermittent.py", "--ladder", "--steps", "2", "--",
        "--counter", counter, "--perturb", perturb, "--steps", "2",
    )  # fmt: skip


@_INTERMITTENT
def test_an_intermittent_source_met_a_step_early_is_found_from_step_0(tmp_path):
    """The digests' pair (runs 0, 1) differs from step 1, the module rung's (2, 3) not at all,
    the op-level pairs (4-7) from step 0: a parameter that differs as the recording of step 1
    starts is no finding, and the ladder records from step 0."""
    result, report = _intermittent(tmp_path, "1=1,5=0,7=0")
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["module"], first["phase"], first["step"]) == (
        "aten.mm.default",
        "head",
        "backward",
        0,
    ), result.stdout
    assert [(level["level"], level["steps"]) for level in report["levels"]] == [
        ("digests", "0-1 (values only)"),
        ("modules", "1 (module inputs and outputs)"),
        ("ops", "1 (every op)"),
        ("ops", "0-1 (every op)"),
    ], result.stdout
    assert report["levels"][2]["found"].startswith("leaf.parameter"), result.stdout


@_INTERMITTENT
def test_an_intermittent_source_that_does_not_recur_is_inconclusive(tmp_path):
    """Only the digests' run B differs (at step 0): two op-level pairs agree, and the report
    says the runs are not shown reproducible, with why (exit code 3)."""
    result, report = _intermittent(tmp_path, "1=0")
    assert result.returncode == 3, result.stdout
    assert report["verdict"] == "inconclusive" and not report["reproducible"]
    assert "shows in some runs only" in report["evidence"]["reasons"][0]
    assert [level["steps"] for level in report["levels"]][-2:] == [
        "0 (every op)",
        "0 (every op), again",
    ]
    assert "Inconclusive" in result.stdout


@_INTERMITTENT
def test_the_intermittent_twin_is_reproducible(tmp_path):
    result, report = _intermittent(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert report["reproducible"] and len(report["levels"]) == 1


def test_ladder_on_a_deterministic_script_stops_at_the_digests(tmp_path):
    result, report = find_json(tmp_path, "deterministic.py", "--steps", "6")
    assert result.returncode == 0, result.stdout
    assert report["reproducible"] and [lv["level"] for lv in report["levels"]] == ["digests"]
    assert not (tmp_path / "runs" / "a.trace").exists(), "no op-level run was needed"


def test_ladder_without_an_optimizer_records_every_op(tmp_path):
    result, report = find_json(tmp_path, "inference.py", "--ladder")
    assert result.returncode == 0
    assert any("no optimizer step" in note for note in report["notes"])


# ----- bisector.watch -------------------------------------------------------------------------


def _train(path, steps=8, perturb=None, every=1, watch=True):
    """A small model with a buffer (BatchNorm), AdamW; ``perturb(step, x, model)`` plants a
    difference. Returns the final weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)

    def loop():
        for step in range(steps):
            x = torch.randn(32, 8, generator=data)
            if perturb is not None:
                perturb(step, x, model)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    if watch:
        with bisector.watch(model, optimizer, path, every=every):
            loop()
    else:
        loop()
    return [p.detach().clone() for p in model.parameters()]


def test_watch_files_diff_to_the_step_and_tensor_of_a_planted_change(tmp_path):
    def batch(step, x, model):
        if step == 5:
            x[3, 2] += 1e-3

    def weight(step, x, model):
        if step == 3:
            with torch.no_grad():
                model[3].weight[0, 0] += 1e-6  # between steps: the parameter itself

    _train(tmp_path / "a.digests")
    _train(tmp_path / "b.digests", perturb=batch)
    _train(tmp_path / "c.digests", perturb=weight)
    same = digests.compare(
        digests.load(tmp_path / "a.digests"), digests.load(tmp_path / "a.digests")
    )
    assert same.reproducible and same.steps_compared == 8

    by_batch = bisector.diff(tmp_path / "a.digests", tmp_path / "b.digests")
    assert not by_batch.reproducible and by_batch.first_step == 5
    assert (by_batch.first[0]["kind"], by_batch.first[0]["name"]) == ("batch", "0")
    assert [g["step"] for g in by_batch.growth if g["differing"]] == [5, 6, 7]

    by_weight = bisector.diff(tmp_path / "a.digests", tmp_path / "c.digests")
    assert by_weight.first_step == 3
    first = [v for v in by_weight.first if v["kind"] != "rng"][0]
    # the changed weight makes the loss differ: the forward is where it shows first
    assert first["kind"] == "loss", by_weight.first
    assert any(v["kind"] == "param" and v["name"] == "3.weight" for v in by_weight.first)


def test_watch_changes_no_numerics_and_leaves_nothing_installed(tmp_path):
    backward = torch.autograd.backward
    watched = _train(tmp_path / "a.digests")
    plain = _train(None, watch=False)
    assert all(torch.equal(a, b) for a, b in zip(watched, plain, strict=True))
    assert torch.autograd.backward is backward


def test_watch_records_each_kind_and_every_nth_step(tmp_path):
    _train(tmp_path / "a.digests", steps=6, every=2)
    loaded = digests.load(tmp_path / "a.digests")
    assert sorted(loaded.steps) == [0, 2, 4] and loaded.complete
    kinds = {loaded.names[int(i)][0] for i in loaded.steps[2].ids}
    assert kinds == {"rng", "batch", "loss", "grad", "param", "state", "buffer"}
    names = {loaded.names[int(i)][1] for i in loaded.steps[2].ids}
    assert {"1.running_mean", "3.weight", "3.weight.exp_avg_sq", "python", "torch"} <= names


def test_a_digest_file_cut_short_loads_up_to_its_last_complete_step(tmp_path):
    _train(tmp_path / "a.digests")
    data = (tmp_path / "a.digests").read_bytes()
    cut = tmp_path / "cut.digests"
    cut.write_bytes(data[: len(data) * 2 // 3])
    loaded = digests.load(cut)
    assert not loaded.complete and 2 <= len(loaded.steps) < 8
    assert sorted(loaded.steps) == list(range(len(loaded.steps)))
    report = digests.compare(digests.load(tmp_path / "a.digests"), loaded)
    assert report.reproducible and report.steps_compared == len(loaded.steps)
    assert any("cut short" in note for note in report.notes)

    corrupt = tmp_path / "corrupt.digests"
    corrupt.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    with pytest.raises(TraceError, match="corrupt"):
        digests.load(corrupt)


def test_environment_differences_are_reported(tmp_path):
    threads = torch.get_num_threads()
    _train(tmp_path / "a.digests")
    torch.set_num_threads(1)
    _train(tmp_path / "b.digests")
    torch.set_num_threads(threads)
    report = bisector.diff(tmp_path / "a.digests", tmp_path / "b.digests")
    changed = {row["what"]: (row["a"], row["b"]) for row in report.environment}
    if threads != 1:
        assert changed["num_threads"] == (threads, 1)


# ----- the CLI ---------------------------------------------------------------------------------


def test_cli_diff_of_digest_files_and_bad_inputs(tmp_path):
    def batch(step, x, model):
        if step == 4:
            x[0, 0] += 1.0

    _train(tmp_path / "a.digests")
    _train(tmp_path / "b.digests", perturb=batch)
    result = run_cli(
        "diff",
        str(tmp_path / "a.digests"),
        str(tmp_path / "b.digests"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert result.returncode == 1, result.stderr
    assert "step 4" in result.stdout and "batch" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == 1 and report["first_step"] == 4 and not report["reproducible"]

    # kinds are read from the content: a digest file named .pt is still a digest file
    renamed = tmp_path / "a.pt"
    renamed.write_bytes((tmp_path / "a.digests").read_bytes())
    assert run_cli("diff", str(renamed), str(tmp_path / "a.digests")).returncode == 0

    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    line = _one_error_line(run_cli("diff", str(tmp_path / "a.digests"), str(tmp_path / "model.pt")))
    assert "a digest file" in line and "a checkpoint" in line
    (tmp_path / "notes.txt").write_text("hello")
    line = _one_error_line(
        run_cli("diff", str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt"))
    )
    assert "neither a bisector trace, a digest file nor a checkpoint" in line
    line = _one_error_line(run_cli("diff", str(tmp_path / "missing"), str(tmp_path / "a.digests")))
    assert "not found" in line


def test_watch_inside_a_script_run_by_python(tmp_path):
    """The always-on use: a script that watches itself, run twice as plain python."""
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch, bisector\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "watch = bisector.watch(model, opt, sys.argv[1])\n"
        "for step in range(5):\n"
        "    loss = model(torch.randn(8, 4)).pow(2).mean()\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n"
        "watch.close()\n"
        "print(watch.digester.bytes_written)\n"
    )
    import subprocess

    from conftest import subprocess_env

    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"{name}.digests")],
            capture_output=True,
            text=True,
            env=subprocess_env(),
        )
        assert done.returncode == 0, done.stderr
    result = run_cli("diff", str(tmp_path / "a.digests"), str(tmp_path / "b.digests"))
    assert result.returncode == 0, result.stdout


def test_a_watch_installs_on_start_and_a_failed_start_leaves_nothing(tmp_path, monkeypatch):
    from bisector.capture.digester import Watch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward = torch.autograd.backward
    watch = Watch(model, optimizer, tmp_path / "a.digests")
    assert torch.autograd.backward is backward and not model._forward_pre_hooks  # not yet
    with watch:
        assert torch.autograd.backward is not backward and model._forward_pre_hooks
    assert torch.autograd.backward is backward and not model._forward_pre_hooks

    def broken(self):
        raise RuntimeError("the loss tap failed")

    monkeypatch.setattr("bisector.capture.digester._LossTap.install", broken)
    with pytest.raises(RuntimeError, match="loss tap"):
        Watch(model, optimizer, tmp_path / "b.digests").start()
    assert not model._forward_pre_hooks and not optimizer._optimizer_step_pre_hooks


def test_a_sparse_gradient_is_digested(tmp_path):
    """SparseAdam's parameters have sparse gradients (an embedding with sparse=True): they are
    digested like dense ones, so that the ladder's digests can name one first."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 4, sparse=True)
    optimizer = torch.optim.SparseAdam(table.parameters(), lr=0.1)
    with bisector.watch(table, optimizer, tmp_path / "a.digests"):
        for _ in range(2):
            optimizer.zero_grad()
            table(torch.tensor([3, 7, 3])).sum().backward()
            optimizer.step()
    taken = digests.load(tmp_path / "a.digests")
    kinds = {taken.names[i][:2] for values in taken.steps.values() for i in values.ids}
    assert ("grad", "weight") in kinds and ("param", "weight") in kinds, kinds
