"""Planted source in the backward: a custom autograd Function whose backward accumulates with
index_put_(accumulate=True); the forward is a plain (deterministic) gather."""

import torch
from torch import nn

torch.manual_seed(0)


class Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.rows, grad.shape[1])
        grad_table.index_put_((index,), grad, accumulate=True)  # SOURCE
        return grad_table, None


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(100, 64))

    def forward(self, index):
        return Gather.apply(self.table, index)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = Lookup()
        self.head = nn.Linear(64, 1)

    def forward(self, index):
        return self.head(self.embed(index))


model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(1)
index = torch.randint(0, 100, (200000,), generator=g)  # many rows: the race shows every run
target = torch.randn(200000, 1, generator=g)
for step in range(3):
    loss = (model(index) - target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
