"""Trains until interrupted (for the Ctrl-C test); prints a line once recording is under way."""

import sys

import torch

from _common import MLP, batch

torch.manual_seed(0)
model = MLP()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
while True:
    x, y = batch(step % 10)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 3:
        print("training", flush=True)
        sys.stdout.flush()
    step += 1
