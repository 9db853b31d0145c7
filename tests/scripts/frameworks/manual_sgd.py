"""Two-layer graph network trained with hand-written SGD (no optimizer object).

What it trains: node regression on a random graph (2000 nodes, 64000 edges, 16 input features).
`conv1` and `conv2` (GraphConv) each compute a message per edge from the source node
(Linear on the gathered source rows) and add the messages into the destination nodes;
`readout` (Linear 32 -> 1) predicts a value per node. The loop updates the weights by hand:
`with torch.no_grad(): p -= lr * p.grad; p.grad = None`, 3 steps.

Planted source: `conv1` (GraphConv.forward) aggregates the 64000 x 32 float32 messages with
`agg.index_put_((dst,), msg, accumulate=True)`; on a CPU with >= 2 threads those rows are added
with atomics, so the aggregated node vectors differ in their last bits from run to run.
Expected first differing op: aten.index_put_.default, module `conv1`, phase forward, step 0,
line marked `# SOURCE` (conv2 runs the same line later).
`--twin`: the aggregation uses `scatter_add_` (bitwise reproducible on this CPU) instead.
Truth (statehash.py, 2 CPU threads): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="deterministic aggregation (scatter_add_)")
args = parser.parse_args()

torch.manual_seed(0)

N_NODES, N_EDGES = 2000, 64000


class GraphConv(nn.Module):
    def __init__(self, d_in, d_out, deterministic=False):
        super().__init__()
        self.message = nn.Linear(d_in, d_out)
        self.update = nn.Linear(d_in + d_out, d_out)
        self.deterministic = deterministic

    def forward(self, h, src, dst):
        msg = torch.relu(self.message(h.index_select(0, src)))
        agg = h.new_zeros(h.shape[0], msg.shape[1])
        if self.deterministic:
            agg.scatter_add_(0, dst.unsqueeze(1).expand_as(msg), msg)
        else:
            agg.index_put_((dst,), msg, accumulate=True)  # SOURCE
        agg = agg / 32.0
        return torch.relu(self.update(torch.cat([h, agg], dim=1)))


class GNN(nn.Module):
    def __init__(self, deterministic):
        super().__init__()
        self.conv1 = GraphConv(16, 32, deterministic)
        self.conv2 = GraphConv(32, 32, deterministic)
        self.readout = nn.Linear(32, 1)

    def forward(self, x, src, dst):
        h = self.conv1(x, src, dst)
        h = self.conv2(h, src, dst)
        return self.readout(h).squeeze(-1)


g = torch.Generator().manual_seed(7)
x = torch.randn(N_NODES, 16, generator=g)
src = torch.randint(0, N_NODES, (N_EDGES,), generator=g)
dst = torch.randint(0, N_NODES, (N_EDGES,), generator=g)
y = torch.randn(N_NODES, generator=g)

model = GNN(deterministic=args.twin)
lr = 0.05
for step in range(3):
    pred = model(x, src, dst)
    loss = nn.functional.mse_loss(pred, y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
            p.grad = None
    print(f"step {step} loss {loss.item():.6f}")
