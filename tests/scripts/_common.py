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


def compile_backend() -> str:
    """torch.compile's backend for the test scripts: inductor where a C++ compiler is found
    (it compiles CPU code with it), else aot_eager (graphs of aten ops: no compiler needed).
    BISECTOR_TEST_BACKEND overrides."""
    import os
    import shutil

    chosen = os.environ.get("BISECTOR_TEST_BACKEND")
    if chosen:
        return chosen
    return "inductor" if shutil.which("g++") or shutil.which("c++") else "aot_eager"


class SegmentNet(nn.Module):
    """proj (16 -> 64) -> pool (the given segment sum of the rows) -> head (64 -> 1): the shape
    of the planted index_put_ scripts, each with its own pool."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.proj = nn.Linear(16, 64)
        self.pool = pool
        self.head = nn.Linear(64, 1)

    def forward(self, x, segments):
        return self.head(self.pool(self.proj(x), segments))
