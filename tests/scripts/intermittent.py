"""A source that shows in some runs only, as a race or a thread count does, made repeatable.

Each run of this script takes the next number from a counter file. ``--perturb 1=1,5=0``: run 1
computes step 1, run 5 step 0, with one CPU thread instead of two; the weight gradient of
``head`` (a matmul that sums 60,000 rows) then splits its sum differently and gives other bits
from equal inputs. Every other run of every step uses two threads. With ``--perturb ""`` it is
the deterministic twin.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--counter", required=True)
parser.add_argument("--perturb", default="")
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()

counter = Path(args.counter)
run = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(run + 1))
schedule = dict(map(int, item.split("=")) for item in args.perturb.split(",") if item)

torch.manual_seed(0)
model = nn.Sequential()
model.add_module("proj", nn.Linear(16, 32))
model.add_module("act", nn.Tanh())
model.add_module("head", nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
for step in range(args.steps):
    torch.set_num_threads(1 if schedule.get(run) == step else 2)
    x = torch.randn(60000, 16, generator=g)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
