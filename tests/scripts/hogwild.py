"""Hogwild training, after pytorch/examples mnist_hogwild: worker processes update one shared model.

Cause: with 2 processes, the workers read and write the shared parameters without locks, so the
final weights depend on how their steps interleave. Twin: `--processes 1` trains in one worker.
"""

import argparse

import torch
import torch.multiprocessing as mp
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def train(rank, model, steps):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(100 + rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    for _ in range(steps):
        x = torch.randn(64, 32, generator=gen)
        y = torch.randint(0, 10, (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # SOURCE: lock-free updates of shared parameters


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    mp.set_start_method("fork", force=True)
    torch.manual_seed(0)
    model = Net()
    model.share_memory()
    processes = []
    for rank in range(args.processes):
        p = mp.Process(target=train, args=(rank, model, args.steps))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()
    with torch.no_grad():
        test = torch.randn(256, 32, generator=torch.Generator().manual_seed(7))
        print(model(test).sum().item())
