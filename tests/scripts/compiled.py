"""A seeded model wrapped by torch.compile (deterministic); argv[1] "cuda" runs it on the GPU
(Inductor with Triton kernels)."""

import sys

import torch
from torch import nn

from _common import compile_backend

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
backend = "inductor" if device == "cuda" else compile_backend()
compiled = torch.compile(model, backend=backend)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.Generator().manual_seed(1)
for step in range(3):
    loss = compiled(torch.randn(4, 8, generator=data).to(device)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
