"""A bag-of-tokens regressor trained for 3 AdamW steps in a plain loop with
accelerate.Accelerator(cpu=True): prepare(model, optimizer, loader), accelerator.backward(loss).

Planted source (CPU, backward): BagRegressor gathers rows of its own table parameter by advanced
indexing, self.table[tokens], with 64 x 1024 = 65536 indices over only 128 rows (many repeats).
Its backward is aten.index_put_ with accumulate=True, which on a CPU with >= 2 threads adds the
rows concurrently, so the order of the float32 additions (and the rounded grad) changes run to run.

Expected first differing op: aten.index_put.default (accumulate=True; autograd's backward of the
aten.index.Tensor on line 47, marked SOURCE), module: the root module BagRegressor (the table is
its own parameter), phase backward, step 0.

--twin: the gather is torch.nn.functional.embedding(tokens, self.table), whose CPU backward
(embedding_dense_backward) is bitwise stable; nothing else changes.

Truth (statehash.py): planted 7/7 distinct digests; twin 7/7 equal.
"""
import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="gather with F.embedding instead")
args = parser.parse_args()

torch.manual_seed(0)

ROWS, DIM, BAG = 128, 32, 1024


class BagRegressor(nn.Module):
    def __init__(self, twin=False):
        super().__init__()
        self.twin = twin
        self.table = nn.Parameter(torch.randn(ROWS, DIM) * 0.1)
        self.hidden = nn.Linear(DIM, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, tokens):
        if self.twin:
            vectors = F.embedding(tokens, self.table)
        else:
            vectors = self.table[tokens]  # SOURCE
        pooled = vectors.mean(dim=1)
        return self.out(torch.relu(self.hidden(pooled))).squeeze(-1)


def make_data(n=256):
    g = torch.Generator().manual_seed(7)
    # skewed token ids: most of them fall on a few rows
    tokens = (torch.rand(n, BAG, generator=g) ** 3 * ROWS).long()
    targets = torch.randn(n, generator=g)
    return TensorDataset(tokens, targets)


accelerator = Accelerator(cpu=True)
model = BagRegressor(twin=args.twin)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
loader = DataLoader(make_data(), batch_size=64, shuffle=True)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

model.train()
for step, (tokens, targets) in enumerate(loader):
    if step == 3:
        break
    loss = F.mse_loss(model(tokens), targets)
    optimizer.zero_grad()
    accelerator.backward(loss)
    optimizer.step()
    accelerator.print(f"step {step} loss {loss.item():.6f}")
