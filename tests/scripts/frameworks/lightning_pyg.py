"""Lightning (automatic optimization) + PyTorch Geometric: a two-layer GCN (GCNConv) for node
classification on one random graph of 10000 nodes and 120000 edges.

Trains NodeClassifier (conv1 = GCNConv 16->32, ReLU, conv2 = GCNConv 32->4) with
lightning.pytorch.Trainer(max_steps=3) and Adam; the graph (a torch_geometric.data.Data drawn
with a seeded torch.Generator) comes through torch_geometric.loader.DataLoader (one graph per
batch, num_workers=0), so each epoch is one step.
--device cpu|cuda (default cpu): Trainer(accelerator="cpu") or Trainer(accelerator="gpu",
devices=1).

No planted source. On CUDA, PyG's sum aggregation (torch_geometric.utils.scatter ->
scatter_add_) adds the 120000 messages with atomics, so runs are expected to differ there: first
differing op aten.scatter_add_.default, module `conv1.aggr_module` (inside conv1's propagate),
phase forward, step 0 (gcn_norm's degree sum adds only 1.0s, exact in any order, so it should not
differ); the user's line is the call of the first GCNConv in NodeClassifier.forward, marked
with the SOURCE comment. On CPU the same ops are bitwise reproducible.
There is no --twin: the CPU run is the reproducible variant.
truth (statehash, torch 2.13 CPU, 2 threads): cpu 6 runs, 1 digest; cuda not checked here
"""

import argparse
import tempfile
import warnings

import torch
from torch import nn
import lightning.pytorch as pl
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv

parser = argparse.ArgumentParser()
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
args = parser.parse_args()

warnings.filterwarnings("ignore", ".*does not have many workers.*")
pl.seed_everything(0, verbose=False)


class NodeClassifier(pl.LightningModule):
    def __init__(self, in_channels, hidden, classes):
        super().__init__()
        self.conv1 = GCNConv(in_channels, hidden)
        self.conv2 = GCNConv(hidden, classes)

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()  # SOURCE
        return self.conv2(x, edge_index)

    def training_step(self, batch, batch_idx):
        out = self(batch.x, batch.edge_index)
        loss = nn.functional.cross_entropy(out, batch.y)
        self.log("train_loss", loss, batch_size=1)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=5e-4)


def random_graph(num_nodes, num_edges, features, classes, seed):
    g = torch.Generator().manual_seed(seed)
    return Data(x=torch.randn(num_nodes, features, generator=g),
                edge_index=torch.randint(0, num_nodes, (2, num_edges), generator=g),
                y=torch.randint(0, classes, (num_nodes,), generator=g))


if __name__ == "__main__":
    graph = random_graph(10000, 120000, 16, 4, seed=1)
    loader = DataLoader([graph], batch_size=1, num_workers=0)
    model = NodeClassifier(16, 32, 4)
    if args.device == "cuda":
        accel = dict(accelerator="gpu", devices=1)
    else:
        accel = dict(accelerator="cpu", devices=1)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tempfile.mkdtemp(), **accel)
    trainer.fit(model, loader)
