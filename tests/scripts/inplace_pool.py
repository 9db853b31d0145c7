"""A source in a pooling module, behind a ReLU(inplace=True): global full backward hooks make
autograd refuse the in-place write, so the module rung cannot record this script."""
import torch
from torch import nn

torch.manual_seed(0)


class Pool(nn.Module):
    def forward(self, rows, segments):
        out = torch.zeros(100, rows.shape[1])
        out.index_put_((segments,), rows, accumulate=True)
        return out


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.act = nn.ReLU(inplace=True)
        self.pool = Pool()
        self.head = nn.Linear(32, 1)

    def forward(self, x, segments):
        return self.head(self.pool(self.act(self.proj(x)), segments))


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
for step in range(6):
    x = torch.randn(60000, 16, generator=g)
    segments = torch.randint(0, 100, (60000,), generator=g)
    loss = model(x, segments).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
