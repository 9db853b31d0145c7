"""DDP on 2 CPU processes (gloo): rank 1 alone pools with index_put_(accumulate=True), which on
>= 32768 float32 rows and >= 2 threads uses atomic adds; the gradient all-reduce then spreads
rank 1's difference to rank 0. Run with torchrun --nproc-per-node 2.

--deterministic: every rank pools with a one-hot matmul (the deterministic twin).
--source-from-step N: rank 1 pools with index_put_ from step N on (one-hot matmul before).
--raise-on-rank N: that rank raises at step 1.
--hang-on-rank N: that rank sleeps at step 1 while the others wait in the all-reduce.
--drift-on-rank N: that rank's optimizer gets twice the learning rate (a rank-dependent
setting): its replica of the weights drifts from the others' at step 0, in every run alike.
"""

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from _common import SegmentNet

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--deterministic", action="store_true")
parser.add_argument("--source-from-step", type=int, default=0)
parser.add_argument("--raise-on-rank", type=int, default=None)
parser.add_argument("--hang-on-rank", type=int, default=None)
parser.add_argument("--drift-on-rank", type=int, default=None)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(2)  # torchrun sets OMP_NUM_THREADS=1; CPU atomics need 2 threads
torch.manual_seed(0)
SEGMENTS = 100


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if rank == 1 and not args.deterministic and step >= args.source_from_step:
            out = torch.zeros(SEGMENTS, rows.shape[1])
            out.index_put_((segments,), rows, accumulate=True)  # SOURCE
            return out
        one_hot = nn.functional.one_hot(segments, SEGMENTS).to(rows.dtype)
        return one_hot.T @ rows


model = DistributedDataParallel(SegmentNet(SegmentSum()))
lr = 2e-3 if rank == args.drift_on_rank else 1e-3
optimizer = torch.optim.Adam(model.parameters(), lr=lr)
data = torch.Generator().manual_seed(1 + rank)  # each rank its own shard
x = torch.randn(60000, 16, generator=data)
segments = torch.randint(0, SEGMENTS, (60000,), generator=data)
target = torch.randn(SEGMENTS, 1, generator=data)
for step in range(args.steps):
    if step == 1 and rank == args.raise_on_rank:
        raise RuntimeError(f"planted failure on rank {rank}")
    if step == 1 and rank == args.hang_on_rank:
        time.sleep(3600)
    loss = (model(x, segments) - target).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
dist.destroy_process_group()
