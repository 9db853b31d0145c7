"""Planted source in the optimizer: a learning rate derived from the clock (a scalar argument)."""

import time

import torch

from _common import MLP, batch


class PlainSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])  # SOURCE


torch.manual_seed(0)
model = MLP()
# A "warm-up" that depends on how long start-up took: differs in the last bits between runs.
lr = 0.01 * (1.0 + (time.perf_counter_ns() % 1_000_003) * 1e-9)
opt = PlainSGD(model.parameters(), lr=lr)
for step in range(3):
    x, y = batch(step)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
