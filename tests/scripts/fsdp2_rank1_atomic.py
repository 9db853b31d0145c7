"""FSDP2 on 2 CPU processes (gloo): the SegmentNet of the DDP script, each Linear and the whole
model sharded with fully_shard; rank 1 alone pools with index_put_(accumulate=True) (CPU atomics
on >= 32768 float32 rows and >= 2 threads). The gradients' reduce-scatter then spreads rank 1's
difference into both ranks' shards. Run with torchrun --nproc-per-node 2.

--deterministic: every rank pools with a one-hot matmul (the deterministic twin).
--reshard-after-forward {yes,no}: FSDP2 frees the unsharded parameters after the forward (yes,
the default: their storage is resized to 0 and gathered again for the backward) or keeps them.
"""

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from _common import SegmentNet

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--deterministic", action="store_true")
parser.add_argument("--reshard-after-forward", choices=["yes", "no"], default="yes")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(2)  # torchrun sets OMP_NUM_THREADS=1; CPU atomics need 2 threads
torch.manual_seed(0)
SEGMENTS = 100


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if rank == 1 and not args.deterministic:
            out = torch.zeros(SEGMENTS, rows.shape[1])
            out.index_put_((segments,), rows, accumulate=True)  # SOURCE
            return out
        one_hot = nn.functional.one_hot(segments, SEGMENTS).to(rows.dtype)
        return one_hot.T @ rows


model = SegmentNet(SegmentSum())
reshard = args.reshard_after_forward == "yes"
for layer in (model.proj, model.head):
    fully_shard(layer, reshard_after_forward=reshard)
fully_shard(model, reshard_after_forward=reshard)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(1 + rank)  # each rank its own data
x = torch.randn(60000, 16, generator=data)
segments = torch.randint(0, SEGMENTS, (60000,), generator=data)
target = torch.randn(SEGMENTS, 1, generator=data)
for step in range(args.steps):
    loss = (model(x, segments) - target).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
dist.destroy_process_group()
