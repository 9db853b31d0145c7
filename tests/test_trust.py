"""No false accusations, no false all-clear: bisector's claims on scripts written as users write
them (views and indices, set orders, inference with a transform, hogwild workers, oneDNN
scratch, ``p.data`` updates, TransformerEncoder), each planted script beside its deterministic
twin; the truth of every case was checked with two plain runs (see the scripts' docstrings)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import SCRIPTS, bisector_command, source_line, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bisector import analysis
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.confirm import check_claims
from bisector.report import Report, Source
from bisector.trace import load

pytestmark = pytest.mark.slow


def find(tmp_path: Path, script: str, *args: str, options=()) -> tuple[int, dict, str]:
    """`bisector find --no-confirm [OPTIONS]` on a test script: (exit code, JSON report,
    stderr)."""
    out = tmp_path / "report.json"
    command = [*bisector_command(), "find", str(SCRIPTS / script), "--no-confirm", "--quiet"]
    command += [*options, "--workdir", str(tmp_path / "runs"), "--json", str(out), "--", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=subprocess_env()
    )
    assert done.returncode in (0, 1, 3), done.stderr
    return done.returncode, json.loads(out.read_text()), done.stderr


def kinds(report: dict) -> set[str]:
    return {s["kind"] for s in report["sources"]}


@pytest.mark.parametrize(
    ("script", "planted", "twin"),
    [
        ("flip_augment.py", [], ["--seeded"]),
        ("pick_index.py", [], ["--seeded"]),
        ("vocab_gru.py", [], ["--sorted"]),
    ],
)
def test_runs_that_differ_by_data_or_order_never_blame_a_kernel(tmp_path, script, planted, twin):
    code, report, _ = find(tmp_path / "planted", script, *planted)
    assert code == 1 and report["verdict"] == "diverged"
    assert not kinds(report) & {"kernel", "unconfirmed"}, report["sources"][:5]
    if script == "vocab_gru.py":  # nothing seeded differs: the hint names the hash seed
        assert any("PYTHONHASHSEED" in note for note in report["notes"]), report["notes"]
    code, report, _ = find(tmp_path / "twin", script, *twin)
    assert (code, report["verdict"]) == (0, "reproducible"), report["sources"][:3]


def test_a_different_row_picked_from_equal_data_is_named_as_such(tmp_path):
    _, report, _ = find(tmp_path, "pick_index.py")
    first = report["first_divergence"]
    assert (first["kind"], first["op"]) == ("argument", "aten.clone.default")
    assert "another part of an equal tensor" in first["detail"]
    assert "@" in first["args"][0] and first["args"][0] != first["args"][1]


def test_inference_without_optimizer_steps_over_the_model_not_the_transform(tmp_path):
    code, report, _ = find(tmp_path / "planted", "inference_transform.py")
    first = report["first_divergence"]
    assert code == 1
    assert (first["kind"], first["op"], first["module"]) == (
        "kernel",
        "aten.index_put_.default",
        "VoxelEncoder",
    )
    assert first["location"].endswith(f":{source_line(SCRIPTS / 'inference_transform.py')}")
    assert first["checked"]["result"] == "confirmed"  # replayed even under --no-confirm
    assert report["evidence"]["model_calls"] >= 2
    code, report, _ = find(tmp_path / "twin", "inference_transform.py", "--deterministic")
    assert (code, report["verdict"]) == (0, "reproducible")


def test_training_in_unrecorded_worker_processes_is_never_called_reproducible(tmp_path):
    code, report, _ = find(tmp_path / "planted", "hogwild.py")
    assert code == 1
    assert not kinds(report) & {"kernel", "uninitialized", "unconfirmed"}, report["sources"]
    assert "trained unrecorded" in report["first_divergence"]["detail"]
    # one worker trains the same way every time: the runs agree, but nothing proves it
    code, report, _ = find(tmp_path / "twin", "hogwild.py", "--processes", "1")
    assert (code, report["verdict"], report["reproducible"]) == (3, "inconclusive", False)
    unseen = report["evidence"]["unseen_processes"]
    assert len(unseen) == 1 and {"backward", "optimizer"} <= set(unseen[0]["did"])
    assert unseen[0]["target"].endswith("train")


def test_training_in_spawned_processes_is_named_as_unseen(tmp_path):
    code, report, _ = find(tmp_path, "spawn_workers.py")
    assert (code, report["verdict"]) == (3, "inconclusive")
    (unseen,) = report["evidence"]["unseen_processes"]
    assert unseen["started"] == "spawn" and "spawn" in unseen["target"]


def test_scratch_that_nothing_uses_does_not_make_runs_diverge(tmp_path):
    code, report, _ = find(tmp_path / "dead", "dead_scratch.py")
    assert (code, report["verdict"], report["sources"]) == (0, "reproducible", [])
    assert [s["op"] for s in report["dead"]] and {s["op"] for s in report["dead"]} == {
        "aten.randn.generator"
    }
    assert any("nothing used" in note for note in report["notes"])
    # the same value, once it feeds the model, is live
    code, report, _ = find(tmp_path / "live", "dead_scratch.py", "--use-it")
    assert code == 1 and report["first_divergence"]["op"] == "aten.randn.generator"


def test_values_taken_out_of_torch_are_kept_live(tmp_path):
    def score() -> list:
        with torch.no_grad():
            return (torch.arange(6.0) * 2).tolist()  # no op reads the product; it is freed

    with Recorder(tmp_path / "run.trace", RecordOptions()) as recorder:
        score()
        torch.save(torch.ones(3) + 1, tmp_path / "out.pt")
    trace = load(tmp_path / "run.trace")
    ops = {trace.string("op", e): e for e in range(len(trace))}
    live = trace.footer["live_at_end"]
    kept = set(zip(live[::2], live[1::2], strict=True))
    assert (ops["aten.mul.Tensor"], 0) in kept and (ops["aten.add.Tensor"], 0) in kept
    assert len(recorder._kept) == 2  # bisector's own read-backs (fingerprints) are not outputs


def test_an_output_leaving_through_tolist_counts(tmp_path):
    code, report, _ = find(tmp_path / "planted", "tolist_output.py")
    assert code == 1 and report["first_divergence"]["op"] == "aten.index_put_.default"
    assert report["first_divergence"]["checked"]["result"] == "confirmed"
    code, report, _ = find(tmp_path / "twin", "tolist_output.py", "--one-thread")
    assert (code, report["verdict"]) == (0, "reproducible")


def test_lstm_workspace_never_decides(tmp_path):
    code, report, _ = find(tmp_path, "lstm_lm.py")
    assert (code, report["verdict"]) == (0, "reproducible"), report["sources"][:3]
    assert {s["op"] for s in report["dead"]} <= {"aten.mkldnn_rnn_layer.default"}


def test_parameter_updates_through_data_are_no_extra_sources(tmp_path):
    code, report, _ = find(tmp_path / "planted", "data_update.py")
    assert code == 1
    # the race itself, once or more (a call can give equal results by chance), and no input
    # source where the parameters are read after their update through .data
    assert kinds(report) == {"kernel"}, report["sources"]
    assert {s["op"] for s in report["sources"]} == {"aten.index_put_.default"}
    assert report["evidence"]["parameter_writes"] > 0
    code, report, _ = find(tmp_path / "twin", "data_update.py", "--one-thread")
    assert (code, report["verdict"]) == (0, "reproducible")


def test_transformer_encoder_records(tmp_path):
    code, report, stderr = find(tmp_path, "transformer_encoder.py")
    assert (code, report["verdict"]) == (0, "reproducible"), stderr
    assert report["evidence"]["optimizer_steps"] == 2


def test_an_error_in_bisector_is_reported_as_ours_and_keeps_the_trace(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "import bisector.capture.fingerprint as fingerprint\n"
        "calls = [0]\n"
        "original = fingerprint.Collector.add\n"
        "def broken(self, tensor):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 12:\n"
        "        raise ValueError('planted failure in the collector')\n"
        "    return original(self, tensor)\n"
        "fingerprint.Collector.add = broken\n"
        "model = torch.nn.Linear(4, 4)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(3):\n"
        "    try:  # a user's catch-all must not swallow our failure\n"
        "        model(torch.randn(2, 4)).sum().backward()\n"
        "        optimizer.step()\n"
        "    except Exception:\n"
        "        pass\n"
    )
    done = subprocess.run(
        [*bisector_command(), "find", str(script), "--no-confirm", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "bug in bisector" in last and "planted failure in the collector" in last, last
    assert "raised an exception" not in done.stderr
    trace = load(tmp_path / "a.trace")
    assert trace.footer["status"] == "internal-error" and len(trace) > 0
    assert "ValueError" in (tmp_path / "a.log").read_text()


def test_a_kernel_claim_that_its_replay_contradicts_is_not_kept():
    def source(event: int) -> Source:
        return Source("kernel", "aten.clone.default", "", "other", 0, 0, "t.py:3", 1.0, event=event)

    report = Report(False, None, [source(3), source(9), source(12)], [])
    report.first_divergence = report.sources[0]
    report.replay = [
        {"event": 3, "runs": 10, "distinct_results": 1, "error": None},
        {"event": 9, "runs": 10, "distinct_results": 4, "error": None},
    ]
    check_claims(report)
    stable, racy, unchecked = report.sources
    assert (stable.kind, stable.checked["result"]) == ("unconfirmed", "contradicted")
    assert "chosen once per process" in stable.detail
    assert (racy.kind, racy.checked["result"]) == ("kernel", "confirmed")
    assert (unchecked.kind, unchecked.checked["result"]) == ("kernel", "not checked")


# ----- property: deterministic programs over views never yield a kernel source ---------------

_STEPS = ("select", "narrow", "stride", "unbind", "split", "transpose", "as_strided", "inplace")


def _view_program(steps: list[str], choices: random.Random) -> torch.Tensor:
    """Deterministic ops over views of one seeded tensor; which part each view reads comes
    from ``choices`` (another seed in the other run), as an index drawn in a Python loop."""
    base = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(4, 6, 8).div_(7.0)
    total = torch.zeros(())
    for step in steps:
        pick = choices.randrange(4)
        if step == "select":
            view = base[pick]
        elif step == "narrow":
            view = base.narrow(1, choices.randrange(3), 3)
        elif step == "stride":
            view = base[:, pick % 2 :: 2]
        elif step == "unbind":
            view = base.unbind(0)[pick]
        elif step == "split":
            view = base.split(2, dim=2)[pick]
        elif step == "transpose":
            view = base[pick].t()
        elif step == "as_strided":
            view = base.as_strided((3, 3), (8, 1), pick * 5)
        else:  # an in-place write into a view of a copy
            copy = base.clone()
            copy[pick].mul_(2.0)
            view = copy[(pick + 1) % 4]
        total = total + view.clone().flip(-1).sin().sum()
    return total


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.sampled_from(_STEPS), min_size=1, max_size=6),
    seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_deterministic_view_programs_never_yield_a_kernel_source(tmp_path, steps, seeds):
    traces = []
    for name, seed in zip("ab", seeds, strict=True):
        path = tmp_path / f"{name}-{seeds[0]}-{seeds[1]}.trace"
        with Recorder(path, RecordOptions()):
            _view_program(steps, random.Random(seed))
        traces.append(load(path))
    report = analysis.compare(*traces)
    assert not {s.kind for s in report.sources} & {"kernel", "unconfirmed"}, (
        steps,
        [(s.kind, s.op, s.args) for s in report.sources],
    )


def test_a_difference_rounded_away_is_said_to_have_vanished(tmp_path):
    """Runs whose batch differs in its last bits, which a bf16 cast rounds away before the
    model reads it: the runs diverge (the batch differs), and a note says that every
    difference vanished: nothing the runs held at the end differs. Where the difference
    survives the cast, no such note."""
    from torch import nn

    import bisector
    from bisector.analysis import compare
    from bisector.trace import load

    def batch(offset):  # what it made in full precision is freed when it returns
        return (torch.full((8, 4), 1.0 + offset) * 3).to(torch.bfloat16).float()

    def run(path, offset):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with bisector.record(path, steps=2):
            for _ in range(2):
                loss = model(batch(offset)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()

    run(tmp_path / "a.trace", 0.0)
    for offset, vanishes in ((2.0**-20, True), (0.25, False)):
        run(tmp_path / "b.trace", offset)
        report = compare(load(tmp_path / "a.trace"), load(tmp_path / "b.trace"))
        assert not report.reproducible and report.first_divergence is not None
        said = [n for n in report.notes if "vanished" in n]
        assert bool(said) == vanishes, (offset, report.notes)
        if vanishes:
            assert "no parameter, no optimizer state" in said[0]


def _leaf_of_a_larger_storage(path: Path, junk: float, later: float) -> None:
    """A tensor made before recording that is a view of a larger storage whose other bytes
    hold ``junk`` (as an MSE loss is a 0-d view of its elementwise buffer), read while
    recording; then another part of that storage, holding ``later``."""
    storage = torch.full((1000,), junk)
    storage[:8] = torch.arange(8.0)
    storage[500:508] = later
    head, part = storage[:8], storage[500:508]  # (views made before: recording reads them)
    weight = torch.ones(8, requires_grad=True)
    with Recorder(path, RecordOptions()):
        (head * weight).sum().backward()
        (part * weight).sum().backward()


def test_a_leaf_is_compared_on_the_bytes_it_reads_not_its_whole_storage(tmp_path):
    """Bytes of a leaf's storage that no recorded op reads differ between the runs: the runs
    are bitwise identical (before, the leaf was fingerprinted as its whole storage and
    "differed": an input source). A later read of another part that does differ is found,
    at that read."""
    traces = []
    for name, junk in (("a", 1.0), ("b", 2.0)):
        _leaf_of_a_larger_storage(tmp_path / f"{name}.trace", junk, later=3.0)
        traces.append(load(tmp_path / f"{name}.trace"))
    equal = analysis.compare(*traces)  # (inconclusive: no model ran; nothing differs)
    assert equal.first_divergence is None and equal.differing_events == 0, equal.sources
    traces = []
    for name, later in (("c", 3.0), ("d", 4.0)):
        _leaf_of_a_larger_storage(tmp_path / f"{name}.trace", 1.0, later=later)
        traces.append(load(tmp_path / f"{name}.trace"))
    report = analysis.compare(*traces)
    first = report.first_divergence
    assert first is not None and (first.kind, first.op) == ("input", "leaf.tensor"), first
    assert first.event > 0  # the second read's leaf, not the first one's


def test_past_64_leaves_of_one_storage_the_whole_storage_is_read_once(tmp_path):
    """Rows of a table made before recording, read one by one: a leaf per row up to
    MAX_LEAF_SPANS, then one leaf of the whole storage that every later row reads."""
    from bisector.capture.values import MAX_LEAF_SPANS

    table = torch.randn(100, 4)
    rows = list(table.unbind(0))
    with Recorder(tmp_path / "t.trace", RecordOptions()):
        for row in rows:
            row * 2
    trace = load(tmp_path / "t.trace")
    ops = [trace.strings[i] for i in trace.columns["op"]]
    assert ops.count("leaf.tensor") == MAX_LEAF_SPANS + 1
    assert trace.columns["out_numel"].max() == 100 * 4 * 4  # (the whole storage, as bytes)


def test_losses_kept_from_earlier_steps_are_no_source_when_recording_starts_later(tmp_path):
    """dwa_loss_weights.py --twin (deterministic), recorded from step 3 as the ladder's op rung
    records: the MSE losses kept from steps 1 and 2 are read as leaves. They are equal; their
    storages' other bytes are not (before, two `leaf.tensor` input sources and "diverged")."""
    from bisector.pairs import record_pair
    from bisector.runner import RunOptions

    script = SCRIPTS / "dwa_loss_weights.py"
    args = ("--twin", "--rows", "4000", "--steps", "4")
    pair = record_pair(script, args, tmp_path, RunOptions(steps=4, start_step=3))
    report = pair.report
    assert report.reproducible, [(s.kind, s.op, s.step, s.location) for s in report.sources]


def test_a_generator_that_steps_after_its_critic_is_recorded(tmp_path):
    """sn_gan.py: two critic steps, then the generator's; its coverage histogram is the source.
    `find` records 2 optimizer steps: it goes on to the generator's step (before, the two
    critic steps alone were recorded and the runs called reproducible). The race can fail to
    show in one pair on a loaded machine (its two threads then do not overlap): a second pair
    is made then."""
    for attempt in ("planted", "again"):
        code, report, _ = find(tmp_path / attempt, "sn_gan.py")
        assert report["evidence"]["optimizer_steps"] == 3, report["evidence"]
        if code == 1:
            break
    first = report["first_divergence"]
    assert (code, first["kind"], first["op"]) == (1, "kernel", "aten.index_put_.default"), first
    assert (first["phase"], first["step"], first["module"]) == ("forward", 2, ""), first
    assert first["location"].endswith(f"sn_gan.py:{source_line(SCRIPTS / 'sn_gan.py')}"), first
    code, report, _ = find(tmp_path / "twin", "sn_gan.py", "--twin")
    assert (code, report["verdict"]) == (0, "reproducible"), report["sources"][:3]
    assert report["evidence"]["optimizer_steps"] == 3, report["evidence"]


class _Wrapped(torch.optim.Optimizer):
    """An optimizer around another, as accelerate's AcceleratedOptimizer is: it never calls
    Optimizer.__init__, so no step hook sees its own step; the inner one's does."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner

    @property
    def param_groups(self):
        return self.inner.param_groups

    def step(self, closure=None):
        return self.inner.step(closure)


def test_an_optimizer_that_never_steps_leaves_the_verdict_open(tmp_path):
    """Recording goes on past its steps while an optimizer of the script has not stepped, for
    MORE_STEPS_FOR_OPTIMIZERS more; one that never does is named, and identical runs are then
    inconclusive: what it trains was not compared. A wrapper whose inner optimizer steps over
    the same parameters counts as stepped."""
    from torch import nn

    from bisector.schema import MORE_STEPS_FOR_OPTIMIZERS

    traces = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        used, idle = nn.Linear(4, 4), nn.Linear(4, 2)
        opt = _Wrapped(torch.optim.SGD(used.parameters(), lr=0.1))
        later = torch.optim.SGD(idle.parameters(), lr=0.1)  # noqa: F841 - never steps
        with Recorder(tmp_path / f"{name}.trace", RecordOptions(steps=2)) as recorder:
            for _ in range(2 + MORE_STEPS_FOR_OPTIMIZERS + 5):
                used(torch.ones(3, 4)).pow(2).sum().backward()
                opt.step()
            assert recorder.status == "stopped"
        traces.append(load(tmp_path / f"{name}.trace"))
    footer = traces[0].footer
    assert footer["steps"] == 2 + MORE_STEPS_FOR_OPTIMIZERS, footer["steps"]
    assert footer["unstepped_optimizers"] == ["SGD of 2 parameters"], footer
    report = analysis.compare(*traces)
    assert report.verdict == "inconclusive", report.verdict
    assert any("SGD of 2 parameters never stepped" in r for r in report.evidence["reasons"])


@pytest.mark.parametrize("ladder", [False, True])
def test_an_optimizer_that_steps_after_the_window_leaves_the_runs_inconclusive(tmp_path, ladder):
    """staged_finetune.py: the backbone's optimizer steps from step 40 only. Two identical runs
    of 2 steps (op level, or step digests) are inconclusive, with the optimizer named; when it
    steps within the 16 steps recording waits for it, they are reproducible."""
    extra = ("--ladder",) if ladder else ()
    code, report, _ = find(tmp_path / "late", "staged_finetune.py", options=extra)
    assert (code, report["verdict"]) == (3, "inconclusive"), report
    (reason,) = [r for r in report["evidence"]["reasons"] if "never stepped" in r]
    assert reason.startswith("the optimizer Adam of 4 parameters"), reason
    code, report, _ = find(tmp_path / "soon", "staged_finetune.py", "--warmup", "4", options=extra)
    assert (code, report["verdict"]) == (0, "reproducible"), report
