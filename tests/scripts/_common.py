"""Shared pieces of the test scripts: a small seeded MLP and a data batch."""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(16, width)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(width, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def batch(step: int, rows: int = 32):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(rows, 16, generator=g), torch.randn(rows, 1, generator=g)
