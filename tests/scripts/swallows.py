"""Catches every Exception around its training step: stopping after N steps must still work."""

import torch

from _common import MLP, batch

torch.manual_seed(0)
model = MLP()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(50):
    try:
        x, y = batch(step)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    except Exception as exc:  # a broad handler, as real scripts have
        print("ignored", exc)
print("reached the end")
