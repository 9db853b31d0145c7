"""A planted index_put_ source (CPU atomics), and a setup function that turns deterministic
algorithms off again, as a framework's `seed_everything(deterministic=False)` would: a fix placed
at the start of the script is undone later.

--twin: pool with a one-hot matmul (deterministic).
"""

import argparse

import torch
from torch import nn

from _common import SegmentNet

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true")
args = parser.parse_args()


def setup(deterministic: bool = False):
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(deterministic)


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if args.twin:
            return nn.functional.one_hot(segments, 100).to(rows.dtype).T @ rows
        out = torch.zeros(100, rows.shape[1])
        out.index_put_((segments,), rows, accumulate=True)  # SOURCE
        return out


setup()
model = SegmentNet(SegmentSum())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
x = torch.randn(60000, 16, generator=g)
segments = torch.randint(0, 100, (60000,), generator=g)
target = torch.randn(100, 1, generator=g)
for step in range(3):
    loss = (model(x, segments) - target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
