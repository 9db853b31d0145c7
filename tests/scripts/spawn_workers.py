"""Training in processes started with torch.multiprocessing.spawn (a fresh interpreter each, so
nothing of the recorder runs there): the parent only builds the model and reads it back.

Each worker trains deterministically on its own copy; bisector cannot see inside spawned
processes, so it must name them and not call the runs reproducible.
"""

import torch
import torch.multiprocessing as mp
from torch import nn


def train(rank, state, queue):
    torch.manual_seed(rank)
    model = nn.Linear(8, 1)
    model.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    queue.put({k: v.tolist() for k, v in model.state_dict().items()})  # plain data back


if __name__ == "__main__":
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(train, args=(model.state_dict(), queue), nprocs=1)
    model.load_state_dict({k: torch.tensor(v) for k, v in queue.get().items()})
    print(model.weight.sum().item())
