"""Batched inference (no optimizer) of a point-cloud voxel encoder; the Dataset normalises samples.

Cause: the encoder pools each scan's 200k point features into voxels with index_put_(accumulate=
True) on float32: CPU atomic adds with >= 2 threads, so sums depend on thread timing (scans are
pooled one at a time: a batched scatter into per-scan rows would give each thread its own rows).
Twin: `--deterministic` calls torch.use_deterministic_algorithms(True).
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--deterministic", action="store_true")
args = parser.parse_args()
if args.deterministic:
    torch.use_deterministic_algorithms(True)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


class PointClouds(Dataset):
    def __init__(self, n, transform, points=200000):
        self.n, self.transform, self.points = n, transform, points

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        n = self.points + 1000 * index  # scans have different numbers of points
        cloud = torch.rand(n, 3, generator=g) * torch.tensor([40.0, 40.0, 4.0])
        return self.transform(cloud)


class VoxelEncoder(nn.Module):
    def __init__(self, grid=16, channels=64):
        super().__init__()
        self.grid = grid
        self.point_net = nn.Sequential(nn.Linear(3, channels), nn.ReLU())
        self.head = nn.Linear(channels, 1)

    def forward(self, cloud):
        feats = self.point_net(cloud)
        cell = ((cloud[:, :2] + 2) / 4 * self.grid).long().clamp(0, self.grid - 1)
        idx = cell[:, 0] * self.grid + cell[:, 1]
        voxels = feats.new_zeros(self.grid**2, feats.shape[1])
        voxels.index_put_((idx,), feats, accumulate=True)  # SOURCE
        return self.head(voxels.relu()).mean()


torch.manual_seed(0)
model = VoxelEncoder().eval()
dataset = PointClouds(4, Normalize([20.0, 20.0, 2.0], [11.5, 11.5, 1.15]))
loader = DataLoader(dataset, batch_size=4, num_workers=0, collate_fn=list)  # variable sizes
total = torch.zeros(())  # sum of the scene scores
with torch.no_grad():
    for clouds in loader:
        for cloud in clouds:
            score = model(cloud)
            print(f"scene score {score.item()}")
            total += score
print(total.item())
