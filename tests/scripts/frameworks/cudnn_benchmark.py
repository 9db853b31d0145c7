"""Small class-conditional DCGAN on 3x32x32 images, with cudnn.benchmark switched on.

What it trains: `gen` (ConvTranspose2d 32+4 -> 64 -> 32 -> 16 -> 3 with BatchNorm, ReLU, Tanh)
and `disc` (Conv2d 3 -> 16 at full resolution, LeakyReLU, `disc.stats`, Conv2d 16 -> 32 -> 64
with BatchNorm, a linear score, plus a projection term on the class statistics), Adam on both,
3 GAN steps (D step then G step) on seeded random "real" images of 4 classes. The script sets
`torch.backends.cudnn.benchmark = True` and `torch.set_num_threads(max(2, os.cpu_count() or 1))`
itself, as user scripts do. `--device cpu|cuda` (default cpu).

Planted source (CPU only): `disc.stats` (ClassStats.forward), a class-conditional statistics
layer, sums the first feature map per class over every pixel of the batch,
`sums.index_put_((cls,), rows, accumulate=True)` on 65536 x 16 float32 rows (64 images x 32 x 32
pixels); with >= 2 threads these rows are added with atomics, so the sums differ in their last bits.
Expected first differing op (cpu): aten.index_put_.default, module `disc.stats`, phase forward,
step 0 (the D step on real images), line marked `# SOURCE`.
`--twin`: the class sums are a one-hot matmul (bitwise reproducible). With `--device cuda` the
one-hot matmul is always used (no planted race): there cudnn autotuning is the only source.
Truth (statehash.py, cpu): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest.
`--batch N`: images a step (default 64); with 256 (2026-12-07): planted 2 runs -> 2 digests,
twin 2 runs -> 1 digest.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

torch.backends.cudnn.benchmark = True
torch.set_num_threads(max(2, os.cpu_count() or 1))

parser = argparse.ArgumentParser()
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
parser.add_argument("--twin", action="store_true", help="class sums with a one-hot matmul")
parser.add_argument("--batch", type=int, default=64, help="images a step")
args = parser.parse_args()
device = torch.device(args.device)

N_CLASSES, NZ, BATCH = 4, 32, args.batch
torch.manual_seed(0)


class ClassStats(nn.Module):
    """Mean feature vector of each class over all pixels of the batch."""

    def __init__(self, n_classes, deterministic):
        super().__init__()
        self.n_classes = n_classes
        self.deterministic = deterministic

    def forward(self, feat, labels):
        b, c, h, w = feat.shape
        rows = feat.permute(0, 2, 3, 1).reshape(-1, c)
        cls = labels.repeat_interleave(h * w)
        if self.deterministic:
            sums = F.one_hot(cls, self.n_classes).to(rows.dtype).t() @ rows
        else:
            sums = rows.new_zeros(self.n_classes, c)
            sums.index_put_((cls,), rows, accumulate=True)  # SOURCE
        counts = torch.bincount(labels, minlength=self.n_classes).clamp(min=1) * (h * w)
        return sums / counts.unsqueeze(1).to(rows.dtype)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(N_CLASSES, 4)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(NZ + 4, 64, 4, 1, 0, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z, labels):
        h = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, deterministic):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.LeakyReLU(0.2, True))
        self.stats = ClassStats(N_CLASSES, deterministic)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2, True),
            nn.Conv2d(32, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2, True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.score = nn.Linear(64, 1)
        self.proj = nn.Linear(16, 64, bias=False)

    def forward(self, img, labels):
        feat = self.stem(img)
        class_mean = self.stats(feat, labels)
        h = self.body(feat)
        return self.score(h).squeeze(1) + (h * self.proj(class_mean)[labels]).sum(1)


gen = Generator().to(device)
disc = Discriminator(deterministic=args.twin or device.type == "cuda").to(device)
opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))

data_gen = torch.Generator().manual_seed(3)
prototypes = torch.rand(N_CLASSES, 3, 32, 32, generator=data_gen) * 2 - 1

for step in range(3):
    labels = torch.randint(0, N_CLASSES, (BATCH,), generator=data_gen)
    noise = torch.randn(BATCH, 3, 32, 32, generator=data_gen)
    real = (prototypes[labels] + 0.1 * noise).clamp(-1, 1)
    z = torch.randn(BATCH, NZ, generator=data_gen)
    real, labels, z = real.to(device), labels.to(device), z.to(device)

    # discriminator step
    fake = gen(z, labels)
    d_real = disc(real, labels)
    d_fake = disc(fake.detach(), labels)
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()

    # generator step
    d_fake = disc(fake, labels)
    loss_g = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    print(f"step {step} loss_d {loss_d.item():.4f} loss_g {loss_g.item():.4f}")
