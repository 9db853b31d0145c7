"""Mixed precision as a CPU training loop writes it: bf16 autocast, a GradScaler
(torch.amp.GradScaler("cpu")), gradient accumulation over 2 micro-batches (the loss divided by
2), unscale_ then clip_grad_norm_, scaler.step / scaler.update, a OneCycleLR schedule.

What it trains: a regression over bags of items (60,000 rows a micro-batch, 16 features, 300
bags): `embed` (Linear 16 -> 64), a sum per bag (index_add_), ReLU, `head` (Linear 64 -> 1),
plus a learned offset per bag (`offsets`, 300 x 32, averaged, times the row's first feature)
read for every row; AdamW, 3 optimizer steps (6 micro-batches).

Planted source: the offsets are read per row as `self.offsets[bag]` (float32: indexing is not
an autocast op); the backward of that gather adds the 60,000 gradient rows into the 300 rows
of the offsets' gradient with index_put(accumulate=True), atomic adds on a CPU with >= 2
threads: the gradient differs in its last bits from run to run, and so do the weights.
Expected first divergence: aten.index_put.default, module BagRegressor, phase backward, step
0, at the line marked SOURCE.
--twin: F.embedding instead (its backward is bitwise stable on a CPU); its test runs 20,000
rows (--rows).
Truth (statehash.py, torch 2.13 CPU, 2 threads): planted 2 runs -> 2 digests; twin 2 runs ->
1 digest. (With the offsets averaged as they are, every row's gradient in a bag was the
same number, whose sums no order changes: 1 digest for the planted runs too; each row's
offset is now scaled by its first feature.)
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="read offsets with F.embedding")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--rows", type=int, default=60000, help="rows a micro-batch")
args = parser.parse_args()

ROWS, BAGS = args.rows, 300


class BagRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.head = nn.Linear(64, 1)
        self.offsets = nn.Parameter(torch.zeros(BAGS, 32))

    def forward(self, x, bag):
        summed = torch.zeros(BAGS, 64, dtype=torch.float32).index_add_(
            0, bag, self.embed(x).float()
        )
        if args.twin:
            offset = nn.functional.embedding(bag, self.offsets)
        else:
            offset = self.offsets[bag]  # SOURCE
        per_bag = torch.zeros(BAGS).index_add_(0, bag, offset.mean(1) * x[:, 0].float())
        return self.head(torch.relu(summed)).squeeze(-1).float() + per_bag / ROWS * BAGS


torch.manual_seed(0)
model = BagRegressor()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
data = torch.Generator().manual_seed(1)
for step in range(args.steps):
    for micro in range(2):
        x = torch.randn(ROWS, 16, generator=data)
        bag = torch.randint(0, BAGS, (ROWS,), generator=data)
        y = torch.randn(BAGS, generator=data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = model(x, bag)
        loss = nn.functional.mse_loss(prediction, y) / 2
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    print(f"step {step} loss {loss.item():.6f}")
