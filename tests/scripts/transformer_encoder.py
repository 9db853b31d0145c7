"""Sequence classifier on nn.TransformerEncoder, trained with AdamW (no planted cause).

Expected deterministic: 4 TransformerEncoderLayer (d_model=64, nhead=4, batch_first) cloned by
nn.TransformerEncoder, a Linear head on the mean over tokens, 3 steps on random data; every
generator seeded. Recording it once crashed bisector at the end of the recording (a parameter
read as a leaf while cloned still required grad inside the dispatch handler). No twin.
"""

import torch
from torch import nn

torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
model = nn.TransformerEncoder(layer, num_layers=4)
head = nn.Linear(64, 10)
optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
for step in range(3):
    x = torch.randn(8, 16, 64)
    y = torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(head(model(x).mean(1)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
