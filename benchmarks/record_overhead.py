"""Recording cost, measured side by side in one process: plain step vs recorded step.

Prints, per model: plain and recorded step time and their ratio, events per step, events
recorded per second, and trace bytes per event. Plain and recorded steps alternate, so that
both see the same machine state; the median of the repeats is reported.

    python benchmarks/record_overhead.py [--device cpu|cuda] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bisector.capture.recorder import Recorder
from bisector.trace import load


def transformer(device: str):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True), num_layers=2
    ).to(device)
    x = torch.randn(8, 128, 256, device=device)
    return model, lambda m: m(x).pow(2).mean()


def mlp(device: str):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(512, 512), nn.GELU())]).to(
        device
    )
    x = torch.randn(256, 512, device=device)
    return model, lambda m: m(x).pow(2).mean()


def gnn(device: str):
    torch.manual_seed(0)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 64)

        def forward(self, h, src, dst):
            out = h.new_zeros(h.shape)
            out.index_put_((dst,), self.lin(h)[src], accumulate=True)
            return torch.relu(out + h)

    model = nn.ModuleList([Layer(), Layer()]).to(device)
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(2000, 64, generator=g).to(device)
    src = torch.randint(0, 2000, (60000,), generator=g).to(device)
    dst = torch.randint(0, 2000, (60000,), generator=g).to(device)

    def loss(m):
        h = h0
        for layer in m:
            h = layer(h, src, dst)
        return h.pow(2).mean()

    return model, loss


MODELS = {"mlp": mlp, "transformer": transformer, "gnn_scatter": gnn}


def _step(model, loss_fn, opt, device):
    loss = loss_fn(model)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, device: str, repeats: int, steps: int) -> dict:
    model, loss_fn = MODELS[name](device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(2):
        _step(model, loss_fn, opt, device)
    plain, recorded, events, sizes = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                _step(model, loss_fn, opt, device)
            plain.append((time.perf_counter() - start) / steps)

            path = Path(folder) / f"{r}.trace"
            start = time.perf_counter()
            with Recorder(path) as recorder:
                for _ in range(steps):
                    _step(model, loss_fn, opt, device)
            recorded.append((time.perf_counter() - start) / steps)
            events.append(recorder.events)
            trace = load(path)
            header = len(json.dumps(trace.header, default=str))
            sizes.append((path.stat().st_size - header) / max(recorder.events, 1))
    plain_s, recorded_s = statistics.median(plain), statistics.median(recorded)
    per_step = statistics.median(events) / steps
    return {
        "model": name,
        "device": device,
        "plain_ms": plain_s * 1e3,
        "recorded_ms": recorded_s * 1e3,
        "ratio": recorded_s / plain_s,
        "events_per_step": per_step,
        "events_per_s": per_step / recorded_s,
        "bytes_per_event": statistics.median(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = [measure(m, args.device, args.repeats, args.steps) for m in args.models.split(",")]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    header = (
        f"{'model':<12} {'plain ms':>9} {'recorded ms':>12} {'ratio':>6} "
        f"{'events/step':>12} {'events/s':>9} {'B/event':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:<12} {r['plain_ms']:>9.2f} {r['recorded_ms']:>12.2f} {r['ratio']:>6.2f} "
            f"{r['events_per_step']:>12.0f} {r['events_per_s']:>9.0f} {r['bytes_per_event']:>8.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"torch": torch.__version__, "device": device, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
