"""A conditional GAN as its tutorials write it: two networks, two Adam optimizers (betas 0.5),
the discriminator trained on `fake.detach()` first, then the generator through the
discriminator, and an exponential moving average of the generator
(torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn) updated after each generator
step, as StyleGAN-like training does. So one iteration is two optimizer steps (the
discriminator's, then the generator's) and an EMA update outside any optimizer.

What it trains: points of a 2-D mixture of 50 classes (160,000 a batch, drawn from a seeded
generator). `Generator`: a learned vector per class (`table`, 50 x 16) added to 16 features of
the noise (Linear 8 -> 16), ReLU, Linear 16 -> 2. `Discriminator`: its own class vectors
(F.embedding, 50 x 16) and Linear 2 -> 16, LeakyReLU, Linear 16 -> 1. BCE-with-logits losses;
3 iterations.

Planted source: the generator looks its class vectors up as `self.table[labels]`; the
backward of that gather adds the 160,000 gradient rows into the table's 50 rows with
index_put(accumulate=True), atomic adds on a CPU with >= 2 threads: the generator's gradient
differs in its last bits from run to run. The discriminator's step comes first and reads the
generator's output detached, so nothing differs before the generator's backward.
Expected first divergence: aten.index_put.default, module G (the variable that holds the
generator), phase backward, the generator's first step (optimizer step 1: the discriminator's
is step 0), at the line marked SOURCE.
--twin: F.embedding instead (its backward is bitwise stable on a CPU); its test runs 20,000
rows (--rows).
Truth (statehash.py, torch 2.13 CPU, 2 threads, the machine loaded by a test suite): planted,
--stop-after 2: 4 runs -> 4 digests (with 40,000 rows the race showed in 1 of 4 pairs only);
twin 2 runs -> 1 digest.
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="look class vectors up with F.embedding")
parser.add_argument("--iterations", type=int, default=3)
parser.add_argument("--rows", type=int, default=160000, help="points a batch")
args = parser.parse_args()

CLASSES, BATCH, NOISE, HIDDEN = 50, args.rows, 8, 16


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(CLASSES, HIDDEN) * 0.1)
        self.noise = nn.Linear(NOISE, HIDDEN)
        self.out = nn.Linear(HIDDEN, 2)

    def forward(self, z, labels):
        if args.twin:
            conditioned = F.embedding(labels, self.table)
        else:
            conditioned = self.table[labels]  # SOURCE
        return self.out(torch.relu(self.noise(z) + conditioned))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.classes = nn.Embedding(CLASSES, HIDDEN)
        self.points = nn.Linear(2, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, points, labels):
        h = F.leaky_relu(self.points(points) + self.classes(labels), 0.2)
        return self.out(h).squeeze(-1)


def real_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    angle = labels.float() * (2 * torch.pi / CLASSES)
    centres = torch.stack([angle.cos(), angle.sin()], dim=1) * 4
    return centres + 0.1 * torch.randn(BATCH, 2, generator=generator), labels


torch.manual_seed(0)
G, D = Generator(), Discriminator()
ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(0.99))
opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
data = torch.Generator().manual_seed(1)
ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)

for iteration in range(args.iterations):
    real, labels = real_batch(data)
    z = torch.randn(BATCH, NOISE, generator=data)
    fake = G(z, labels)

    opt_d.zero_grad()
    loss_d = F.binary_cross_entropy_with_logits(D(real, labels), ones)
    loss_d = loss_d + F.binary_cross_entropy_with_logits(D(fake.detach(), labels), zeros)
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad()
    loss_g = F.binary_cross_entropy_with_logits(D(fake, labels), ones)
    loss_g.backward()
    opt_g.step()
    ema.update_parameters(G)
    print(f"iteration {iteration} loss_d {loss_d.item():.6f} loss_g {loss_g.item():.6f}")
