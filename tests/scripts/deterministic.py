"""A deterministic twin: seeded, dropout, Adam and a learning-rate scheduler, all reproducible."""

import sys

import torch
from torch import nn

from _common import batch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc2(self.norm(self.drop(torch.relu(self.fc1(x)))))


torch.manual_seed(0)
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
for step in range(steps):
    x, y = batch(step)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
if len(sys.argv) > 2:  # save the final weights (for the "recording changes nothing" test)
    torch.save(model.state_dict(), sys.argv[2])
