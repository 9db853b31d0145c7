"""Deterministic, with a DataLoader of two worker processes and seeded shuffling."""

import torch
from torch.utils.data import DataLoader, Dataset

from _common import MLP


class Numbers(Dataset):
    def __len__(self):
        return 256

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.randn(16, generator=g), torch.randn(1, generator=g)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(Numbers(), batch_size=32, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(3))
    for x, y in loader:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
