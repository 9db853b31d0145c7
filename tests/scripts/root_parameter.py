"""A source in the backward of a parameter the model holds itself (not in a submodule): item
vectors gathered by fancy indexing, ``self.items[ids]``, whose backward adds 200,000 rows into
500 with ``index_put_(accumulate=True)``: atomic adds on >= 32768 values (rows x 32) and >= 2
CPU threads.
The model is built by a function, so no variable of the script names it: its path is its class
name. ``--rows 1000`` (32000 values) is the deterministic twin: a serial loop.
200,000 rows, not fewer: with 50,000, in one CI run the module rung's pair agreed at the step
(on a loaded machine the two threads' shares can run one after the other, which adds in one
order); longer shares overlap more surely.
truth (statehash, torch 2.13 CPU, 2 threads): 200000 rows, 2 runs, 2 digests (50000: 2 runs, 2
digests); 1000 rows, 3 runs, 1."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=200000)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()


class Recommender(nn.Module):
    def __init__(self, items: int = 500, dim: int = 32):
        super().__init__()
        self.items = nn.Parameter(torch.randn(items, dim) * 0.1)
        self.score = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, ids):
        vectors = self.items[ids]  # SOURCE (its backward)
        return self.score(vectors).squeeze(-1)


def build():
    torch.manual_seed(0)
    net = Recommender()
    return net, torch.optim.AdamW(net.parameters(), lr=1e-3)


def train(steps: int, rows: int) -> None:
    net, opt = build()
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        ids = torch.randint(0, 500, (rows,), generator=g)
        target = torch.randn(rows, generator=g)
        loss = nn.functional.mse_loss(net(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()


train(args.steps, args.rows)
