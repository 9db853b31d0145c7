"""Batched scoring whose last op races, and whose result leaves torch only through .tolist():
no op reads it, the tensor is freed, yet it is the script's output.

Cause: index_put_(accumulate=True) on 200k float32 rows with >= 2 threads (CPU atomic adds).
Twin: `--one-thread` calls torch.set_num_threads(1).
"""

import json
import sys

import torch
from torch import nn

if "--one-thread" in sys.argv:
    torch.set_num_threads(1)
torch.manual_seed(0)
encoder = nn.Linear(16, 64)
data = torch.Generator().manual_seed(1)
points = torch.randn(200_000, 16, generator=data)
cells = torch.randint(0, 64, (200_000,), generator=data)


def pooled_scores():
    with torch.no_grad():
        pooled = torch.zeros(64, 64)
        pooled.index_put_((cells,), encoder(points), accumulate=True)  # SOURCE
        return pooled.tolist()


scores = [pooled_scores() for _ in range(3)]  # (a few passes, as an eval loop would)
print(json.dumps(scores[-1])[:80])
