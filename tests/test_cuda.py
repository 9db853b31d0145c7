"""GPU validation (marker `cuda`; skipped without CUDA): the ground-truth catalogue of CUDA ops
that differ from run to run, deterministic twins, the seed case, the fused fingerprint kernel,
and no host sync per op.

Run on a GPU machine:  python -m pytest -m cuda tests/test_cuda.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SCRIPTS, subprocess_env
from torch.utils._python_dispatch import _disable_current_modes

import bisector
from bisector.api import FindOptions
from bisector.trace import load

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

EFFICIENT_BACKWARD = {
    "aten._scaled_dot_product_efficient_attention_backward.default",
    "aten._efficient_attention_backward.default",
}
# case -> (ops that may be named, phase)
NONDETERMINISTIC = {
    "index_add": ({"aten.index_add_.default"}, "forward"),
    "scatter_add": ({"aten.scatter_add_.default"}, "forward"),
    "interpolate": ({"aten.upsample_bilinear2d_backward.default"}, "backward"),
    "grid_sample": ({"aten.grid_sampler_2d_backward.default"}, "backward"),
    "cumsum": ({"aten.cumsum.default"}, "forward"),
    "bincount": ({"aten.bincount.default"}, "forward"),
    "sdpa_flash": (
        {
            "aten._scaled_dot_product_flash_attention_backward.default",
            "aten._flash_attention_backward.default",
        },
        "backward",
    ),
    "sdpa_mem_efficient": (EFFICIENT_BACKWARD, "backward"),
    "sdpa_cudnn": ({"aten._scaled_dot_product_cudnn_attention_backward.default"}, "backward"),
}
TWINS = ("sdpa_math", "matmul", "conv")
# A nondeterministic kernel can, by chance, give equal results in one pair of runs.
_ATTEMPTS = 3


def _find(tmp_path: Path, script: Path, args: tuple[str, ...], steps: int):
    return bisector.find(script, args, steps=steps, options=FindOptions(workdir=str(tmp_path)))


@pytest.mark.parametrize("case", sorted(NONDETERMINISTIC))
def test_cuda_op_is_found(tmp_path, case):
    ops, phase = NONDETERMINISTIC[case]
    for attempt in range(_ATTEMPTS):
        report = _find(tmp_path / str(attempt), SCRIPTS / "cuda_ops.py", (case,), steps=3)
        if not report.reproducible:
            break
    assert not report.reproducible, f"{case}: {_ATTEMPTS} pairs of runs were identical"
    first = report.first_divergence
    assert first.op in ops, (case, first)
    assert (first.kind, first.module, first.phase) == ("kernel", "probe", phase), first
    assert first.location.endswith(".py:" + first.location.rsplit(":", 1)[-1])


@pytest.mark.parametrize("case", TWINS)
def test_deterministic_twin_is_reproducible(tmp_path, case):
    report = _find(tmp_path, SCRIPTS / "cuda_ops.py", (case,), steps=3)
    assert report.reproducible, report.first_divergence


def test_seed_case_is_found_at_the_attention_backward(tmp_path):
    example = REPO / "examples" / "qwen2_sdpa_adam.py"
    report = _find(tmp_path, example, (), steps=2)
    first = report.first_divergence
    assert first is not None, "the seed case was reproducible"
    assert first.op in EFFICIENT_BACKWARD | {
        "aten._scaled_dot_product_flash_attention_backward.default",
        "aten._scaled_dot_product_cudnn_attention_backward.default",
    }
    assert (first.kind, first.module, first.phase, first.step) == (
        "kernel",
        "layers.0.self_attn",
        "backward",
        0,
    )


def test_seed_case_through_the_ladder(tmp_path):
    """Issues 5 and 19 on a GPU: 50 steps, digests first, then the module calls of the first
    differing step (the attention module's backward), then that module's ops only."""
    example = REPO / "examples" / "qwen2_sdpa_adam.py"
    report = bisector.find(
        example, ("--steps", "50"), steps=50, options=FindOptions(workdir=str(tmp_path))
    )
    digest_level, module_level, op_level = report.levels
    assert module_level["found"].startswith("layers.0.self_attn (backward, step 0): inputs equal")
    assert op_level["steps"] == "0 (ops of layers.0.self_attn)"
    trace = bisector.trace.load(tmp_path / "a.trace")
    modules = {trace.string("module", i) for i in range(len(trace))}
    assert all(m.startswith("layers.0.self_attn") for m in modules), modules
    assert digest_level["level"] == "digests" and digest_level["first_step"] == 0
    assert digest_level["steps"].startswith("0-49")
    kinds = [v["kind"] for v in digest_level["first_values"] if v["kind"] != "rng"]
    assert kinds[0] == "grad", digest_level["first_values"]
    first = report.first_divergence
    assert (first.module, first.phase, first.step) == ("layers.0.self_attn", "backward", 0)
    assert "attention_backward" in first.op
    assert op_level["steps"].startswith("0 ")


@pytest.mark.parametrize("attn", ["math", "eager"])
def test_seed_case_without_fused_attention_is_reproducible(tmp_path, attn):
    example = REPO / "examples" / "qwen2_sdpa_adam.py"
    report = _find(tmp_path, example, ("--attn", attn), steps=2)
    assert report.reproducible, report.first_divergence


def test_recording_does_not_change_gpu_numerics(tmp_path):
    example = REPO / "examples" / "qwen2_sdpa_adam.py"
    args = ["--attn", "math", "--steps", "3", "--batch", "4", "--seq", "512"]
    plain = subprocess.run(
        [sys.executable, str(example), *args],
        capture_output=True,
        text=True,
        check=True,
        env=subprocess_env(),
    )
    recorded = subprocess.run(
        [
            sys.executable,
            "-m",
            "bisector",
            "record",
            str(example),
            "--all",
            "-o",
            str(tmp_path / "t.trace"),
            "--show-output",
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert recorded.returncode == 0, recorded.stderr
    checksum = [line for line in plain.stdout.splitlines() if "checksum" in line]
    shown = [line for line in recorded.stdout.splitlines() if "checksum" in line]
    assert checksum and checksum[0] in recorded.stdout, (checksum, shown, recorded.stdout[-2000:])


def test_fused_kernel_matches_the_definition():
    from bisector.capture import fingerprint as fp

    if fp._fused() is None:
        pytest.skip("Triton is not available")
    tensors = [
        torch.randn(fp.SMALL + 1, device="cuda"),
        torch.randn(3_000_001, device="cuda"),
        torch.randn(fp._BLOCK * 3 + 17, device="cuda"),  # several blocks
        torch.randn(1 << 20, device="cuda").to(torch.bfloat16),
        (torch.randn(1 << 18, device="cuda") * 1000).to(torch.int64),
        torch.randn(1 << 18, device="cuda") > 0,
        torch.randn(1 << 17, dtype=torch.complex64, device="cuda"),
        torch.randn(512, 1024, device="cuda").t(),  # non-contiguous
        torch.randn(1 << 20, device="cuda")[1:],  # not 16-byte aligned: a kernel of its own
        torch.randn(7, device="cuda"),  # small: every CUDA output takes the kernel
        torch.randn(0, device="cuda"),
    ]
    collector = fp.Collector()
    for t in tensors + tensors:  # the second time, each is launched directly (or by address)
        collector.add(t)
    fps, sums, maxes = collector.drain()
    assert (fps[: len(tensors)] == fps[len(tensors) :]).all()
    for i, t in enumerate(tensors):
        assert int(fps[i]) & fp._MASK64 == fp.fingerprint(t), i  # pure-torch path
        assert int(fps[i]) & fp._MASK64 == fp.fingerprint(t.cpu()), i  # same on the CPU
        total, largest = fp.magnitude(t)
        assert sums[i] == pytest.approx(float(total), rel=1e-9, abs=1e-6), i
        assert maxes[i] == pytest.approx(float(largest), rel=1e-6), i


def test_a_sparse_gradient_on_the_gpu_is_fingerprinted_as_on_the_cpu(tmp_path):
    """A CUDA embedding's sparse gradient: the collector's fingerprint and stats equal those of
    the same tensor on the CPU, and SparseAdam's reads of it lead back to the op that made it."""
    from bisector.capture import fingerprint as fp
    from bisector.capture.recorder import Recorder

    torch.manual_seed(0)
    table = torch.nn.Embedding(1000, 16, sparse=True).cuda()
    table(torch.randint(0, 1000, (4096,), device="cuda")).pow(2).sum().backward()
    grad = table.weight.grad
    collector = fp.Collector()
    for t in (grad, grad.cpu(), grad.coalesce(), grad.coalesce().cpu()):
        collector.add_sparse(t)
    fps, sums, maxes = collector.drain()
    assert fps[0] == fps[1] and fps[2] == fps[3] and fps[0] != fps[2]  # (uncoalesced: its order)
    assert sums[0] == pytest.approx(sums[1]) and maxes[0] == maxes[1]
    optimizer = torch.optim.SparseAdam(table.parameters(), lr=1e-2)
    with Recorder(tmp_path / "t.trace"):
        optimizer.step()
    trace = load(tmp_path / "t.trace")
    ops = [trace.string("op", event) for event in range(len(trace))]
    leaves = [trace.string("args", e) for e, op in enumerate(ops) if op.startswith("leaf.")]
    assert not any(args.startswith("Tint64[1, ") for args in leaves), leaves  # (indices)


def test_no_host_sync_per_op(tmp_path):
    """Recording a CUDA training step never synchronises with the device until a chunk is
    written: torch's sync debug mode raises on any synchronising call."""
    from bisector.capture.recorder import Recorder, RecordOptions

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(1024, 256),
        torch.nn.LayerNorm(256),
    ).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(4096, 256, device="cuda")
    small = torch.randn(64, 256, device="cuda")

    def step(batch):
        loss = model(batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(x)  # warm up: kernels, caches, the fingerprint weight tables
    torch.cuda.synchronize()
    with Recorder(tmp_path / "t.trace", RecordOptions(chunk_events=10**7)) as recorder:
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                step(x)
                step(small)  # small outputs go through the batched path
            with _disable_current_modes():  # as inside the recorder's handler
                recorder._buffer.collector._settle()  # the batched fingerprints too
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert recorder.events > 100
    trace = bisector.trace.load(tmp_path / "t.trace")
    assert len(trace) == recorder.events


def test_outputs_made_on_a_side_stream_are_fingerprinted_once_written(tmp_path):
    """FSDP2, DDP and autograd run ops on streams of their own. The recorder copies and
    fingerprints an output on the op's stream and reads the results on another: each recorded
    fingerprint must be that of the finished output (a race here shows a source where there
    is none, as an FSDP2 all-gather copy-in on an idle rank once did)."""
    from bisector.capture import fingerprint as fp
    from bisector.capture.recorder import Recorder, RecordOptions

    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    made = []
    with Recorder(tmp_path / "t.trace", RecordOptions()):
        for i in range(12):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                big = a @ a  # a long kernel: the read-back must wait for it
                small = big[:100, :100] * 2  # a small output: copied aside, batched later
                shifted = big + i  # a large one: fingerprinted at once, on the side stream
            torch.cuda.current_stream().wait_stream(side)
            made += [big, small, shifted]
            for tensor in (big, small, shifted):
                tensor.record_stream(torch.cuda.current_stream())
    torch.cuda.synchronize()
    trace = load(tmp_path / "t.trace")
    kept = ("aten.mm.default", "aten.mul.Tensor", "aten.add.Tensor")
    rows = [int(trace.out_start[e]) for e in range(len(trace)) if trace.string("op", e) in kept]
    recorded = [int(trace.columns["out_fp"][row]) & fp._MASK64 for row in rows]
    assert recorded == [fp.fingerprint(tensor) for tensor in made]


def test_a_batch_fingerprinted_on_a_side_stream_is_read_once_computed():
    """Staged copies overflow inside an op on a side stream (FSDP2's copy-in stream): their
    batch is fingerprinted there, and read back later on the default stream, which must wait
    for it (it once did not: the read-back took unfinished results, and an FSDP2 all-gather
    copy-in under load was named a source)."""
    from bisector.capture import fingerprint as fp

    side = torch.cuda.Stream()
    collector = fp.Collector()
    small = [torch.randn(100, 100, device="cuda") for _ in range(6)]
    large = torch.randn(1 << 20, device="cuda")
    with torch.no_grad():
        for tensor in small[:3]:
            collector.add(tensor)  # staged on the default stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(300_000_000)  # the side stream lags by a good part of a second
            for tensor in [*small[3:], large]:
                collector.add(tensor)
            collector._settle()  # as an overflow of the staged copies there does
        fps, _, _ = collector.drain()  # read on the default stream
    torch.cuda.synchronize()
    expected = [fp.fingerprint(t) for t in [*small, large]]
    assert [int(v) & fp._MASK64 for v in fps] == expected


def test_cli_on_gpu_prints_the_source(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bisector",
            "find",
            str(SCRIPTS / "cuda_ops.py"),
            "--no-confirm",
            "--workdir",
            str(tmp_path),
            "--",
            "scatter_add",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode in (0, 1), result.stderr
    if result.returncode == 1:
        assert "scatter_add_" in result.stdout and "probe" in result.stdout


def test_seed_case_verdict(tmp_path):
    """Issue 4 on a GPU: the verdict names SDPA; the math backend and deterministic algorithms
    fix it; Adam -> SGD does not. Issue 16: the same confirmed find twice reaches the same
    outcome for every intervention (and the same cause, replay verdict and fix)."""
    from bisector.confirm import ConfirmOptions

    example = REPO / "examples" / "qwen2_sdpa_adam.py"
    confirm = ConfirmOptions(
        replays=5, forced=("sdpa-math", "deterministic", "adam-to-sgd"), only_forced=True
    )
    reports = [
        bisector.find(
            example, (), steps=2, options=FindOptions(workdir=str(tmp_path / n), confirm=confirm)
        )
        for n in ("first", "second")
    ]
    seen = [
        (
            r.cause,
            r.fix,
            [(x["op"], x["distinct_results"] > 1) for x in r.replay],
            {c["intervention"]: c["outcome"] for c in r.confirmations},
        )
        for r in reports
    ]
    assert seen[0] == seen[1]
    report = reports[0]
    assert "attention_backward" in report.cause and "layers.0.self_attn" in report.cause
    outcomes = {c["intervention"]: c["outcome"] for c in report.confirmations}
    assert outcomes["sdpa-math"] == "fixes"
    assert outcomes["deterministic"] == "fixes"
    assert outcomes["adam-to-sgd"] == "amplifier", report.confirmations  # SGD hides the noise
    assert report.replay and report.replay[0]["distinct_results"] > 1
    assert "SDPBackend.MATH" in report.fix


# NVLink multicast off in every launch on the GPU machines (see the device notes).
_NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def _find_ddp(tmp_path, monkeypatch, *args):
    from bisector.runner import Launch, RunOptions

    for name, value in _NO_MULTICAST.items():
        monkeypatch.setenv(name, value)
    options = FindOptions(workdir=str(tmp_path), run=RunOptions(launch=Launch(2)))
    return bisector.find(SCRIPTS / "ddp_sdpa.py", args, steps=2, options=options)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_sdpa_is_found_on_both_ranks(tmp_path, monkeypatch):
    """Issue 6 on 2 GPUs (NCCL): each rank has its own SDPA backward source."""
    report = _find_ddp(tmp_path, monkeypatch)
    assert not report.reproducible
    first = {}
    for source in report.sources:
        first.setdefault(source.rank, source)
    assert set(first) == {0, 1}, report.sources
    for source in first.values():
        assert "attention_backward" in source.op, source
        assert (source.kind, source.module, source.phase, source.step) == (
            "kernel",
            "module.attn",
            "backward",
            0,
        )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_with_math_attention_is_reproducible(tmp_path, monkeypatch):
    report = _find_ddp(tmp_path, monkeypatch, "--attn", "math")
    assert report.reproducible, report.first_divergence


def test_cuda_graph_replays_are_recorded_and_a_captured_race_is_found(tmp_path):
    """A captured forward/backward replayed each step: deterministic, the pair is reproducible
    and each replay is an event; with an index_add_ race inside the capture, the replay is the
    source, and the eager optimizer step reads what the replay wrote."""
    script = SCRIPTS / "cuda_graph.py"
    same = _find(tmp_path / "same", script, (), steps=3)
    assert same.reproducible, same.first_divergence
    trace = load(same.runs[0].trace)
    ops = [trace.string("op", i) for i in range(len(trace))]
    assert ops.count("cuda_graph.replay") == 3
    assert trace.footer["cuda_graph_replays"] == 3
    # the optimizer reads the gradients the replays wrote: none of them is a leaf
    phases = [trace.columns["phase"][i] for i in range(len(trace))]
    optimizer_leaves = [
        op for op, phase in zip(ops, phases, strict=True) if op.startswith("leaf.") and phase == 2
    ]
    assert not optimizer_leaves
    for attempt in range(_ATTEMPTS):
        report = _find(tmp_path / f"race{attempt}", script, ("atomic",), steps=3)
        if not report.reproducible:
            break
    first = report.first_divergence
    assert (first.kind, first.op) == ("kernel", "cuda_graph.replay"), report.sources
    assert "CUDA graph" in first.detail and first.spread > 0


def test_compiled_code_on_the_gpu(tmp_path):
    """Inductor on the GPU: a deterministic compiled model stays reproducible and a plain run
    equals the recorded one; Inductor's atomic index_put in a compiled backward is found at
    the boundary, and no-compile (eager index_put sorts: deterministic) fixes it."""
    from bisector.api import find
    from bisector.confirm import ConfirmOptions

    report = find(
        SCRIPTS / "compiled.py",
        ("cuda",),
        steps=2,
        options=FindOptions(workdir=str(tmp_path / "det"), check_observer=True),
    )
    assert report.reproducible and report.observer["equal"], report.observer
    options = FindOptions(
        workdir=str(tmp_path / "race"),
        confirm=ConfirmOptions(forced=("no-compile",), only_forced=True, replays=2),
    )
    report = find(SCRIPTS / "compiled_atomic.py", ("cuda", "inductor"), steps=1, options=options)
    first = report.first_divergence
    assert (first.op, first.phase) == ("compiled.Net.backward", "backward"), report.sources
    (pair,) = report.confirmations
    assert pair["intervention"] == "no-compile" and pair["outcome"] == "fixes", pair
