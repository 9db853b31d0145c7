"""MLP regression trained on mini-batches of rows picked at random from an in-memory dataset.

Cause: row indices come from Python's unseeded `random.randint`, so each run trains on other rows.
Twin: `--seeded` calls random.seed(0) first.
"""

import argparse
import random

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--seeded", action="store_true")
args = parser.parse_args()
if args.seeded:
    random.seed(0)

gen = torch.Generator().manual_seed(1)
data = torch.randn(1000, 16, generator=gen)
targets = data[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(1000, 1, generator=gen)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

for step in range(10):
    rows = [random.randint(0, len(data) - 1) for _ in range(32)]  # SOURCE
    x = torch.stack([data[i].clone() for i in rows])
    y = torch.stack([targets[i].clone() for i in rows])
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"final loss {loss.item():.6f}")
