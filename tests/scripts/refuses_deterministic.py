"""A planted index_put_ source, and a step that refuses deterministic mode, as a CUDA op without
a deterministic implementation would (so the `deterministic` intervention "fails")."""

import torch
from torch import nn

torch.manual_seed(0)


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("segment_sum does not have a deterministic implementation")
        out = torch.zeros(100, rows.shape[1])
        out.index_put_((segments,), rows, accumulate=True)  # SOURCE
        return out


proj, pool = nn.Linear(16, 64), SegmentSum()
opt = torch.optim.SGD(proj.parameters(), lr=0.01)
g = torch.Generator().manual_seed(1)
x = torch.randn(60000, 16, generator=g)
segments = torch.randint(0, 100, (60000,), generator=g)
for step in range(3):
    loss = pool(proj(x), segments).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
