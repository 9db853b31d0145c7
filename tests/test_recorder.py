"""The Recorder in-process: module paths, phases, steps, leaves, stopping, clean removal."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import bisector
from bisector.analysis import compare
from bisector.capture.recorder import Recorder, RecordOptions, StopRun
from bisector.trace import load


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU())

    def forward(self, x):
        return self.mlp(self.attn(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _steps(model, opt, n):
    for _ in range(n):
        loss = model(torch.ones(2, 8)).pow(2).mean()  # LOSS LINE
        opt.zero_grad()
        loss.backward()
        opt.step()


def _model_and_sgd():
    torch.manual_seed(0)
    model = Net()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _events(path):
    trace = load(path)
    return trace, [trace.event_summary(i) for i in range(len(trace))]


def test_module_paths_phases_and_steps(tmp_path):
    model, opt = _model_and_sgd()
    with bisector.record(tmp_path / "t.trace"):
        _steps(model, opt, 2)
    trace, events = _events(tmp_path / "t.trace")
    forward = [e for e in events if e["phase"] == "forward" and e["op"] == "aten.addmm.default"]
    assert [e["module"] for e in forward[:5]] == [
        "layers.0.attn",
        "layers.0.mlp.0",
        "layers.1.attn",
        "layers.1.mlp.0",
        "head",
    ]
    backward_modules = {e["module"] for e in events if e["phase"] == "backward"}
    assert {"layers.0.attn", "layers.1.mlp.1", "head"} <= backward_modules
    optimizer = [e for e in events if e["phase"] == "optimizer"]
    assert optimizer and {e["module"] for e in optimizer} >= {"layers.0.attn", "head"}
    assert {e["step"] for e in events} == {0, 1}
    assert trace.footer["steps"] == 2


def test_locations_point_at_user_code(tmp_path):
    model, opt = _model_and_sgd()
    with bisector.record(tmp_path / "t.trace"):
        _steps(model, opt, 1)
    _, events = _events(tmp_path / "t.trace")
    here = __file__
    with open(here) as source:
        lines = source.read().splitlines()
    loss_line = next(i for i, line in enumerate(lines, 1) if "# LOSS LINE" in line)
    pow_event = next(e for e in events if e["op"] == "aten.pow.Tensor_Scalar")
    assert pow_event["location"] == f"{here}:{loss_line}"
    forward_line = next(
        i for i, line in enumerate(lines, 1) if "return self.mlp(self.attn(x))" in line
    )
    addmm = next(e for e in events if e["op"] == "aten.addmm.default")
    assert addmm["location"] == f"{here}:{forward_line}"
    # a backward op is attributed to the line of the forward op that created it
    gelu_backward = next(e for e in events if e["op"] == "aten.gelu_backward.default")
    assert gelu_backward["location"] == f"{here}:{forward_line}"
    assert gelu_backward["module"] == "layers.1.mlp.1"


def test_parameters_made_before_recording_are_named_leaves(tmp_path):
    model, opt = _model_and_sgd()
    with bisector.record(tmp_path / "t.trace"):
        _steps(model, opt, 2)
    _, events = _events(tmp_path / "t.trace")
    leaves = [e for e in events if e["op"].startswith("leaf.")]
    names = {e["args"] for e in leaves if e["op"] == "leaf.parameter"}
    assert "layers.0.attn.weight" in names and "head.bias" in names
    # after the first step, updated parameters are known values, not new leaves
    assert all(e["step"] == 0 for e in leaves if e["op"] == "leaf.parameter")


def test_in_place_updates_are_followed_not_mistaken_for_leaves(tmp_path):
    with bisector.record(tmp_path / "t.trace"):
        x = torch.zeros(4)
        for _ in range(3):
            x.add_(1)
        view = x[1:3]
        view.mul_(2)
        y = x.sum()
    trace, events = _events(tmp_path / "t.trace")
    assert [e["op"] for e in events if e["op"].startswith("leaf.")] == []
    assert float(y) == 18.0
    ops = [e["op"] for e in events]
    total, mul = ops.index("aten.sum.default"), ops.index("aten.mul_.Tensor")
    back = int(trace.columns["in_back"][trace.in_start[total]])
    assert total - back == mul, "the sum reads the value the in-place write into a view left"
    from bisector.trace import OUT_PARTIAL

    assert trace.columns["out_kind"][trace.out_start[mul]] & OUT_PARTIAL


def test_stop_after_steps_lets_the_script_go_on(tmp_path):
    model, opt = _model_and_sgd()
    with bisector.record(tmp_path / "t.trace", steps=1) as recorder:
        _steps(model, opt, 3)
        assert recorder.status == "stopped"
    trace = load(tmp_path / "t.trace")
    assert trace.footer["status"] == "stopped" and trace.footer["steps"] == 1
    assert {int(s) for s in trace.columns["step"]} == {0}


def test_exit_on_stop_raises_something_except_exception_cannot_catch(tmp_path):
    model, opt = _model_and_sgd()
    swallowed = []
    with (
        pytest.raises(StopRun),
        Recorder(tmp_path / "t.trace", RecordOptions(steps=2, exit_on_stop=True)),
    ):
        for _ in range(5):
            try:
                _steps(model, opt, 1)
            except Exception as exc:  # noqa: BLE001 - what user code does
                swallowed.append(exc)
    assert swallowed == []
    assert load(tmp_path / "t.trace").footer["status"] == "stopped"


def test_no_optimizer_counts_top_level_forward_calls(tmp_path):
    torch.manual_seed(0)
    model = Net()
    calls = 0
    with (
        pytest.raises(StopRun),
        Recorder(tmp_path / "t.trace", RecordOptions(steps=3, exit_on_stop=True)),
        torch.no_grad(),
    ):
        for _ in range(10):
            model(torch.ones(1, 8))
            calls += 1
    assert calls == 3
    trace = load(tmp_path / "t.trace")
    assert sorted({int(s) for s in trace.columns["step"]}) == [0, 1, 2]


def test_everything_is_removed_after_an_exception(tmp_path):
    with pytest.raises(ZeroDivisionError), bisector.record(tmp_path / "t.trace"):
        torch.ones(3).sum()
        1 / 0  # noqa: B018
    trace = load(tmp_path / "t.trace")
    assert trace.footer["status"] == "failed" and "ZeroDivisionError" in trace.footer["error"]
    # the autouse fixture checks that no hook or mode is left


def test_recording_does_not_change_results(tmp_path):
    def run():
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        _steps(model, opt, 3)
        return [p.detach().clone() for p in model.parameters()]

    plain = run()
    with bisector.record(tmp_path / "t.trace"):
        recorded = run()
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))


def test_uninitialised_memory_is_not_fingerprinted(tmp_path):
    from bisector.trace import OUT_NODATA

    with bisector.record(tmp_path / "t.trace"):
        buffer = torch.empty(16)
        buffer.fill_(1.0)
    trace = load(tmp_path / "t.trace")
    ops = [trace.string("op", i) for i in range(len(trace))]
    empty = ops.index("aten.empty.memory_format")
    assert trace.columns["out_kind"][trace.out_start[empty]] == OUT_NODATA


def test_ctrl_c_between_two_appends_leaves_a_loadable_trace(tmp_path):
    recorder = Recorder(tmp_path / "t.trace")
    with pytest.raises(KeyboardInterrupt), recorder:
        torch.ones(3).sum()
        # what a KeyboardInterrupt halfway through recording one event leaves in the buffers
        # (an event's own row is appended last; its inputs, outputs and fingerprints before)
        buffer = recorder._buffer
        buffer._inputs += (1, 0)
        buffer._outputs.append((1, 3, 0, 0))
        buffer.collector.add_blank()
        buffer.collector.add_blank()  # the next output's fingerprint, queued before its row
        raise KeyboardInterrupt
    trace = load(tmp_path / "t.trace")
    assert trace.footer["status"] == "interrupted"
    assert [trace.string("op", i) for i in range(len(trace))][-1] == "aten.sum.default"


def test_out_argument_is_written_not_read(tmp_path):
    with bisector.record(tmp_path / "t.trace"):
        a, b = torch.ones(4), torch.full((4,), 2.0)
        out = torch.zeros(4)
        torch.add(a, b, out=out)
        torch.add(out, b, out=out)  # here `out` is also read, as the first argument
    trace, events = _events(tmp_path / "t.trace")
    adds = [i for i, e in enumerate(events) if e["op"] == "aten.add.out"]
    assert [int(trace.columns["n_in"][i]) for i in adds] == [2, 2]
    assert [int(trace.columns["n_out"][i]) for i in adds] == [1, 1]
    second = adds[1]
    producer = second - int(trace.columns["in_back"][trace.in_start[second]])
    assert producer == adds[0], "the second add reads the value the first one wrote"


def test_random_flag_and_attention_rng_state_outputs(tmp_path):
    """A random op is flagged; SDPA without dropout is not random, and its generator-state
    results (uninitialised without dropout) are marked as carrying no data."""
    from bisector.capture.ops import OpInfo
    from bisector.trace import FLAG_RANDOM

    with bisector.record(tmp_path / "t.trace"):
        torch.nn.functional.dropout(torch.ones(8), 0.5, training=True)
    trace, events = _events(tmp_path / "t.trace")
    random = [e["op"] for i, e in enumerate(events) if trace.columns["flags"][i] & FLAG_RANDOM]
    assert random == ["aten.bernoulli_.float"]

    info = OpInfo.of(torch.ops.aten._scaled_dot_product_efficient_attention.default)
    assert info.random and info.dropout == (5, "dropout_p")
    assert info.rng_returns == frozenset({2, 3})
    q = torch.ones(1)
    assert not info.draws_random((q, q, q, None, True, 0.0), {})
    assert info.draws_random((q, q, q, None, True, 0.1), {})
    assert not info.draws_random((q, q, q, None, True), {})  # dropout_p defaults to 0


def test_cuda_graph_replays_are_counted_and_the_patch_removed(tmp_path):
    original = torch.cuda.CUDAGraph.replay
    names = ("capture_begin", "capture_end")
    originals = {name: getattr(torch.cuda.CUDAGraph, name) for name in names}
    with Recorder(tmp_path / "t.trace") as recorder:
        assert torch.cuda.CUDAGraph.replay is not original
        # a real graph needs CUDA; the count happens before the call, whatever torch raises
        with contextlib.suppress(Exception):
            torch.cuda.CUDAGraph.replay(object())
        torch.ones(2).sum()
    assert torch.cuda.CUDAGraph.replay is original
    assert recorder.graph_replays == 1
    trace = load(tmp_path / "t.trace")
    assert trace.footer["cuda_graph_replays"] == 1
    report = compare(trace, trace)
    assert any("replayed CUDA graphs (1 times)" in note for note in report.notes)
    for name in names:
        assert getattr(torch.cuda.CUDAGraph, name) is originals[name]


def test_compiled_code_runs_compiled_and_is_recorded_at_its_boundary(tmp_path):
    """torch.compile(module), Module.compile() and @torch.compile functions: one event per call
    and per backward node, the ops inside unrecorded, Dynamo really compiling, the numbers those
    of a plain run, and torch.compile restored afterwards."""
    from torch._dynamo.utils import counters

    from bisector.capture.compiled import supported

    if not supported():
        pytest.skip("this torch has no TorchDispatchMode.ignore_compile_internals")
    original = torch.compile

    def run():
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = Net()
        compiled = torch.compile(model, backend="aot_eager")
        head = nn.Linear(1, 1)
        head.compile(backend="aot_eager")

        @torch.compile(backend="aot_eager")
        def squash(x):
            return torch.tanh(x) * 2

        opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1)
        for _ in range(2):
            loss = squash(head(compiled(torch.ones(2, 8)))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in [*model.parameters(), *head.parameters()]]

    plain = run()
    counters.clear()
    with bisector.record(tmp_path / "t.trace"):
        recorded = run()
    assert torch.compile is original
    assert sum(counters["frames"].values()) > 0, "Dynamo must compile under the recorder"
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))

    trace, events = _events(tmp_path / "t.trace")
    ops = [e["op"] for e in events]
    forward = [(e["op"], e["module"], e["phase"]) for e in events if e["step"] == 0]
    assert ("compiled.Net", "Net", "forward") in forward
    assert ("compiled.Linear", "Linear", "forward") in forward
    assert "compiled.squash" in ops and "compiled.squash.backward" in ops
    assert "compiled.Net.backward" in ops
    # inside the compiled code: Net's addmm/gelu and squash's tanh are not recorded
    assert not {"aten.addmm.default", "aten.gelu.default", "aten.tanh.default"} & set(ops)
    assert "aten.mm.default" not in [e["op"] for e in events if e["phase"] == "backward"]
    assert trace.footer["compiled_calls"] == ops.count("compiled.Net") + sum(
        op.startswith("compiled.") and op != "compiled.Net" for op in ops
    )
    # the input and the parameters of the compiled module are inputs of its boundary event
    first = ops.index("compiled.Net")
    assert int(trace.columns["n_in"][first]) == 1 + len(list(Net().parameters()))


def test_a_capture_keeps_what_is_alive_at_a_replay_per_storage():
    """The bookkeeping of a CUDA graph capture, on CPU tensors: a written tensor that died is
    replaced by a view of it that lives on (.grad is a detached view of the gradient), and a
    storage written twice is taken once, by its last tensor; reads exclude what was written."""
    from bisector.capture.cuda_graphs import Capture

    capture = Capture()
    outside = torch.ones(4)
    grad = torch.zeros(4)
    capture.add([outside], [grad], [])
    kept = grad.detach()
    capture.add([grad, outside], [], [kept])
    scratch = torch.zeros(2)
    capture.add([], [scratch], [])
    again = scratch.view(2)
    capture.add([], [again], [])
    del grad, scratch
    assert [t is outside for t in Capture.alive(capture.reads)] == [True]
    alive = Capture.alive(capture.writes)
    assert len(alive) == 2 and alive[0] is kept and alive[1] is again


def test_a_failed_install_leaves_nothing_of_ours_in_the_process(tmp_path, monkeypatch):
    """Recorder.__enter__ installs hooks and wrappers one after another; if one fails, those
    before it are undone (nn.Module.__init__, random's functions, the global hooks)."""
    import random

    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim_module

    from bisector.capture.cuda_graphs import CudaGraphs

    init, draw = torch.nn.Module.__init__, random.random
    hooks = (
        dict(nn_module._global_forward_pre_hooks),
        dict(nn_module._global_forward_hooks),
        dict(optim_module._global_optimizer_pre_hooks),
    )

    def broken(self):
        raise RuntimeError("cannot install")

    monkeypatch.setattr(CudaGraphs, "install", broken)  # the last to install
    with pytest.raises(RuntimeError, match="cannot install"), Recorder(tmp_path / "t.trace"):
        pass
    assert torch.nn.Module.__init__ is init and random.random is draw
    assert dict(nn_module._global_forward_pre_hooks) == hooks[0]
    assert dict(nn_module._global_forward_hooks) == hooks[1]
    assert dict(optim_module._global_optimizer_pre_hooks) == hooks[2]


def test_a_recorder_that_stops_takes_its_dispatch_mode_off(tmp_path):
    """After record(steps=N) the training goes on in the with block at full speed: the
    dispatch mode is popped when recording stops, not when the block ends."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "t.trace", RecordOptions(steps=1)) as recorder:
        assert _get_current_dispatch_mode() is not None
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        assert recorder.status == "stopped"
        assert _get_current_dispatch_mode() is None
        model(torch.randn(2, 4)).sum().backward()  # runs on, unrecorded
    assert _get_current_dispatch_mode() is None


def test_draw_sites_tell_seeding_the_global_generator_from_making_a_new_one():
    """`np.random.default_rng(0)` seeds a generator of its own, not numpy's global one: a later
    unseeded `np.random.rand` is still a draw from an unseeded generator; `random.seed(1)`
    seeds Python's."""
    import random

    import numpy as np

    from bisector.capture.draws import DrawSites
    from bisector.capture.lines import Locator

    sites = DrawSites(Locator(), lambda: 0)
    sites.install()
    try:
        np.random.default_rng(0)
        np.random.rand(2)
        random.seed(1)
        random.random()
    finally:
        sites.remove()
    noted = sites.summary()
    assert noted["numpy.random"]["seeds"] == []
    assert [site[1] for site in noted["numpy.random"]["sites"]] == ["rand"]
    assert [text for _, text in noted["random"]["seeds"]] == ["seed(1)"]


def _inputs(trace, event: int) -> list[tuple[int, int]]:
    """(producer event, slot) of each input row of an event."""
    c, start, end = trace.columns, int(trace.in_start[event]), int(trace.in_start[event + 1])
    return [(event - int(c["in_back"][r]), int(c["in_slot"][r])) for r in range(start, end)]


def test_reads_of_the_parts_one_op_wrote_follow_each_part(tmp_path):
    """FSDP2 copies every parameter's shard into the views of one flat buffer with a single
    foreach copy, then reads the views (its all-gather copy-in). Each read must follow the
    part it reads, not the last part written: an H200 run named the copy-in a source when a
    part other than the last differed."""
    flat = torch.empty(10)
    parts = list(torch.split(flat, [4, 6]))
    with bisector.record(tmp_path / "t.trace"):
        torch._foreach_copy_(parts, [torch.full((4,), 1.0), torch.full((6,), 2.0)])
        first, second = parts[0] * 3, parts[1] * 3  # each reads one part
        both = flat * 2  # reads the whole buffer: both parts
        corner = flat[2:6] + 1  # overlaps both parts
    trace, events = _events(tmp_path / "t.trace")
    (copy,) = [i for i, e in enumerate(events) if e["op"] == "aten._foreach_copy_.default"]
    muls = [i for i, e in enumerate(events) if e["op"] == "aten.mul.Tensor"]
    assert [_inputs(trace, i)[0] for i in muls[:2]] == [(copy, 0), (copy, 1)]
    assert _inputs(trace, muls[2]) == [(copy, 0), (copy, 1)]
    (add,) = [i for i, e in enumerate(events) if e["op"] == "aten.add.Tensor"]
    assert _inputs(trace, add)[:2] == [(copy, 0), (copy, 1)]
    assert (first.sum() + second.sum() + both.sum() + corner.sum()).item() > 0


def test_recording_leaves_storages_resizable(tmp_path):
    """Reading a value must not change what the script can do with it: FSDP2 frees its
    unsharded parameters by resizing their storage to nothing (``Tensor.numpy`` would have
    marked the storage as not resizable for good)."""
    with bisector.record(tmp_path / "t.trace"):
        small = torch.ones(8) * 2  # staged, read later
        large = torch.ones(1 << 17) * 2  # read at once
    for t in (small, large):
        t.untyped_storage().resize_(0)
        assert t.untyped_storage().nbytes() == 0


def test_an_error_of_the_users_op_outside_the_module_recorded_is_theirs(tmp_path):
    """With the ops of one module recorded, an op elsewhere that raises is the script's error,
    not a bug of bisector's."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    options = RecordOptions(inside="0")
    with pytest.raises(RuntimeError, match="size"), Recorder(tmp_path / "t.trace", options):
        model(torch.ones(2, 4))
        torch.ones(3) + torch.ones(4)  # not in module "0": unrecorded, and it raises
    trace = load(tmp_path / "t.trace")
    assert {trace.string("module", i) for i in range(len(trace))} == {"0"}


def test_the_ops_of_one_module_are_its_forward_and_backward_not_the_optimizer_step(tmp_path):
    """Scoped to a module that holds parameters (and to the root, whose own parameter has no
    prefix to tell its owner): its forward and backward are recorded, the optimizer step that
    updates its parameters is not (part of it would read state made by ops left out)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * self.scale

    for inside in ("fc", "Net"):
        torch.manual_seed(0)
        net = Net()
        opt = torch.optim.Adam(net.parameters(), lr=0.1)
        path = tmp_path / f"{inside}.trace"
        with Recorder(path, RecordOptions(inside=inside)):
            for _ in range(2):
                net(torch.ones(2, 4)).sum().backward()
                opt.step()
        trace = load(path)
        phases = {trace.event_summary(i)["phase"] for i in range(len(trace))}
        modules = {trace.string("module", i) for i in range(len(trace))}
        assert phases == {"forward", "backward"} and modules == {inside}, (inside, phases)


def test_walks_shortened_at_module_calls_find_what_full_walks_find(tmp_path, monkeypatch):
    """An op's walk stops at the innermost module call and takes the rest from the walk done
    when that call began (capture/lines.py): on a library model (transformers) inside a model of
    this file, with a helper between them, every op gets the frames a full walk gets."""
    transformers = pytest.importorskip("transformers")
    from bisector.capture.lines import Locator

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )

    def helper(model, tokens):
        return model(input_ids=tokens).logits

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = transformers.LlamaForCausalLM(config)
            self.head = nn.Linear(64, 1)

        def forward(self, tokens):
            return self.head(helper(self.llama, tokens).relu()).sum()

    torch.manual_seed(0)
    model = Outer()
    tokens = torch.randint(0, 64, (2, 8))
    walk = Locator.walk
    compared = []

    def both(self, frame):
        shortened = walk(self, frame)
        marks, self._marks = self._marks, []
        try:
            full = walk(self, frame)
        finally:
            self._marks = marks
        if marks and marks[-1] is not None:
            above, stop = frame, marks[-1][0]
            while above is not None and above is not stop:
                above = above.f_back
            compared.append((shortened, full, above is stop))
        return shortened

    monkeypatch.setattr(Locator, "walk", both)
    with Recorder(tmp_path / "t.trace"):
        model(tokens).backward()
    assert len(compared) > 100
    for shortened, full, _ in compared:
        assert shortened[0] is full[0] and shortened[1] is full[1]
        assert shortened[2] == full[2]
    # The shortcut was there to take: most walks passed the innermost module call's frame.
    assert sum(passed for _, _, passed in compared) > len(compared) / 2


class _StepModule(nn.Module):
    """As a LightningModule: a parameter of its own and a head, used by ``training_step``,
    which the loop calls directly (never the module itself)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 8))
        self.head = nn.Sequential(nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 1))

    def training_step(self, ids):
        return self.head(self.table[ids]).pow(2).mean()

    def after_backward(self):
        return torch.stack([p.grad.norm() for p in self.parameters()]).sum()


def _framework_loop(steps: int) -> None:
    torch.manual_seed(0)
    module = _StepModule()
    opt = torch.optim.Adam(module.parameters(), lr=0.1)
    ids = torch.tensor([1, 2, 2, 7])

    def closure():  # the forward and backward run inside the step, as Lightning runs them
        opt.zero_grad()
        loss = module.training_step(ids)
        loss.backward()
        module.after_backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


def test_a_module_run_through_its_methods_owns_their_ops_and_names_its_parameters(tmp_path):
    """Lightning calls ``training_step``, not the module: its ops are the module's, its
    submodules are named from it (``head.0``, not a root ``Sequential`` of their own), the
    ops after the backward in its methods are ``other``, and step digests name its own
    parameter (``table``, not the optimizer's ``group0.0``)."""
    with bisector.record(tmp_path / "t.trace"):
        _framework_loop(2)
    _, events = _events(tmp_path / "t.trace")
    step = [e for e in events if e["step"] == 0]

    def modules(op: str, phase: str) -> set[str]:
        return {e["module"] for e in step if (e["op"], e["phase"]) == (op, phase)}

    assert modules("aten.index.Tensor", "forward") == {"_StepModule"}
    assert modules("aten.addmm.default", "forward") == {"head.0", "head.2"}
    assert modules("aten.mean.default", "forward") == {"_StepModule"}
    assert modules("aten.index_put.default", "backward") == {"_StepModule"}
    assert modules("aten.stack.default", "other") == {"_StepModule"}  # after the backward
    assert {e["module"] for e in step if e["phase"] == "optimizer"} >= {"_StepModule", "head.0"}

    from bisector import digests
    from bisector.capture.digester import GlobalDigests

    watch = GlobalDigests(tmp_path / "run.digests", None, lambda: None)
    watch.install()
    try:
        _framework_loop(2)
    finally:
        watch.close()
    taken = digests.load(tmp_path / "run.digests")
    grads = {taken.names[i][1] for i in taken.steps[0].ids if taken.names[i][0] == "grad"}
    assert {"table", "head.0.weight", "head.2.bias"} <= grads, grads


def test_recording_keeps_dynamo_out_of_the_handler_without_importing_it(tmp_path):
    """torch would wrap the handler in ``torch._dynamo.disable`` (a context switch per op, and
    an import of Dynamo at the first op); the handler's code is marked for Dynamo to skip
    instead, and a run that compiles nothing never loads Dynamo."""
    import subprocess
    import sys

    from conftest import subprocess_env

    code = (
        "import sys, torch\n"
        "from bisector.capture.recorder import Recorder, _OpMode\n"
        f"with Recorder({str(tmp_path / 't.trace')!r}):\n"
        "    torch.ones(3).sin().sum()\n"
        "print(_OpMode._dynamo_skipped, hasattr(_OpMode.__torch_dispatch__, '__wrapped__'),"
        " 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "False"]


def test_a_backward_after_another_optimizer_step_keeps_its_forwards_module_and_line(tmp_path):
    """A GAN's step: the generator's output is made, the discriminator steps on it detached,
    then the generator's loss runs backward through it. The generator's backward ops keep the
    generator's module and line when recording starts at step 0, and when it starts at the
    generator's step (the ladder's op rung), after the forward ran."""

    _check_a_gans_generator_backward(tmp_path, critic_steps=1, starts=(0, 1, 3))


def test_a_graph_built_several_optimizer_steps_before_its_backward_keeps_its_module(tmp_path):
    """A WGAN's iteration: the generator makes a batch, the critic steps three times on it
    (detached), then the generator's loss runs backward through the batch made three optimizer
    steps before (on a CPU, where the backward runs on the thread that ran the forward)."""
    _check_a_gans_generator_backward(tmp_path, critic_steps=3, starts=(0, 3, 7))


class _Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(5, 4))

    def forward(self, ids):
        return self.table[ids] * 2  # GENERATOR LINE


def _check_a_gans_generator_backward(tmp_path, critic_steps: int, starts: tuple[int, ...]):
    """Two GAN iterations of ``critic_steps`` discriminator steps on one generated batch, then
    the generator's step; recorded from each of ``starts`` (0, and each iteration's generator
    step, as the ladder's op rung starts): the generator's backward ops keep its module and
    line."""
    torch.manual_seed(0)
    gen, disc = _Generator(), nn.Linear(4, 1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    ids = torch.tensor([0, 1, 1, 3])
    with open(__file__) as source:
        line = next(i for i, text in enumerate(source, 1) if "# GENERATOR LINE" in text)
    for start in starts:
        path = tmp_path / f"from-{start}.trace"
        with Recorder(path, RecordOptions(start_step=start)):
            for _ in range(2):
                fake = gen(ids)
                for _ in range(critic_steps):
                    disc(fake.detach()).sum().backward()
                    opt_d.step()
                disc(fake).sum().backward()
                opt_g.step()
        trace, events = _events(path)
        gather = [e for e in events if e["op"] == "aten.index_put.default"]
        first_generator_step = start or critic_steps  # (each start is a generator step)
        assert gather and first_generator_step in {e["step"] for e in gather}, (start, events)
        for event in gather:
            assert (event["module"], event["phase"]) == ("_Generator", "backward"), (start, event)
            assert event["location"] == f"{__file__}:{line}", (start, event)


def test_an_unhashable_argument_is_described_without_a_cache_key(tmp_path):
    """The argument text is cached by a key of the arguments; where one cannot be hashed, the
    text is made each time, the same text."""
    from bisector.capture.ops import canonical_args

    with Recorder(tmp_path / "t.trace") as recorder:
        flat = [torch.zeros(2), bytearray(b"ab"), 3]
        first, second = recorder._args_id(flat), recorder._args_id(flat)
        assert first == second == recorder._buffer.string(canonical_args(flat))
        assert recorder._args_id([torch.zeros(2), 3]) != first


def test_a_sparse_gradient_is_followed_to_the_op_that_made_it(tmp_path):
    """SparseAdam reads an embedding's sparse gradient through ``coalesce``, ``_values()`` and
    ``_indices()``: each read leads back to the op that made the value (no leaf), and the
    sparse results are fingerprinted."""
    from bisector.trace import OUT_HASHED

    torch.manual_seed(0)
    table = nn.Embedding(10, 3, sparse=True)
    with Recorder(tmp_path / "t.trace"):
        table(torch.tensor([1, 4, 1])).sum().backward()
        grad = table.weight.grad.coalesce()
        (grad._values() * 2).sum()
        (grad._indices() + 1).sum()
    trace = load(tmp_path / "t.trace")
    ops = [trace.string("op", event) for event in range(len(trace))]
    leaves = [trace.string("args", e) for e, op in enumerate(ops) if op.startswith("leaf.")]
    assert not any(args.startswith("Tint64[1, ") for args in leaves), leaves  # (indices)
    coalesced = ops.index("aten._coalesce.default")
    for reader in ("aten.mul.Tensor", "aten.add.Tensor"):
        event = ops.index(reader, coalesced)
        first_input = trace.in_start[event]
        assert event - int(trace.columns["in_back"][first_input]) == coalesced, reader
    kind = trace.columns["out_kind"][trace.out_start[coalesced]]
    assert kind & OUT_HASHED
