"""Activation checkpointing: a residual MLP tower whose blocks run under
torch.utils.checkpoint.checkpoint(use_reentrant=False), as HF's gradient_checkpointing and timm
do, so every block's forward runs twice: once in the forward (keeping nothing), and again inside
the backward, where its ops are recomputed before their own backward. `--reentrant`: the
reentrant checkpoint (use_reentrant=True, HF's default), which runs the block under no_grad in
the forward and, inside the backward, recomputes it and runs a backward of its own on it.

What it trains: a regression from 8 features and an item id (160,000 rows, 200 items). `inp`
(Linear 8 -> 32), three `blocks` (LayerNorm, Linear 32 -> 128, GELU, Linear 128 -> 32, residual),
`out` (Linear 32 -> 1); AdamW, 3 steps. `blocks.1` also adds a learned offset per item.

Planted source: `blocks.1` looks its offsets up as `self.offsets[ids]`; the backward of that
gather adds the 160,000 gradient rows into the 200 rows of the offsets' gradient with
index_put(accumulate=True), atomic adds on a CPU with >= 2 threads: the gradient differs in its
last bits from run to run.
Expected first divergence: aten.index_put.default, module blocks.1, phase backward, step 0, at
the line marked SOURCE (the recomputed forward's ops, run inside the backward, do not differ).
--twin: F.embedding instead (its backward is bitwise stable on a CPU); its test runs 20,000
rows (--rows), enough for several threads, in an eighth of the time.
Truth (statehash.py, torch 2.13 CPU, 2 threads): planted 2 runs -> 2 digests; twin 2 runs ->
1 digest; the same with --reentrant.
"""

import argparse

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="look offsets up with F.embedding")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--rows", type=int, default=160000, help="rows a step (the twin needs fewer)")
parser.add_argument(
    "--reentrant", action="store_true", help="the reentrant checkpoint (HF's default)"
)
args = parser.parse_args()

ROWS, ITEMS, WIDTH = args.rows, 200, 32


class Block(nn.Module):
    def __init__(self, width: int, items: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.offsets = nn.Parameter(torch.randn(items, width) * 0.02) if items else None

    def forward(self, x, ids):
        h = self.ff(self.norm(x))
        if self.offsets is not None:
            if args.twin:
                h = h + nn.functional.embedding(ids, self.offsets)
            else:
                h = h + self.offsets[ids]  # SOURCE
        return x + h


class Tower(nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        self.inp = nn.Linear(8, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH, ITEMS if i == 1 else 0) for i in range(depth))
        self.out = nn.Linear(WIDTH, 1)

    def forward(self, x, ids):
        x = self.inp(x)
        for block in self.blocks:
            x = checkpoint(block, x, ids, use_reentrant=args.reentrant)
        return self.out(x).squeeze(-1)


torch.manual_seed(0)
model = Tower()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
for step in range(args.steps):
    x = torch.randn(ROWS, 8, generator=g)
    ids = torch.randint(0, ITEMS, (ROWS,), generator=g)
    y = torch.randn(ROWS, generator=g)
    loss = nn.functional.mse_loss(model(x, ids), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.6f}")
