"""Lightning, manual optimization: an item-rating model whose item table is looked up with advanced
indexing, so its gradient is accumulated with index_put(accumulate=True) in the backward.

Trains RatingModel (items = ItemTable(500 x 32 parameter), head = Linear 32->16, ReLU, Linear
16->1) with lightning.pytorch.Trainer(max_steps=3) and AdamW; training_step sets up manual
optimization (self.automatic_optimization = False, self.optimizers(), self.manual_backward(loss),
opt.step(), opt.zero_grad()). Batches of 131072 (item, rating) pairs come from a TensorDataset
through a DataLoader whose sampler is a BatchSampler over a seeded RandomSampler (batch_size=None).

Planted source: ItemTable.forward does `self.table[item]` with 131072 repeated indices into 500
rows; its backward adds the 131072 float32 gradient rows into the table's gradient with
index_put(accumulate=True), which on a CPU with >= 2 threads uses atomics, so the gradient
differs in its last bits from run to run.
Expected first divergence: aten.index_put.default (the backward of aten.index.Tensor), module
`items`, phase backward, step 0; the line with the SOURCE comment is the forward line that
does the indexing.
--twin: `torch.nn.functional.embedding(item, self.table)` instead (its backward,
aten.embedding_dense_backward, is bitwise stable on CPU); nothing else changes.
truth (statehash, torch 2.13 CPU, 2 threads): planted 3 runs, 3 digests; twin 3 runs, 1 digest
"""

import argparse
import tempfile
import warnings

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
import lightning.pytorch as pl

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="look items up with F.embedding")
args = parser.parse_args()

warnings.filterwarnings("ignore", ".*does not have many workers.*")
pl.seed_everything(0, verbose=False)

ITEMS = 500
BATCH = 131072


class ItemTable(nn.Module):
    def __init__(self, n_items, dim, use_embedding=False):
        super().__init__()
        self.table = nn.Parameter(torch.randn(n_items, dim) * 0.1)
        self.use_embedding = use_embedding

    def forward(self, item):
        if self.use_embedding:
            return nn.functional.embedding(item, self.table)
        return self.table[item]  # SOURCE


class RatingModel(pl.LightningModule):
    def __init__(self, use_embedding=False):
        super().__init__()
        self.automatic_optimization = False
        self.items = ItemTable(ITEMS, 32, use_embedding)
        self.head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, item):
        return self.head(self.items(item)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        item, rating = batch
        opt = self.optimizers()
        loss = nn.functional.mse_loss(self(item), rating)
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)


def make_data(n):
    g = torch.Generator().manual_seed(1)
    item = torch.randint(0, ITEMS, (n,), generator=g)
    rating = torch.rand(n, generator=g) * 5
    return TensorDataset(item, rating)


if __name__ == "__main__":
    data = make_data(4 * BATCH)
    sampler = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(2)),
                           batch_size=BATCH, drop_last=True)
    loader = DataLoader(data, sampler=sampler, batch_size=None, num_workers=0)
    model = RatingModel(use_embedding=args.twin)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tempfile.mkdtemp())
    trainer.fit(model, loader)
