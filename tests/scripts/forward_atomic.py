"""Planted source in the forward: a segment sum with index_put_(accumulate=True) (CPU atomics)."""

import torch
from torch import nn

torch.manual_seed(0)


class SegmentSum(nn.Module):
    """Sums rows into 100 segments; >= 32768 float32 rows on >= 2 threads use atomic adds."""

    def forward(self, rows, segments):
        out = torch.zeros(100, rows.shape[1])
        out.index_put_((segments,), rows, accumulate=True)  # SOURCE
        return out


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 64)
        self.pool = SegmentSum()
        self.head = nn.Linear(64, 1)

    def forward(self, x, segments):
        return self.head(self.pool(self.proj(x), segments))


model = Net()
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
