"""Small CNN on synthetic 1x16x16 images from a DataLoader with 2 workers and numpy augmentation.

What it trains: an nn.Sequential of `features` (Conv2d 1->8, ReLU, MaxPool, Conv2d 8->16, ReLU,
global average pool) and `classifier` (Linear 16 -> 4) on 512 seeded random images of 4 classes;
the Dataset's __getitem__ augments each image with numpy (random horizontal flip, random shift
with np.roll, Gaussian noise from np.random). DataLoader(batch_size=64, shuffle=True, num_workers=2,
worker_init_fn=..., generator seeded), SGD with momentum, 3 steps.

Planted source: worker_init_fn seeds numpy in each worker with
`np.random.seed(os.getpid() % 2**32)`, so the augmentations, and so the batches, differ from
run to run (the numbers are drawn in the worker processes, outside the recorded main process).
Expected first difference: the batch itself, a tensor that no recorded op made (bisector: kind
input, leaf.tensor), first read by aten.convolution.default of module `features.0` in
`out = model(x)` (line marked `# SOURCE`; the model has no forward of the user's own, so that is
the innermost user line), phase forward, step 0.
`--twin`: worker_init_fn does `np.random.seed(torch.initial_seed() % 2**32)` (torch's per-worker
seed, derived from the seeded DataLoader generator), the standard correct pattern.
Truth (statehash.py): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest.
"""

import argparse
import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class NoisyShapes(Dataset):
    """Seeded random 16x16 images; each class has its own mean pattern."""

    def __init__(self, n=512, n_classes=4):
        g = torch.Generator().manual_seed(0)
        self.patterns = torch.randn(n_classes, 16, 16, generator=g)
        self.labels = torch.randint(0, n_classes, (n,), generator=g)
        self.base = (self.patterns[self.labels] + 0.5 * torch.randn(n, 16, 16, generator=g)).numpy()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.base[i].copy()
        if np.random.rand() < 0.5:
            img = img[:, ::-1]
        img = np.roll(img, np.random.randint(-2, 3), axis=0)
        img = img + np.random.normal(0.0, 0.1, img.shape)
        return torch.from_numpy(img.astype(np.float32)).unsqueeze(0), self.labels[i]


def seed_worker_from_pid(worker_id):
    np.random.seed(os.getpid() % 2**32)


def seed_worker(worker_id):
    np.random.seed(torch.initial_seed() % 2**32)


def make_model():
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ),
        classifier=nn.Linear(16, 4),
    ))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--twin", action="store_true", help="seed numpy from torch's worker seed")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(
        NoisyShapes(), batch_size=64, shuffle=True, num_workers=2,
        worker_init_fn=seed_worker if args.twin else seed_worker_from_pid,
        generator=torch.Generator().manual_seed(42),
    )
    for step, (x, y) in enumerate(loader):
        out = model(x)  # SOURCE
        loss = nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}")
        if step == 2:
            break
