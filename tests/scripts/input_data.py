"""Planted source in the input data: a batch drawn from numpy's unseeded global generator."""

import numpy as np
import torch

from _common import MLP

torch.manual_seed(0)
model = MLP()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(3):
    x = torch.tensor(np.random.rand(32, 16), dtype=torch.float32)  # SOURCE
    y = torch.ones(32, 1)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
