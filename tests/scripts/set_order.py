"""Control flow that follows the iteration order of a set of strings, which changes with the
hash seed of each process (PYTHONHASHSEED unset): the runs apply the same ops in another order."""

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
steps = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "sin": torch.sin}
data = torch.Generator().manual_seed(1)
for _ in range(2):
    h = model(torch.randn(4, 8, generator=data))
    for name in set(steps):  # SOURCE: order of a set of str
        h = steps[name](h) * 1.5
    loss = h.pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
