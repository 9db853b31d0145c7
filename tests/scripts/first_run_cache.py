"""A divergence that does not recur: the first run on a machine fills a cache and computes
differently while it does, as an autotuner that benchmarks on first use, or a library that
chooses its code path once per process, would.

A small CNN on 16 x 16 images. The run that finds no file at --cache writes it and, "while it
benchmarks the backends", runs step 0 with oneDNN off (torch's reference convolution: im2col
and a matrix product); every later run reads the file and keeps oneDNN on. The two compute the
first convolution's sums in another order: its bits differ on equal inputs (on any x86 CPU), and
everything after it. So the first pair of runs differs at step 0 and every pair after it is
identical; a replay of the convolution in a later process gives one result.
--twin: no cache (oneDNN in every run).
Truth (statehash.py, torch 2.13 CPU, an AMD EPYC): with a fresh --cache, runs 1 and 2 give 2
digests, runs 2 and 3 one; the twin 1 digest.
(Until 2026-12-07 the first run summed a loss with one thread instead of two: on this CPU the
two sums of that data were often bitwise equal, so the pair did not always differ.)
"""

import argparse
from pathlib import Path

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--cache", default="")
parser.add_argument("--twin", action="store_true")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

cache = Path(args.cache) if args.cache and not args.twin else None
first_run = cache is not None and not cache.exists()
if first_run:
    cache.write_text("tuned: onednn\n")

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(16 * 8 * 8, 10),
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(1)
for step in range(args.steps):
    torch.backends.mkldnn.enabled = not (first_run and step == 0)
    images = torch.randn(32, 3, 16, 16, generator=data)
    labels = torch.randint(0, 10, (32,), generator=data)
    logits = model(images)  # SOURCE: the first convolution, by the backend chosen
    loss = nn.functional.cross_entropy(logits, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.6f}")
