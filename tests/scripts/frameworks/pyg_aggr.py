"""PyTorch Geometric, plain training loop: a two-layer message-passing GNN (the user's own
MessagePassing subclass) with a custom sum Aggregation, node classification on a random graph.

Trains Net (conv1 = MyConv 16->32, ReLU, conv2 = MyConv 32->4) for 3 Adam steps on a
random graph of 8000 nodes and 80000 edges drawn with a seeded torch.Generator.

Planted source: IndexPutSum, a torch_geometric.nn.aggr.Aggregation subclass passed as aggr= to
each conv, sums the 80000 x 32 float32 messages into their target nodes with
`out.index_put_((index,), x, accumulate=True)`; on a CPU with >= 2 threads this adds with
atomics, so the sums differ in their last bits from run to run.
Expected first divergence: aten.index_put_.default, module `conv1.aggr_module` (MessagePassing
keeps the aggregation there), phase forward, step 0, at the line with the SOURCE comment
(called from PyG's generated propagate through conv1).
--twin: the built-in aggr="add" (PyG's scatter, bitwise stable on CPU); nothing else changes.
truth (statehash, torch 2.13 CPU, 2 threads): planted 3 runs, 3 digests; twin 3 runs, 1 digest
"""

import argparse

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import Aggregation

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help='use the built-in aggr="add"')
args = parser.parse_args()

torch.manual_seed(0)


class IndexPutSum(Aggregation):
    """Sum aggregation written with index_put_(accumulate=True)."""

    def forward(self, x, index=None, ptr=None, dim_size=None, dim=-2):
        self.assert_index_present(index)
        self.assert_two_dimensional_input(x, dim)
        out = x.new_zeros(dim_size, x.shape[1])
        out.index_put_((index,), x, accumulate=True)  # SOURCE
        return out


class MyConv(MessagePassing):
    """h_i = W_root x_i + sum_j W_msg [x_j, x_j - x_i]."""

    def __init__(self, in_channels, out_channels, aggr):
        super().__init__(aggr=aggr)
        self.lin_msg = nn.Linear(2 * in_channels, out_channels)
        self.lin_root = nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x, edge_index):
        return self.lin_root(x) + self.propagate(edge_index, x=x)

    def message(self, x_i, x_j):
        return self.lin_msg(torch.cat([x_j, x_j - x_i], dim=-1))


def make_aggr():
    return "add" if args.twin else IndexPutSum()


class Net(nn.Module):
    def __init__(self, in_channels, hidden, classes):
        super().__init__()
        self.conv1 = MyConv(in_channels, hidden, make_aggr())
        self.conv2 = MyConv(hidden, classes, make_aggr())

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()
        return self.conv2(x, edge_index)


def random_graph(num_nodes, num_edges, features, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, features, generator=g)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    y = torch.randint(0, classes, (num_nodes,), generator=g)
    return x, edge_index, y


x, edge_index, y = random_graph(8000, 80000, 16, 4, seed=1)
model = Net(16, 32, 4)
opt = torch.optim.Adam(model.parameters(), lr=0.01)
for step in range(3):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x, edge_index), y)
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.4f}")
