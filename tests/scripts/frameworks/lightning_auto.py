"""Lightning, automatic optimization: a point-cloud regressor whose pooling submodule sums the
point features of each cluster with index_put_(accumulate=True).

Trains PointCloudRegressor (encoder Linear 16->32 + ReLU, pool = ClusterSum, head Linear 32->1)
with lightning.pytorch.Trainer(max_steps=3) and Adam; training_step returns the loss. Each batch
is one scene of 65536 points in 100 clusters (a Dataset of scenes, DataLoader batch_size=None);
the model predicts one value per cluster.
(ReLU, not Tanh: on a loaded CPU, Tanh's vectorised and scalar paths have once split at
another element between two runs, a difference of its own upstream of the planted one.)

Planted source: ClusterSum.forward adds 65536 float32 rows into 100 cluster rows with
`out.index_put_((cluster,), rows, accumulate=True)`; on a CPU with >= 2 threads PyTorch adds such
rows with atomics, so the sums differ in their last bits from run to run.
Expected first divergence: aten.index_put_.default, module `pool` (the LightningModule's
submodule), phase forward, step 0, at the line with the SOURCE comment.
--twin: the same sum with `out.index_add_(0, cluster, rows)` (bitwise stable on CPU); nothing
else changes.
truth (statehash, torch 2.13 CPU, 2 threads): planted 3 runs, 3 digests; twin 3 runs, 1 digest;
with ReLU (2026-12-07): planted 2 runs, 2 digests; twin 2 runs, 1 digest
"""

import argparse
import tempfile
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
import lightning.pytorch as pl

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="deterministic cluster sum (index_add_)")
args = parser.parse_args()

warnings.filterwarnings("ignore", ".*does not have many workers.*")
pl.seed_everything(0, verbose=False)

CLUSTERS = 100
POINTS = 65536


class ClusterSum(nn.Module):
    """Sums the rows of each cluster: (points, features) -> (clusters, features)."""

    def __init__(self, clusters, deterministic=False):
        super().__init__()
        self.clusters = clusters
        self.deterministic = deterministic

    def forward(self, rows, cluster):
        out = rows.new_zeros(self.clusters, rows.shape[1])
        if self.deterministic:
            return out.index_add_(0, cluster, rows)
        out.index_put_((cluster,), rows, accumulate=True)  # SOURCE
        return out


class PointCloudRegressor(pl.LightningModule):
    def __init__(self, deterministic_pool=False):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.pool = ClusterSum(CLUSTERS, deterministic_pool)
        self.head = nn.Linear(32, 1)
        self.register_buffer("cluster_target", torch.randn(CLUSTERS, 1))

    def forward(self, points, cluster):
        return self.head(self.pool(self.encoder(points), cluster) / 100.0)

    def training_step(self, batch, batch_idx):
        points, cluster = batch
        loss = nn.functional.mse_loss(self(points, cluster), self.cluster_target)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Scenes(Dataset):
    """Random scenes: each is (points (POINTS, 16), cluster id of each point)."""

    def __init__(self, n_scenes):
        g = torch.Generator().manual_seed(1)
        self.scenes = [(torch.randn(POINTS, 16, generator=g),
                        torch.randint(0, CLUSTERS, (POINTS,), generator=g))
                       for _ in range(n_scenes)]

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        return self.scenes[i]


if __name__ == "__main__":
    loader = DataLoader(Scenes(4), batch_size=None, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(2))
    model = PointCloudRegressor(deterministic_pool=args.twin)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tempfile.mkdtemp())
    trainer.fit(model, loader)
