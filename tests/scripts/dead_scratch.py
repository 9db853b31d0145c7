"""A value that differs between runs but that nothing uses: a helper draws a debug tensor from a
clock-seeded generator, and only returns it when asked. It cannot change training, so the runs are
reproducible (the difference is listed as dead). `--use-it` jitters the inputs with it: then it is live
and the runs diverge.
"""

import sys
import time

import torch
from torch import nn



def noise_probe(use_it: bool):
    probe = torch.randn(8, generator=torch.Generator().manual_seed(time.time_ns()))  # SOURCE
    return probe.sum() if use_it else None


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(1)
for step in range(3):
    x, y = torch.randn(64, 16, generator=data), torch.randn(64, 1, generator=data)
    probe = noise_probe("--use-it" in sys.argv)
    if probe is not None:
        x = x + 1e-3 * probe  # jitter the inputs with it
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
