"""Document-level regression trained with torch.optim.LBFGS and a closure.

What it trains: 64000 token feature rows (16 values each) belong to 500 documents; `encoder.embed`
(Linear 16 -> 32, ReLU) maps each token, `encoder.pool` sums the token vectors of each document,
`head` (Linear 32 -> 1) predicts a score per document. LBFGS (max_iter=4, lr=0.5), 3 calls of
`optimizer.step(closure)`, the closure doing zero_grad / forward / MSE loss / backward.
(ReLU, not Tanh: on a loaded CPU, Tanh's vectorised and scalar paths have once split at
another element between two runs, a difference of its own upstream of the planted one.)

Planted source: `encoder.pool` (DocumentPool.forward) sums the token rows with
`out.index_put_((doc,), rows, accumulate=True)` on 64000 x 32 float32 rows; on a CPU with >= 2
threads the rows are added with atomics, so the per-document sums differ in their last bits from
run to run.
Expected first differing op: aten.index_put_.default, module `encoder.pool`, phase forward,
step 0 (first closure call), line marked `# SOURCE`.
`--twin`: the same sum with `index_add_` (bitwise reproducible on this CPU); nothing else changes.
Truth (statehash.py, 2 CPU threads): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest;
with ReLU (2026-12-07): planted 2 runs -> 2 digests, twin 2 runs -> 1 digest.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="deterministic document sum (index_add_)")
args = parser.parse_args()

torch.manual_seed(0)

N_TOKENS, N_DOCS = 64000, 500


class DocumentPool(nn.Module):
    """Sum of the token vectors of each document."""

    def __init__(self, n_docs, deterministic=False):
        super().__init__()
        self.n_docs = n_docs
        self.deterministic = deterministic

    def forward(self, rows, doc):
        out = rows.new_zeros(self.n_docs, rows.shape[1])
        if self.deterministic:
            return out.index_add_(0, doc, rows)
        return out.index_put_((doc,), rows, accumulate=True)  # SOURCE


class Encoder(nn.Module):
    def __init__(self, deterministic):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.pool = DocumentPool(N_DOCS, deterministic)

    def forward(self, tokens, doc):
        return self.pool(self.embed(tokens), doc)


class DocRegressor(nn.Module):
    def __init__(self, deterministic):
        super().__init__()
        self.encoder = Encoder(deterministic)
        self.head = nn.Linear(32, 1)

    def forward(self, tokens, doc):
        return self.head(self.encoder(tokens, doc) / 128.0).squeeze(-1)


gen = torch.Generator().manual_seed(1234)
tokens = torch.randn(N_TOKENS, 16, generator=gen)
doc = torch.randint(0, N_DOCS, (N_TOKENS,), generator=gen)
target = torch.randn(N_DOCS, generator=gen)

model = DocRegressor(deterministic=args.twin)
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)


def closure():
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(tokens, doc), target)
    loss.backward()
    return loss


for step in range(3):
    loss = optimizer.step(closure)
    print(f"step {step} loss {loss.item():.6f}")
