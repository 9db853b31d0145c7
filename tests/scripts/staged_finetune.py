"""Two-stage fine-tuning: the head trains alone for --warmup steps (its own Adam), then the
backbone's optimizer, built up front, joins. Deterministic (a seeded twin of itself).

Recorded for 2 steps (bisector's default), the backbone's optimizer never steps: what it trains
was not compared, so identical runs are inconclusive, not reproducible (recording waits up to
16 steps for it; --warmup 4 lets it step inside that window, and the runs are reproducible).
Truth (statehash.py, torch 2.13 CPU): 2 runs, 1 digest, with either --warmup.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--warmup", type=int, default=40)
parser.add_argument("--steps", type=int, default=50)
args = parser.parse_args()

torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
head = nn.Linear(32, 4)
head_opt = torch.optim.Adam(head.parameters(), lr=1e-3)
backbone_opt = torch.optim.Adam(backbone.parameters(), lr=1e-4)
data = torch.Generator().manual_seed(1)
for step in range(args.steps):
    x = torch.randn(64, 16, generator=data)
    y = torch.randint(0, 4, (64,), generator=data)
    loss = nn.functional.cross_entropy(head(backbone(x)), y)
    head_opt.zero_grad()
    backbone_opt.zero_grad()
    loss.backward()
    head_opt.step()
    if step >= args.warmup:
        backbone_opt.step()
