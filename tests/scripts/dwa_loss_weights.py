"""Multi-task training (regression + classification) weighted by Dynamic Weight Average: each
task's weight comes from the ratio of its last two losses, kept as detached tensors.

The regression loss is `F.mse_loss` (mean): a 0-d tensor whose storage is its elementwise
buffer, of which only the 4 bytes of the mean are ever read. Recording that starts at a later
step (the ladder's op rung) reads the kept losses as leaves; fingerprinted as their whole
storage, they "differed" between runs (the other bytes do), a false input source on a
deterministic script.

Planted source (from --from-step on): per-group offsets `group_bias[group]`, whose backward adds
--rows gradient rows into 8 with index_put(accumulate=True): atomics on a CPU with >= 2 threads.
Expected first divergence: aten.index_put.default, (no module), backward, step --from-step, the
line marked SOURCE.
--twin: `group_bias.gather(0, group)` (its backward is bitwise stable on a CPU).
Truth (statehash.py, torch 2.13 CPU, 2 threads, 400,000 rows): planted 3 runs -> 3 digests;
twin 3 runs -> 1 digest.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--twin", action="store_true")
parser.add_argument("--from-step", type=int, default=4)
parser.add_argument("--rows", type=int, default=400000)
args = parser.parse_args()

torch.manual_seed(0)
trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU())
reg_head, cls_head = nn.Linear(64, 1), nn.Linear(64, 5)
group_bias = nn.Parameter(torch.zeros(8))
params = [*trunk.parameters(), *reg_head.parameters(), *cls_head.parameters(), group_bias]
opt = torch.optim.Adam(params, lr=1e-3)
data = torch.Generator().manual_seed(1)
history = []  # the last two steps' losses, detached
for step in range(args.steps):
    x = torch.randn(args.rows, 16, generator=data)
    y_reg = torch.randn(args.rows, generator=data)
    y_cls = torch.randint(0, 5, (args.rows,), generator=data)
    group = torch.randint(0, 8, (args.rows,), generator=data)
    h = trunk(x)
    pred = reg_head(h).squeeze(1)
    if step >= args.from_step:  # per-group offsets join once the trunk has warmed up
        pred = pred + (group_bias.gather(0, group) if args.twin else group_bias[group])  # SOURCE
    losses = [F.mse_loss(pred, y_reg), F.cross_entropy(cls_head(h), y_cls)]
    if len(history) == 2:
        ratios = torch.stack([last / before for last, before in zip(history[1], history[0])])
        weights = 2 * torch.softmax(ratios / 2.0, 0)
    else:
        weights = torch.ones(2)
    loss = (weights * torch.stack(losses)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    history = (history + [[part.detach() for part in losses]])[-2:]
    print(f"step {step} loss {loss.item():.5f}")
