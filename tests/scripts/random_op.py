"""Planted source in a random op: dropout after the seed was reset from the clock."""

import time

import torch
from torch import nn

from _common import batch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 1)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x)))  # SOURCE
        return self.fc2(h)


torch.manual_seed(0)
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
torch.manual_seed(time.time_ns() % 2**32)  # "reseed per run": the planted mistake
for step in range(3):
    x, y = batch(step)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
