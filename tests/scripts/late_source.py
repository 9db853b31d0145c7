"""Planted source that appears only at step 7 of 10: a data-dependent branch.

Most batches are short and pooled with a one-hot matmul (deterministic). The batch of step 7 is
long, and long batches are pooled with index_put_(accumulate=True), which on >= 32768 float32 rows
and >= 2 threads uses atomic adds: from step 7 on the runs differ.
"""

import argparse

import torch
from torch import nn

from _common import SegmentNet

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
args = parser.parse_args()

torch.manual_seed(0)
SEGMENTS = 100


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if rows.shape[0] >= 32768:
            out = torch.zeros(SEGMENTS, rows.shape[1])
            out.index_put_((segments,), rows, accumulate=True)  # SOURCE
            return out
        one_hot = nn.functional.one_hot(segments, SEGMENTS).to(rows.dtype)
        return one_hot.T @ rows


model = SegmentNet(SegmentSum())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
target = torch.randn(SEGMENTS, 1, generator=g)
for step in range(args.steps):
    rows = 60000 if step == 7 else 2000  # one long batch
    x = torch.randn(rows, 16, generator=g)
    segments = torch.randint(0, SEGMENTS, (rows,), generator=g)
    loss = (model(x, segments) - target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
