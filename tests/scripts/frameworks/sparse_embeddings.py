"""A recommender as DLRM-style code writes it: sparse embedding tables (nn.EmbeddingBag and
nn.Embedding with sparse=True) trained by SparseAdam, dense MLPs by Adam, pairwise feature
interactions through bmm.

What it trains: 200,000 rows a batch (--rows); each row a bag of 2 items (5,000 items,
summed), a user (50 users) and 8 dense features; the user embeddings are looked up once per user of
the batch (torch.unique) and spread to that user's rows; the top MLP predicts a click (BCE).
Two optimizers step each iteration, SparseAdam then Adam: optimizer steps 0 and 1 are the
first iteration's.

Planted source: the per-user embeddings are spread to the rows as `per_user[row_user]`; the
backward of that gather adds 200,000 gradient rows into 50 with index_put(accumulate=True),
atomic adds on a CPU with >= 2 threads: the users' gradient differs in its last bits from run
to run. It reaches the weights through the embedding's *sparse* gradient, which SparseAdam
coalesces and reads through `_values()` and `_indices()`.
Expected first divergence: aten.index_put.default, module DLRM, phase backward, step 0, at the
line marked SOURCE. (Before sparse tensors were followed, bisector named a `leaf.tensor` read
in `opt_sparse.step()` as the first cause, an input, and called the gather's output dead.)
--twin: F.embedding instead (its backward is bitwise stable on a CPU).
Truth (statehash.py, torch 2.13 CPU, 2 threads): planted 2 runs -> 2 digests; twin 2 runs ->
1 digest. Under load the race can hide (the threads of the gather's backward then run one
after the other): with 40,000 rows into 300 users it did not show in one pair of a CI run; with
these sizes, 4 of 4 pairs run two at a time and 3 of 3 triples three at a time all differed.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="spread users with F.embedding")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--rows", type=int, default=200000, help="rows a batch")
args = parser.parse_args()

ITEMS, USERS, DIM = 5000, 50, 16


class DLRM(nn.Module):
    def __init__(self):
        super().__init__()
        self.items = nn.EmbeddingBag(ITEMS, DIM, mode="sum", sparse=True)
        self.users = nn.Embedding(USERS, DIM, sparse=True)
        self.bottom = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, DIM))
        self.top = nn.Sequential(nn.Linear(3 * DIM + 3, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, dense, item_ids, offsets, user_ids):
        x = self.bottom(dense)
        e_items = self.items(item_ids, offsets)
        users, row_user = torch.unique(user_ids, return_inverse=True)
        per_user = self.users(users)
        if args.twin:
            e_users = nn.functional.embedding(row_user, per_user)
        else:
            e_users = per_user[row_user]  # SOURCE
        features = torch.stack([x, e_items, e_users], 1)
        pairs = torch.bmm(features, features.transpose(1, 2))
        i, j = torch.triu_indices(3, 3, 1)
        upper = pairs.flatten(1).index_select(1, i * 3 + j)
        return self.top(torch.cat([x, e_items, e_users, upper], 1)).squeeze(1)


torch.manual_seed(0)
model = DLRM()
opt_sparse = torch.optim.SparseAdam([*model.items.parameters(), *model.users.parameters()], lr=1e-2)
opt_dense = torch.optim.Adam([*model.bottom.parameters(), *model.top.parameters()], lr=1e-3)
data = torch.Generator().manual_seed(1)
rows = args.rows
for step in range(args.steps):
    dense = torch.randn(rows, 8, generator=data)
    item_ids = torch.randint(0, ITEMS, (rows * 2,), generator=data)
    offsets = torch.arange(0, rows * 2, 2)
    user_ids = torch.randint(0, USERS, (rows,), generator=data)
    clicked = torch.rand(rows, generator=data)
    logits = model(dense, item_ids, offsets, user_ids)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, clicked)
    opt_sparse.zero_grad()
    opt_dense.zero_grad()
    loss.backward()
    opt_sparse.step()
    opt_dense.step()
    print(f"step {step} loss {loss.item():.6f}")
