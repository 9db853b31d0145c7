"""A seeded model wrapped by torch.compile (deterministic)."""

import torch
from torch import nn

from _common import compile_backend

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
compiled = torch.compile(model, backend=compile_backend())
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.Generator().manual_seed(1)
for step in range(3):
    loss = compiled(torch.randn(4, 8, generator=data)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
