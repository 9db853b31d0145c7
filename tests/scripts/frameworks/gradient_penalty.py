"""A critic over a graph trained with a gradient penalty (WGAN-GP style): the gradient of the
critic's score with respect to its input node features is taken with
torch.autograd.grad(create_graph=True) inside the step, and the loss backpropagates through
that gradient (a double backward), before loss.backward() and Adam.

What it trains: `Critic` on a fixed random graph (400 nodes, 60,000 edges, 16 features):
`lin` (Linear 16 -> 16, LeakyReLU), a message per edge from its source node, summed into its
destination node (index_add), `score` (Linear 16 -> 1, mean). Each step scores real, fake
and mixed node features; 3 steps.

Planted source: the messages are gathered as `h[src]`; the backward of that gather, run by
autograd.grad for the penalty, adds 60,000 rows into 400 with index_put(accumulate=True),
atomic adds on a CPU with >= 2 threads: the penalty's gradient differs in its last bits.
Expected first divergence: aten.index_put.default, module Critic, phase backward, step 0, at
the line marked SOURCE.
--twin: torch.index_select instead (its backward, index_add, is bitwise stable on a CPU).
Truth (statehash.py, torch 2.13 CPU, 2 threads): planted 2 runs -> 2 digests; twin 2 runs ->
1 digest; the same with LeakyReLU (2026-12-07; it was tanh: on a loaded CPU, tanh's vectorised
and scalar paths have once split at another element between runs, upstream of the plant).
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="gather messages with index_select")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

NODES, EDGES, FEATURES = 400, 60000, 16


class Critic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)
        self.score = nn.Linear(FEATURES, 1)

    def forward(self, x, src, dst):
        h = nn.functional.leaky_relu(self.lin(x), 0.2)
        if args.twin:
            messages = torch.index_select(h, 0, src)
        else:
            messages = h[src]  # SOURCE
        summed = torch.zeros_like(h).index_add(0, dst, messages)
        return self.score(torch.tanh(summed)).mean()


torch.manual_seed(0)
critic = Critic()
optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(2)
src = torch.randint(0, NODES, (EDGES,), generator=g)
dst = torch.randint(0, NODES, (EDGES,), generator=g)
for step in range(args.steps):
    real = torch.randn(NODES, FEATURES, generator=g)
    fake = torch.randn(NODES, FEATURES, generator=g) * 0.5
    alpha = torch.rand(NODES, 1, generator=g)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed, src, dst), mixed, create_graph=True)
    penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
    loss = critic(fake, src, dst) - critic(real, src, dst) + 10 * penalty
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.6f}")
