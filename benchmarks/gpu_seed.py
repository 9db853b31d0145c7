"""GPU benchmark of the seed case, in one run on one GPU:

1. step time of the Qwen2 seed layer plain, recorded by bisector at op level, and recorded by
   torch's DebugMode with tensor hashing (where the installed torch has it): the ratios;
2. fingerprint throughput (fused Triton kernel, and the pure-torch path) against a
   device-to-device copy of the same bytes;
3. trace bytes per event and events per step.

    python benchmarks/gpu_seed.py [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bisector.capture import fingerprint as fp
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.trace import load

REPO = Path(__file__).resolve().parent.parent


def _example():
    spec = importlib.util.spec_from_file_location("qwen2", REPO / "examples" / "qwen2_sdpa_adam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _rate(fn, reps: int) -> float:
    """Seconds per call of ``fn`` called back to back (launch overhead included, overlapped as
    it is when a recorded script runs)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def step_times(steps: int, repeats: int) -> dict:
    qwen = _example()
    model, inputs, targets, cos, sin = qwen.setup("sdpa")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train(n):
        for _ in range(n):
            loss = F.mse_loss(model(inputs, cos, sin), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()

    train(2)
    result: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        traces = []

        def recorded():
            path = Path(folder) / f"{len(traces)}.trace"
            with Recorder(path, RecordOptions()) as recorder:
                train(steps)
                torch.cuda.synchronize()
            traces.append((path, recorder.events))

        recorded()  # warm up: Triton compile, weight tables
        plain, rec = [], []
        for _ in range(repeats):  # alternate, so both see the same machine state
            plain += _timed(lambda: train(steps), 1)
            rec += _timed(recorded, 1)
        path, events = traces[-1]
        trace = load(path)
        header = len(json.dumps(trace.header, default=str))
        result.update(
            plain_ms=statistics.median(plain) / steps * 1e3,
            recorded_ms=statistics.median(rec) / steps * 1e3,
            events_per_step=events / steps,
            bytes_per_event=(path.stat().st_size - header) / events,
        )
    result["recorded_ratio"] = result["recorded_ms"] / result["plain_ms"]
    try:
        from torch.utils._debug_mode import DebugMode

        def debug_mode():
            with DebugMode(), DebugMode.log_tensor_hashes(hash_fn="norm"):
                train(steps)

        debug_mode()
        times = _timed(debug_mode, max(2, repeats // 2))
        result["debugmode_ms"] = statistics.median(times) / steps * 1e3
        result["debugmode_ratio"] = result["debugmode_ms"] / result["plain_ms"]
    except Exception as exc:  # noqa: BLE001 - older torch, or an API change
        result["debugmode_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return result


def throughput(sizes_mb: list[int]) -> list[dict]:
    return [_throughput_row(mb) for mb in sizes_mb]


def _throughput_row(mb: int) -> dict:
    fused = fp._fused()
    weights = fp._WEIGHTS.get(torch.device("cuda"))
    x = torch.randn(mb * (1 << 20) // 4, device="cuda")
    out = torch.empty_like(x)
    words, values = fp.word_view(x), fp._values(x)
    results = (
        torch.zeros(1, dtype=torch.int64, device="cuda"),
        torch.zeros(1, dtype=torch.float64, device="cuda"),
        torch.zeros(1, dtype=torch.float32, device="cuda"),
    )

    def copy():
        out.copy_(x)

    def kernel():
        fused.fingerprint_into(words, values, weights, fp._BLOCK, results, 0)

    def pure():
        fp.fingerprint_words(words)
        fp.magnitude(x)

    row: dict = {"size_mb": mb}
    for name, fn in (("copy", copy), ("fused", kernel if fused else None), ("torch", pure)):
        if fn is None:
            continue
        reps = max(3, min(200, 2000 // mb))
        t = statistics.median(_rate(fn, reps) for _ in range(3))
        row[f"{name}_ms"] = t * 1e3
        row[f"{name}_gbps"] = x.numel() * 4 / t / 1e9  # bytes of the tensor per second
    # A copy reads and writes each byte: its bandwidth counts both.
    row["copy_bandwidth_gbps"] = 2 * row["copy_gbps"]
    if "fused_gbps" in row:
        row["fused_vs_copy_bandwidth"] = row["fused_gbps"] / row["copy_bandwidth_gbps"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1,16,256,1024", help="fingerprint sizes in MB")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--throughput-only", action="store_true", help="skip the step timing")
    args = parser.parse_args()
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows = throughput([int(s) for s in args.sizes.split(",")])
    print(f"{info['device']}, torch {info['torch']}, CUDA {info['cuda']}, {info['date']}")
    steps = {} if args.throughput_only else step_times(args.steps, args.repeats)
    _print_steps(steps)
    _print_throughput(rows)
    if args.json:
        args.json.write_text(json.dumps({**info, "steps": steps, "throughput": rows}, indent=2))


def _print_steps(steps: dict) -> None:
    if not steps:
        return
    print("seed layer step (16 x 2048 tokens, fp32, Adam):")
    print(f"  plain          {steps['plain_ms']:8.2f} ms")
    print(f"  bisector       {steps['recorded_ms']:8.2f} ms  ({steps['recorded_ratio']:.2f}x)")
    if "debugmode_ms" in steps:
        print(
            f"  DebugMode hash {steps['debugmode_ms']:8.2f} ms  ({steps['debugmode_ratio']:.2f}x)"
        )
    else:
        print(f"  DebugMode: {steps.get('debugmode_error')}")
    print(
        f"  events/step {steps['events_per_step']:.0f}, bytes/event {steps['bytes_per_event']:.1f}"
    )


def _print_throughput(rows: list[dict]) -> None:
    print("fingerprint throughput (GB/s of tensor bytes; copy bandwidth counts read + write):")
    for r in rows:
        line = f"  {r['size_mb']:5d} MB  copy {r['copy_bandwidth_gbps']:7.0f}"
        if "fused_gbps" in r:
            line += f"  fused {r['fused_gbps']:7.0f} ({r['fused_vs_copy_bandwidth']:.0%} of copy)"
        line += f"  torch {r['torch_gbps']:7.0f}"
        print(line)


if __name__ == "__main__":
    main()
