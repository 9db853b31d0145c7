"""Embeddings looked up by index and trained on random batches drawn with explicit generators:
the lookup's backward adds rows with atomics; the draws use the `.generator` overloads."""

import torch
from torch import nn


class Lookup(nn.Module):
    def __init__(self, rows: int, width: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(rows, width))

    def forward(self, index):
        return self.table[index]  # GATHER


def main():
    generator = torch.Generator().manual_seed(0)
    model = Lookup(50, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        order = torch.randperm(50, generator=generator)
        index = torch.cat([order, order[:25]])
        target = torch.randn(75, 8, generator=generator)
        loss = (model(index) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
