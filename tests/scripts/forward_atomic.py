"""Planted source in the forward: a segment sum with index_put_(accumulate=True) (CPU atomics)."""

import torch
from torch import nn

from _common import SegmentNet

torch.manual_seed(0)


class SegmentSum(nn.Module):
    """Sums rows into 100 segments; >= 32768 float32 rows on >= 2 threads use atomic adds."""

    def forward(self, rows, segments):
        out = torch.zeros(100, rows.shape[1])
        out.index_put_((segments,), rows, accumulate=True)  # SOURCE
        return out


model = SegmentNet(SegmentSum())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
x = torch.randn(60000, 16, generator=g)
segments = torch.randint(0, 100, (60000,), generator=g)
target = torch.randn(100, 1, generator=g)
for step in range(3):
    loss = (model(x, segments) - target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
