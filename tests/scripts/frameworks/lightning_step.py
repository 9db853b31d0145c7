"""Lightning, automatic optimization, a training_step that never calls the module itself: a
table regressor whose LightningModule holds its item table as a parameter of its own and uses
it and its head directly in training_step (`self.head(self.table[ids])`), as much Lightning code
does. Lightning calls training_step, not `__call__`, so no forward hook sees the module run.

Trains TableRegressor (table = 500 x 32 parameter, head = Linear 32->64, GELU, Linear 64->1)
with lightning.pytorch.Trainer(max_steps=--steps, 3) and Adam. Each batch of 50,000 (id, target) pairs
is one item of a map-style dataset (DataLoader with batch_size=None). on_before_optimizer_step
computes the gradients' norm, after the backward.

Planted source: `self.table[ids]` with 50,000 repeated indices into 500 rows; its backward adds
the gradient rows into the table's gradient with index_put(accumulate=True), atomic adds on a
CPU with >= 2 threads: the gradient differs in its last bits from run to run.
Expected first divergence: aten.index_put.default, module TableRegressor (the module whose
method runs it), phase backward, step 0, at the line with the SOURCE comment.
--twin: `F.embedding(ids, self.table)` instead (its backward is bitwise stable on a CPU).
truth (statehash, torch 2.13 CPU, 2 threads): planted 2 runs, 2 digests; twin 2 runs, 1 digest
"""

import argparse
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="look items up with F.embedding")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

warnings.filterwarnings("ignore", ".*does not have many workers.*")
ITEMS, BATCH = 500, 50000


class Batches(Dataset):
    """Whole batches, one per item: ids and targets drawn from a seeded generator."""

    def __init__(self, count: int):
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, ITEMS, (count, BATCH), generator=g)
        self.targets = torch.randn(count, BATCH, generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], self.targets[i]


class TableRegressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(ITEMS, 32) * 0.1)
        self.head = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 1))
        self.grad_norm = 0.0

    def training_step(self, batch, batch_idx):
        ids, target = batch
        if args.twin:
            vectors = nn.functional.embedding(ids, self.table)
        else:
            vectors = self.table[ids]  # its backward adds rows: # SOURCE
        prediction = self.head(vectors).squeeze(-1)
        return nn.functional.mse_loss(prediction, target)

    def on_before_optimizer_step(self, optimizer):
        norms = [p.grad.norm() for p in self.parameters() if p.grad is not None]
        self.grad_norm = float(torch.stack(norms).norm())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


pl.seed_everything(0, verbose=False)
trainer = pl.Trainer(
    max_steps=args.steps,
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(TableRegressor(), DataLoader(Batches(args.steps), batch_size=None))
