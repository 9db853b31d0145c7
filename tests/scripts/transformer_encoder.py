"""Sequence classifier on nn.TransformerEncoder, trained with AdamW (no planted cause).

Expected deterministic: 4 TransformerEncoderLayer (d_model=64, nhead=4, batch_first), mean-pooled
into a Linear head, 3 steps on synthetic data; dropout is seeded by torch.manual_seed. No twin.
"""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, in_dim=16, d_model=64, num_classes=5):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=4)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):
        return self.head(self.encoder(self.proj(x)).mean(dim=1))


torch.manual_seed(0)
model = Classifier()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
gen = torch.Generator().manual_seed(1)
model.train()
for step in range(3):
    x = torch.randn(16, 20, 16, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
