"""Cost of step digests (bisector.watch), measured side by side in one process.

For each model: step time plain and with ``bisector.watch`` (batch, loss, every gradient,
parameter, optimizer-state tensor, buffer and generator state fingerprinted each step), their
ratio, and the digest file's bytes per step (header excluded). Plain and watched blocks of steps
alternate, so both see the same machine state; medians of the repeats are reported. Blocks are
timed with one device sync at their end, as training runs (digests never wait for the device).

On a GPU the seed layer (examples/qwen2_sdpa_adam.py: Qwen2 decoder layer, 16 x 2048 tokens,
fp32, Adam) is measured too: the issue's target is <= 5% of its step time.

    python benchmarks/digest_overhead.py [--device cpu|cuda] [--repeats 5] [--steps 10]
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
from record_overhead import MODELS
from torch.nn import functional as F

import bisector
from bisector import digests

REPO = Path(__file__).resolve().parent.parent


def _seed_layer(device: str):
    spec = importlib.util.spec_from_file_location("qwen2", REPO / "examples" / "qwen2_sdpa_adam.py")
    qwen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qwen)
    model, inputs, targets, cos, sin = qwen.setup("sdpa", device=device)
    return model, lambda m: F.mse_loss(m(inputs, cos, sin), targets)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, build, device: str, repeats: int, steps: int) -> dict:
    model, loss_fn = build(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train():
        for _ in range(steps):
            loss = loss_fn(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(device)

    train()
    plain, watched, sizes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(repeats + 1):  # the first watched block warms up (weight tables, Triton)
            start = time.perf_counter()
            train()
            plain.append(time.perf_counter() - start)
            path = Path(folder) / f"{r}.digests"
            start = time.perf_counter()
            with bisector.watch(model, optimizer, path):
                train()
            watched.append(time.perf_counter() - start)
            loaded = digests.load(path)
            header = len(json.dumps(loaded.header, default=str)) + len(
                json.dumps(loaded.footer, default=str)
            )
            sizes.append((path.stat().st_size - header) / len(loaded.steps))
    plain_s = statistics.median(plain[1:]) / steps
    watched_s = statistics.median(watched[1:]) / steps
    tensors = len(loaded.steps[0].ids)
    return {
        "model": name,
        "device": device,
        "plain_ms": plain_s * 1e3,
        "watched_ms": watched_s * 1e3,
        "ratio": watched_s / plain_s,
        "values_per_step": tensors,
        "bytes_per_step": statistics.median(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    models = dict(MODELS)
    if args.device == "cuda":
        models["qwen2_seed_layer"] = _seed_layer
    rows = [measure(n, b, args.device, args.repeats, args.steps) for n, b in models.items()]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    print(
        f"{'model':<17} {'plain ms':>9} {'watched ms':>11} {'ratio':>6} "
        f"{'values/step':>12} {'bytes/step':>11}"
    )
    for r in rows:
        print(
            f"{r['model']:<17} {r['plain_ms']:>9.2f} {r['watched_ms']:>11.2f} {r['ratio']:>6.3f} "
            f"{r['values_per_step']:>12} {r['bytes_per_step']:>11.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"torch": torch.__version__, "device": device, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
