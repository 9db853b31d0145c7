"""Takes a different branch in its second run (a counter file passed as argv[1] tells which run
this is): the op streams stop matching."""

import sys
from pathlib import Path

import torch

from _common import MLP, batch

counter = Path(sys.argv[1])
run = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(run + 1))

torch.manual_seed(0)
model = MLP()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    x, y = batch(step)
    out = model(x)
    if run == 1 and step == 1:
        out = torch.tanh(out)  # SOURCE
    loss = (out - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
