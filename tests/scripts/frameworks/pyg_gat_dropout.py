"""PyTorch Geometric, plain training loop: a two-layer GAT (torch_geometric.nn.GATConv with
attention dropout 0.3) for node classification on a random graph.

Trains GAT (conv1 = GATConv 16->8 x 4 heads, ELU, conv2 = GATConv 32->4, 1 head) for 3 Adam steps
on a random graph of 1000 nodes and 5000 edges drawn with a seeded torch.Generator.

Planted source: the model is built after torch.manual_seed(0), but then the script calls
torch.seed() "to get fresh randomness for training", which re-seeds the global generator from OS
entropy. The first op that draws from it is the dropout on the attention coefficients inside
GATConv.message (PyG library code, reached through PyG's generated propagate file in the temp
folder) of conv1 in step 0; nothing random runs between the re-seed and that draw (no
nn.Dropout before conv1, the graph comes from its own generator).
Expected first divergence: the attention dropout's random draw, aten.bernoulli_.float (from
F.dropout at torch_geometric/nn/conv/gat_conv.py, GATConv.message), module `conv1`, phase
forward, step 0; the user's line is the call of the first GAT layer in GAT.forward, marked
with the SOURCE comment.
--twin: torch.manual_seed(1) instead of torch.seed(); nothing else changes.
truth (statehash, torch 2.13 CPU, 2 threads): planted 3 runs, 3 digests; twin 3 runs, 1 digest
"""

import argparse

import torch
from torch import nn
from torch_geometric.nn import GATConv

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="re-seed with torch.manual_seed(1)")
args = parser.parse_args()


class GAT(nn.Module):
    def __init__(self, in_channels, hidden, heads, classes):
        super().__init__()
        self.conv1 = GATConv(in_channels, hidden, heads=heads, dropout=0.3)
        self.conv2 = GATConv(hidden * heads, classes, heads=1, dropout=0.3)

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index)  # SOURCE
        x = nn.functional.elu(x)
        return self.conv2(x, edge_index)


def random_graph(num_nodes, num_edges, features, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, features, generator=g)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    y = torch.randint(0, classes, (num_nodes,), generator=g)
    return x, edge_index, y


torch.manual_seed(0)
model = GAT(16, 8, 4, 4)
opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-4)
x, edge_index, y = random_graph(1000, 5000, 16, 4, seed=1)

if args.twin:
    torch.manual_seed(1)
else:
    torch.seed()  # fresh randomness for training

model.train()
for step in range(3):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x, edge_index), y)
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.4f}")
