"""Host microseconds per recorded op on tiny ops, where nothing but the host work counts.

A stack of 12 Linear(4, 4) + ReLU layers trained with SGD on 2 x 4 inputs (226 ops a step:
forward, backward, optimizer), so that each op's own compute is negligible and what a mode adds
per op is its Python. Steps alternate between plain, an empty TorchDispatchMode and bisector's
Recorder (trace written), a fresh mode each repeat; printed: the median microseconds per op of
each, and the Recorder's cost above plain and above the empty mode (issue #19's CPU bound is
on the latter: the empty mode is torch's own dispatch path, which no Python recorder avoids).

    python benchmarks/host_per_op.py [--steps 60] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scale import EmptyMode  # (benchmarks/scale.py, beside this script)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bisector.capture.recorder import Recorder


class CountingMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def tiny_step(device: str):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(4, 4), nn.ReLU())])
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4, device=device)

    def step() -> None:
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per mode and repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternations of the modes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    step = tiny_step(args.device)
    counting = CountingMode()
    with counting:
        step()
    ops = counting.ops
    folder = Path(tempfile.mkdtemp())

    def us_per_op(context) -> float:
        with context:
            step()  # (a first step in the mode, untimed)
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / args.steps / ops * 1e6

    times: dict[str, list[float]] = {"plain": [], "empty mode": [], "bisector": []}
    for repeat in range(args.repeats):
        times["plain"].append(us_per_op(contextlib.nullcontext()))
        times["empty mode"].append(us_per_op(EmptyMode()))
        times["bisector"].append(us_per_op(Recorder(folder / f"{repeat}.trace")))
    median = {mode: statistics.median(values) for mode, values in times.items()}
    threads = torch.get_num_threads()
    print(f"{args.device}, torch {torch.__version__}, {threads} threads, {ops} ops/step")
    for mode, value in median.items():
        print(f"  {mode:<12} {value:6.2f} us/op")
    print(
        f"  bisector above plain: {median['bisector'] - median['plain']:.2f} us/op, "
        f"above the empty mode: {median['bisector'] - median['empty mode']:.2f} us/op"
    )


if __name__ == "__main__":
    main()
