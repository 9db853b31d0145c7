"""A sweep helper jitters the dropout rate of a small classifier per run, drawing it from
Python's `random`, which the script never seeds (`--seed-python` seeds it: the twin). With
`--rate-from clock` the rate comes from the clock instead, which no seed fixes."""

import argparse
import random
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def sample_config(seed_python: bool, rate_from: str) -> dict:
    if seed_python:
        random.seed(1234)
    if rate_from == "clock":
        dropout = 0.05 + (time.perf_counter_ns() % 997) / 4000
    else:
        dropout = round(random.uniform(0.05, 0.3), 3)  # DRAW
    return {"hidden": 64, "dropout": dropout, "lr": 1e-3}


class Classifier(nn.Module):
    def __init__(self, features: int, hidden: int, dropout: float, classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),  # BUILT
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.body(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed-python", action="store_true")
    parser.add_argument("--rate-from", choices=["random", "clock"], default="random")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = sample_config(args.seed_python, args.rate_from)
    data = TensorDataset(torch.randn(256, 20), torch.randint(0, 4, (256,)))
    loader = DataLoader(data, batch_size=32, shuffle=True)
    model = Classifier(20, config["hidden"], config["dropout"], 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for step, (x, y) in enumerate(loader):
        if step == args.steps:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
