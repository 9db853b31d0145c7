"""A small graph neural network whose runs differ on a CPU, although every seed is set.

Each layer sums the messages arriving at every node with ``index_put_(..., accumulate=True)``.
On a CPU with two or more threads and float32 data of 32768 elements or more, PyTorch adds the
rows with atomic additions, whose order changes from run to run; floating-point addition is not
associative, so the sums differ in their last bits, and Adam turns those bits into visibly
different weights within a few steps.

    bisector find examples/gnn_scatter.py

names that ``index_put_`` in ``layers.0.aggregate`` (forward, step 0). The fix is a
deterministic aggregation: ``torch.use_deterministic_algorithms(True)`` (which makes index_put_
sort its indices first) or one thread (``torch.set_num_threads(1)``).
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--nodes", type=int, default=2000)
parser.add_argument("--edges", type=int, default=60000)
args = parser.parse_args()

torch.manual_seed(0)


class SumAggregation(nn.Module):
    """Sums the message of every edge into its destination node."""

    def forward(self, messages, destination, nodes):
        out = messages.new_zeros(nodes, messages.shape[1])
        out.index_put_((destination,), messages, accumulate=True)
        return out


class GraphLayer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.message = nn.Linear(width, width)
        self.aggregate = SumAggregation()
        self.update = nn.Linear(2 * width, width)

    def forward(self, h, source, destination):
        messages = self.message(h)[source]
        incoming = self.aggregate(messages, destination, h.shape[0])
        return torch.relu(self.update(torch.cat([h, incoming], dim=1)))


class GNN(nn.Module):
    def __init__(self, width=64, depth=2):
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.layers = nn.ModuleList(GraphLayer(width) for _ in range(depth))
        self.readout = nn.Linear(width, 1)

    def forward(self, x, source, destination):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, source, destination)
        return self.readout(h)


generator = torch.Generator().manual_seed(1)
features = torch.randn(args.nodes, 16, generator=generator)
source = torch.randint(0, args.nodes, (args.edges,), generator=generator)
destination = torch.randint(0, args.nodes, (args.edges,), generator=generator)
target = torch.randn(args.nodes, 1, generator=generator)

model = GNN()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(args.steps):
    loss = nn.functional.mse_loss(model(features, source, destination), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.6f}")
print("weight checksum:", sum(float(p.detach().double().sum()) for p in model.parameters()))
