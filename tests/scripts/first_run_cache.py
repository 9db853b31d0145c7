"""A divergence that does not recur: the first run on a machine fills a cache and computes
differently while it does, as an autotuner that benchmarks on first use, or a library that
chooses its code path once per process, would.

The loss is normalised by the sum of the batch's squared features (one full reduction of
80,000 values). The run that finds no file at --cache writes it and, "while it benchmarks",
computes step 0 with one CPU thread; every later run reads the file and uses two. One thread
splits that sum differently from two: its bits differ on equal inputs, and the gradients with
them. So the first pair of runs differs at step 0 and every pair after it is identical; a
replay of the sum in a later process gives one result.
--twin: no cache (two threads in every run).
Truth (statehash.py, torch 2.13 CPU): with a fresh --cache, run 1 and run 2 give 2 digests,
runs 2 and 3 one; the twin 1 digest.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--cache", default="")
parser.add_argument("--twin", action="store_true")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

cache = Path(args.cache) if args.cache and not args.twin else None
first_run = cache is not None and not cache.exists()
if first_run:
    cache.write_text("tuned\n")

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(1)
for step in range(args.steps):
    torch.set_num_threads(1 if first_run and step == 0 else 2)
    x = torch.randn(10000, 32, generator=data)
    y = model(x)
    energy = y.pow(2).sum()  # SOURCE: one reduction over 80,000 values
    loss = energy / energy.detach().clamp_min(1.0).sqrt()
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.6f}")
