"""Recording cost at the scale of real models, measured side by side in one process.

For each model, training steps alternate between these modes (median of the repeats):

- ``plain``: the step as the script runs it;
- ``empty mode``: under a TorchDispatchMode that only calls each op (the floor of any
  op-level recorder in Python);
- ``floor``: the least work per op of any recorder of bisector's kind (``FloorMode``: the
  caller's frame, the inputs' makers, one on-device fingerprint per output);
- ``bisector``: op-level recording (``Recorder``), trace written;
- ``modules``: the ladder's module rung (each module call and backward one event, no op);
- ``ops of 1 block``: op-level recording of one block's ops only, as the rung after it does;
- ``DebugMode``: torch's DebugMode with tensor hashes (where this torch has it).

Printed per mode: ms per step once the mode is on (a first step in it is not timed), the ratio
to plain, host microseconds added per op ((mode - plain) / ops per step), the time to leave the
mode (bisector: the last chunk and the trace's footer) and the peak memory allocated on the GPU
during its steps (with its increase over plain). Then the fingerprint's throughput by tensor size
against a copy of the same bytes (GPU only): back to back as a recorded script queues them (host
work included), and the kernel's device time alone (CUDA graph); and trace bytes per event.

Models: ``seed`` (the Qwen2 decoder layer of examples/qwen2_sdpa_adam.py: 16 x 2048 tokens, fp32,
Adam; GPU only) and ``llama`` (a Llama from a transformers config: 12 layers, hidden 1024,
8 x 1024 tokens, bf16 autocast, AdamW; on a CPU: 2 layers, hidden 256, 2 x 128 tokens).

    python benchmarks/scale.py [--models seed,llama] [--steps 3] [--repeats 3] [--json out.json]
        [--profile out.txt]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bisector.capture.fingerprint import Collector, hashable
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.trace import load

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()


class EmptyMode(TorchDispatchMode):
    """A dispatch mode that only calls each op."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class FloorMode(TorchDispatchMode):
    """The least work any recorder of bisector's kind does per op, and nothing else: find the
    caller's first frame outside torch (a cached kind per code object), flatten the arguments,
    look up which recorded op made each input tensor (a dict keyed by storage and version),
    call the op, queue one on-device fingerprint per tensor output that is not a view
    (bisector's own kernel and launcher), remember it as that output's maker, append a tuple.
    No phase, module, argument text, in-place writes or trace file: what it costs is a floor
    for ``bisector`` on the same host, not a recorder."""

    def __init__(self) -> None:
        super().__init__()
        self._torch = os.path.dirname(torch.__file__)
        self._kinds: dict = {}
        self._makers: dict = {}
        self._views: dict = {}
        self._events: list = []
        self._collector = Collector()
        self._hashable = hashable

    def _caller(self):
        frame = sys._getframe(2)
        kinds = self._kinds
        while frame is not None:
            code = frame.f_code
            entry = kinds.get(id(code))  # by id, holding the code: hashing code is slow
            if entry is None:
                entry = kinds[id(code)] = (code.co_filename.startswith(self._torch), code)
            if not entry[0]:
                return code, frame.f_lasti
            frame = frame.f_back
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = self._caller()
        flat = [a for a in args if isinstance(a, torch.Tensor)]
        for a in args:
            if isinstance(a, (list, tuple)):
                flat += [t for t in a if isinstance(t, torch.Tensor)]
        makers = self._makers
        reads = [makers.get((t.untyped_storage().data_ptr(), t._version)) for t in flat]
        out = func(*args, **kwargs)
        index = len(self._events)
        results = out if isinstance(out, (list, tuple)) else (out,)
        views = self._views.get(func)
        if views is None:  # a view's output is its input's value: nothing new to fingerprint
            views = self._views[func] = any(r.alias_info for r in func._schema.returns)
        for slot, t in enumerate(() if views else results):
            if isinstance(t, torch.Tensor) and self._hashable(t):
                self._collector.add(t)
                makers[(t.untyped_storage().data_ptr(), t._version)] = (index, slot)
        self._events.append((func, where, reads, len(results)))
        return out

    def __exit__(self, *exc):
        self._collector.drain()
        return super().__exit__(*exc)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def seed_model():
    spec = importlib.util.spec_from_file_location("qwen2", REPO / "examples" / "qwen2_sdpa_adam.py")
    assert spec is not None and spec.loader is not None
    qwen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qwen)
    model, inputs, targets, cos, sin = qwen.setup("sdpa")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = F.mse_loss(model(inputs, cos, sin), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def llama_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    big = CUDA
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024 if big else 256,
        intermediate_size=2816 if big else 704,
        num_hidden_layers=12 if big else 2,
        num_attention_heads=16 if big else 4,
        num_key_value_heads=16 if big else 4,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    device = "cuda" if big else "cpu"
    model = LlamaForCausalLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, seq = (8, 1024) if big else (2, 128)
    tokens = torch.randint(0, config.vocab_size, (batch, seq), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


MODELS = {"seed": seed_model, "llama": llama_model}
# One block of each model, for op-level recording of its ops only.
BLOCKS = {"seed": "layers.0.self_attn", "llama": "model.layers.0"}


# ``--ablate``: bisector with one part of its per-op work replaced by a constant, to see what
# that part costs (the recorder's own methods, patched for the mode's steps only).
ABLATIONS = {
    "- user line": (
        "bisector.capture.lines.Locator.locate",
        lambda self, skip=2: (None, None, False),
    ),
    "- phase, module": (
        "bisector.capture.attribution.Attribution.context",
        lambda self, tensors, user, location_id: (0, 0, location_id),
    ),
    "- argument text": ("bisector.capture.recorder.Recorder._args_id", lambda self, flat: 0),
    "- fingerprint": (
        "bisector.capture.fingerprint.Collector.add",
        lambda self, tensor: self.add_blank(),
    ),
}


def measure(
    name: str, steps: int, repeats: int, profile: Path | None, ablate: bool = False
) -> dict:
    step = MODELS[name]()
    folder = Path(tempfile.mkdtemp())
    traces: list[tuple[Path, int]] = []

    def run(context) -> tuple[float, float]:
        """Seconds per step once the mode is on (one step in it first, untimed), and seconds
        to leave it (for bisector: the last chunk and the footer written)."""
        with context:
            step()
            _sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync()
            per_step = (time.perf_counter() - start) / steps
            leaving = time.perf_counter()
        return per_step, time.perf_counter() - leaving

    def recorder(kept: bool = True):
        path = folder / f"{len(traces)}.trace"
        recorder = Recorder(path)

        @contextlib.contextmanager
        def recording():
            with recorder:
                yield
            if kept:  # (the traces of ablations are not bisector's own)
                traces.append((path, recorder.events))

        return recording()

    def scoped(**options):
        return lambda: Recorder(folder / "scoped.trace", RecordOptions(**options))

    modes = {
        "plain": contextlib.nullcontext,
        "empty mode": EmptyMode,
        "floor": FloorMode,
        "bisector": recorder,
        "modules": scoped(modules_only=True),
        "ops of 1 block": scoped(inside=BLOCKS[name]),
    }
    if ablate:
        for mode, (target, replacement) in ABLATIONS.items():

            @contextlib.contextmanager
            def without(target=target, replacement=replacement):
                with mock.patch(target, replacement), recorder(kept=False):
                    yield

            modes[f"bisector {mode}"] = without
    try:
        from torch.utils._debug_mode import DebugMode

        @contextlib.contextmanager
        def debug_mode():
            with DebugMode(), DebugMode.log_tensor_hashes(hash_fn="norm"):
                yield

        modes["DebugMode"] = debug_mode
    except ImportError:
        pass
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    leaving: dict[str, list[float]] = {mode: [] for mode in modes}
    peaks: dict[str, int] = {}
    for make in modes.values():  # warm up: kernels, Triton, caches
        run(make())
    for _ in range(repeats):  # alternate, so every mode sees the same machine state
        for mode, make in modes.items():
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            per_step, left = run(make())
            times[mode].append(per_step)
            leaving[mode].append(left)
            if CUDA:
                peaks[mode] = max(peaks.get(mode, 0), torch.cuda.max_memory_allocated())
    path, events = traces[-1]
    ops = events / (steps + 1)  # (the untimed first step is recorded too)
    plain = statistics.median(times["plain"])
    rows = []
    for mode in modes:
        ms = statistics.median(times[mode])
        row = {
            "mode": mode,
            "ms": ms * 1e3,
            "ratio": ms / plain,
            "us_per_op": (ms - plain) / ops * 1e6,
            "finish_ms": statistics.median(leaving[mode]) * 1e3,
        }
        if mode in peaks:
            row["peak_mib"] = peaks[mode] / 2**20
            row["peak_increase"] = peaks[mode] / peaks["plain"] - 1
        rows.append(row)
    trace = load(path)
    header = len(json.dumps(trace.header, default=str))
    result = {
        "model": name,
        "ops_per_step": ops,
        "bytes_per_event": (path.stat().st_size - header) / events,
        "rows": rows,
    }
    if profile is not None:
        profiler = cProfile.Profile()
        with recorder():
            profiler.enable()
            step()
            _sync()
            profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        with profile.open("a") as out:
            out.write(f"==== {name}: one recorded step, {ops:.0f} ops\n{text.getvalue()}\n")
    return result


def throughput(sizes_mb: list[float]) -> list[dict]:
    """Seconds per fingerprint of a float32 tensor, back to back as a recorded script queues
    them (host work included), against a device copy of the same tensor."""
    from bisector.capture import fingerprint as fp

    rows = []
    for mb in sizes_mb:
        x = torch.randn(int(mb * (1 << 20)) // 4, device="cuda")
        out = torch.empty_like(x)
        collector = fp.Collector()

        def add(collector=collector, x=x):
            collector.add(x)

        def copy(out=out, x=x):
            out.copy_(x)

        def total(x=x):  # torch's own reduction of the same tensor, for scale
            x.sum()

        row: dict = {"size_mb": mb}
        for label, fn in (("copy", copy), ("sum", total), ("fingerprint", add)):
            reps = int(max(5, min(400, 4000 // max(mb, 1))))
            best = []
            for _ in range(3):
                fn()
                _sync()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                _sync()
                best.append((time.perf_counter() - start) / reps)
                collector.drain()
            row[f"{label}_us"] = statistics.median(best) * 1e6
        _add_rates(row, x.numel() * 4)
        row["sum_of_copy"] = row["copy_us"] / (2 * row["sum_us"])
        rows.append(row)
    return rows


def _add_rates(row: dict, nbytes: int) -> None:
    """GB/s of the fingerprint (reads the bytes) and of the copy (reads and writes them), and
    the first as a share of the second."""
    row["fingerprint_gbps"] = nbytes / (row["fingerprint_us"] / 1e6) / 1e9
    row["copy_bandwidth_gbps"] = 2 * nbytes / (row["copy_us"] / 1e6) / 1e9
    row["of_copy"] = row["fingerprint_gbps"] / row["copy_bandwidth_gbps"]


def _against_copy(r: dict, decimals: int) -> str:
    """One size's fingerprint against its copy, in words."""
    return (
        f"  {r['size_mb']:8.3f} MB  fingerprint {r['fingerprint_us']:8.{decimals}f} us "
        f"{r['fingerprint_gbps']:7.0f} GB/s  copy {r['copy_us']:8.{decimals}f} us "
        f"{r['copy_bandwidth_gbps']:7.0f} GB/s  {r['of_copy']:.0%} of copy"
    )


def device_throughput(sizes_mb: list[float], launches: int = 20) -> list[dict]:
    """Device time alone of the fingerprint kernel against a copy of the same float32 tensor:
    ``launches`` of each captured in a CUDA graph and replayed, so that no host work lies
    between them (``throughput`` measures what a recorded script pays, host work included)."""
    from bisector.capture import fingerprint as fp
    from bisector.capture import triton_fingerprint as fused

    rows = []
    for mb in sizes_mb:
        x = torch.randn(int(mb * (1 << 20)) // 4, device="cuda")
        out = torch.empty_like(x)
        words = x.view(torch.int32)
        weights = fp._WEIGHTS.get(x.device)
        results = (
            torch.zeros(launches, dtype=torch.int64, device="cuda"),
            torch.zeros(launches, dtype=torch.float64, device="cuda"),
            torch.zeros(launches, dtype=torch.float32, device="cuda"),
        )

        def fingerprints(x=x, words=words, weights=weights, results=results):
            for row in range(launches):
                fused.fingerprint_into(words, x, weights, fp._BLOCK, results, row)

        def copies(out=out, x=x):
            for _ in range(launches):
                out.copy_(x)

        row: dict = {"size_mb": mb}
        for label, fn in (("copy", copies), ("fingerprint", fingerprints)):
            fn()  # compiled and warm before the capture
            _sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            _sync()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(5):
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3 / launches)
            row[f"{label}_us"] = statistics.median(times)
        _add_rates(row, x.numel() * 4)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="seed,llama" if CUDA else "llama",
        help='comma-separated: seed, llama ("" for the fingerprint figures only)',
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sizes", default="0.004,1,4,16,64,256", help="fingerprint sizes in MB (GPU)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile one recorded step")
    parser.add_argument(
        "--ablate", action="store_true", help="also bisector without each part of its per-op work"
    )
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if CUDA else "CPU"
    info = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{device}, torch {info['torch']}, {info['threads']} threads, {info['date']}")
    results = []
    for name in filter(None, args.models.split(",")):
        result = measure(name, args.steps, args.repeats, args.profile, args.ablate)
        results.append(result)
        print(
            f"{name}: {result['ops_per_step']:.0f} ops/step, "
            f"{result['bytes_per_event']:.1f} trace bytes/event"
        )
        for r in result["rows"]:
            line = f"  {r['mode']:<26} {r['ms']:9.2f} ms {r['ratio']:6.2f}x"
            line += f" {r['us_per_op']:7.1f} us/op  finish {r['finish_ms']:6.1f} ms"
            if "peak_mib" in r:
                line += f"  peak {r['peak_mib']:8.0f} MiB ({r['peak_increase']:+.1%})"
            print(line)
    rows = throughput([float(s) for s in args.sizes.split(",")]) if CUDA else []
    if rows:
        print("fingerprint (back to back, host work included) vs copy (read + write):")
    for r in rows:
        sum_text = f"  (torch's sum {r['sum_us']:8.1f} us: {r['sum_of_copy']:.0%} of copy)"
        print(_against_copy(r, 1) + sum_text)
    device_rows = device_throughput([float(s) for s in args.sizes.split(",")]) if CUDA else []
    if device_rows:
        print("fingerprint kernel vs copy, device time alone (CUDA graph of 20 of each):")
    for r in device_rows:
        print(_against_copy(r, 2))
    if args.json:
        everything = {**info, "models": results, "throughput": rows, "device_time": device_rows}
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
