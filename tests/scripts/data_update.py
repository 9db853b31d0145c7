"""Small graph network trained with hand-written SGD (`p.data.add_`), no torch.optim.

Cause: message passing sums edge messages into nodes with index_put_(accumulate=True) on float32,
which uses atomic adds on CPU with >= 2 threads (200k edges), so sums depend on thread timing.
Twin: `--one-thread` calls torch.set_num_threads(1) at start.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--one-thread", action="store_true")
args = parser.parse_args()
if args.one_thread:
    torch.set_num_threads(1)


class GraphConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, h, src, dst):
        messages = self.lin(h)[src]
        agg = torch.zeros_like(h)
        agg.index_put_((dst,), messages, accumulate=True)  # SOURCE
        return torch.relu(agg / 200.0 + h)


class GNN(nn.Module):
    def __init__(self, in_dim=16, dim=64):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.conv = GraphConv(dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x, src, dst):
        return self.out(self.conv(self.embed(x), src, dst))


gen = torch.Generator().manual_seed(1)
num_nodes, num_edges = 1000, 200000
x = torch.randn(num_nodes, 16, generator=gen)
src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
y = torch.randn(num_nodes, 1, generator=gen)

torch.manual_seed(0)
model = GNN()
lr = 0.01
for step in range(3):
    loss = nn.functional.mse_loss(model(x, src, dst), y)
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    print(f"step {step} loss {loss.item():.8f}")
