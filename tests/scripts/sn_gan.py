"""A GAN whose generator steps after its critic's: the default two recorded optimizer steps are
both the critic's.

SN-GAN on a 2-D mixture of four Gaussians: a critic with spectral normalisation (torch's
parametrizations: a power iteration in every forward, its vectors updated in place), hinge
loss, two Adams, two critic steps per generator step. The generator's loss adds a
mode-coverage regulariser: the fakes' histogram over a 32 x 32 grid, accumulated with
``index_put_(accumulate=True)`` over 2,000,000 entries (SOURCE: on a CPU with two threads the
accumulation order varies between runs); --twin: the same histogram summed in a fixed order
(``scatter_reduce`` of sorted cells).
Truth (statehash.py, torch 2.13 CPU, 2 threads, --iters 3): planted 2 runs 2 digests, twin 2
runs 1 digest. Before bisector recorded past --steps until every optimizer had stepped, `find`
(2 steps) recorded the two critic steps only and said "Reproducible".
"""

import argparse

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

parser = argparse.ArgumentParser()
parser.add_argument("--iters", type=int, default=3)
parser.add_argument("--twin", action="store_true")
args = parser.parse_args()
torch.manual_seed(0)

gen = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
critic = nn.Sequential(
    spectral_norm(nn.Linear(2, 64)),
    nn.LeakyReLU(0.2),
    spectral_norm(nn.Linear(64, 64)),
    nn.LeakyReLU(0.2),
    spectral_norm(nn.Linear(64, 1)),
)
opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.0, 0.9))
opt_d = torch.optim.Adam(critic.parameters(), lr=4e-4, betas=(0.0, 0.9))
CENTERS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def real_batch(n):
    return CENTERS[torch.randint(0, 4, (n,))] + 0.05 * torch.randn(n, 2)


def coverage(fake):
    """How unevenly the fakes fill a 32 x 32 grid (sum of squared bin shares)."""
    cells = ((fake.detach().clamp(-1.5, 1.5) + 1.5) / 3 * 31).long()
    flat = (cells[:, 0] * 32 + cells[:, 1]).repeat(40)
    weight = fake.norm(dim=1).repeat(40)
    if args.twin:
        order = flat.argsort(stable=True)
        hist = torch.zeros(1024).scatter_reduce(0, flat[order], weight[order], "sum")
    else:
        hist = torch.zeros(1024).index_put_((flat,), weight, accumulate=True)  # SOURCE
    return (hist / hist.sum()).pow(2).sum()


for it in range(args.iters):
    for _ in range(2):
        fake = gen(torch.randn(50000, 8)).detach()
        d_real = critic(real_batch(50000))
        d_loss = torch.relu(1 - d_real).mean() + torch.relu(1 + critic(fake)).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    fake = gen(torch.randn(50000, 8))
    g_loss = -critic(fake).mean() + coverage(fake) * fake.pow(2).mean()
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    print(f"iter {it} critic {d_loss.item():.5f} generator {g_loss.item():.5f}")
