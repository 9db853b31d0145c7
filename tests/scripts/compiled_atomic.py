"""Planted source inside compiled code: the backward of an embedding lookup accumulates rows with
index_put (accumulate=True). On the CPU (default) the model is compiled with the aot_eager
backend (a graph of aten ops, no C++ compiler needed) and index_put's CPU kernel adds in a racy
order. With ``cuda inductor`` (argv) it runs on the GPU, where eager index_put is deterministic
(it sorts) but Inductor's kernel adds with atomics. Either way the race runs inside the compiled
backward: bisector sees it at the boundary, compiled.Net.backward."""

import sys

import torch
from torch import nn

device, backend = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("cpu", "aot_eager")

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(100, 64))
        self.head = nn.Linear(64, 1)

    def forward(self, index):
        return self.head(self.table[index])


model = Net().to(device)
compiled = torch.compile(model, backend=backend)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(1)
index = torch.randint(0, 100, (200000,), generator=g).to(device)  # many rows: races every run
target = torch.randn(200000, 1, generator=g).to(device)
for step in range(3):
    loss = (compiled(index) - target).pow(2).mean()  # SOURCE (in the compiled backward)
    opt.zero_grad()
    loss.backward()
    opt.step()
