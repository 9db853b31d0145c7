"""Small image classifier trained with a random horizontal-flip augmentation.

Cause: the flip decision uses Python's `random` module, which is never seeded, so each run flips
a different subset of every batch. Twin: `--seeded` calls random.seed(0) first.
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

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()
gen = torch.Generator().manual_seed(1)


def augment(batch):
    return torch.stack([img.flip(-1) if random.random() < 0.5 else img for img in batch])  # SOURCE


for step in range(5):
    images = torch.randn(16, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 10, (16,), generator=gen)
    logits = model(augment(images))
    loss = criterion(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
