"""bisector inside a Lightning training run, with a callback: step digests of every run, and
every op of a window of steps.

    python examples/lightning_callback.py --name a
    python examples/lightning_callback.py --name b
    bisector diff a.digests b.digests   # the first step whose values differ, and which
    bisector diff a.trace b.trace       # the first op that differs in the recorded window

The model pools point features per cluster with `index_put_(accumulate=True)`, which a CPU with
several threads adds in a different order on each run: the two runs differ from step 0, and the
trace names that op in module `pool`. `--twin` pools with `index_add_` (the same sums, in a fixed
order): the runs are bitwise identical.
"""

import argparse
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bisector.integrations.lightning import BisectorCallback

CLUSTERS, POINTS = 100, 65536


class ClusterSum(nn.Module):
    def __init__(self, clusters: int, ordered: bool):
        super().__init__()
        self.clusters, self.ordered = clusters, ordered

    def forward(self, rows, cluster):
        out = rows.new_zeros(self.clusters, rows.shape[1])
        if self.ordered:
            return out.index_add_(0, cluster, rows)
        return out.index_put_((cluster,), rows, accumulate=True)


class Regressor(pl.LightningModule):
    def __init__(self, ordered: bool):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
        self.pool = ClusterSum(CLUSTERS, ordered)
        self.head = nn.Linear(32, 1)
        self.register_buffer("target", torch.randn(CLUSTERS, 1))

    def training_step(self, batch, batch_idx):
        points, cluster = batch
        prediction = self.head(self.pool(self.encoder(points), cluster) / 100.0)
        return nn.functional.mse_loss(prediction, self.target)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Scenes(Dataset):
    def __init__(self, count: int):
        g = torch.Generator().manual_seed(1)
        self.items = [
            (
                torch.randn(POINTS, 16, generator=g),
                torch.randint(0, CLUSTERS, (POINTS,), generator=g),
            )
            for _ in range(count)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="a", help="files written: NAME.digests, NAME.trace")
    parser.add_argument("--twin", action="store_true", help="pool in a fixed order (index_add_)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pl.seed_everything(0, verbose=False)
    loader = DataLoader(
        Scenes(4), batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(2)
    )
    callback = BisectorCallback(
        f"{args.name}.digests", record=f"{args.name}.trace", record_from=0, record_steps=1
    )
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(),
        callbacks=[callback],
    )
    trainer.fit(Regressor(ordered=args.twin), loader)


if __name__ == "__main__":
    main()
