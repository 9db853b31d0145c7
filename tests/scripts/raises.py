"""Fails in its second step with the user's own exception."""

import torch

from _common import MLP, batch


def check(loss, step):
    if step == 1:
        raise ValueError("loss exploded at step 1")


torch.manual_seed(0)
model = MLP()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    x, y = batch(step)
    loss = (model(x) - y).pow(2).mean()
    check(loss, step)
    opt.zero_grad()
    loss.backward()
    opt.step()
