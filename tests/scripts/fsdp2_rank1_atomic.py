"""FSDP2 on 2 CPU processes (gloo): the SegmentNet of the DDP script, each Linear and the whole
model sharded with fully_shard; rank 1 alone pools with index_put_(accumulate=True) (CPU atomics
on >= 32768 float32 rows and >= 2 threads). The gradients' reduce-scatter then spreads rank 1's
difference into both ranks' shards. Run with torchrun --nproc-per-node 2.

--deterministic: every rank pools with a one-hot matmul (the deterministic twin).
--reshard-after-forward {yes,no}: FSDP2 frees the unsharded parameters after the forward (yes,
the default: their storage is resized to 0 and gathered again for the backward) or keeps them.
--bf16: a mixed precision policy (parameters gathered and computed in bfloat16, gradients
reduced in float32).
"""

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from _common import SegmentNet

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--deterministic", action="store_true")
parser.add_argument("--reshard-after-forward", choices=["yes", "no"], default="yes")
parser.add_argument("--bf16", action="store_true")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(2)  # torchrun sets OMP_NUM_THREADS=1; CPU atomics need 2 threads
torch.manual_seed(0)
SEGMENTS = 100


class SegmentSum(nn.Module):
    def forward(self, rows, segments):
        if rank == 1 and not args.deterministic:
            out = torch.zeros(SEGMENTS, rows.shape[1])  # summed in float32 (also under --bf16)
            out.index_put_((segments,), rows.float(), accumulate=True)  # SOURCE
            return out.to(rows.dtype)
        one_hot = nn.functional.one_hot(segments, SEGMENTS).to(rows.dtype)
        return one_hot.T @ rows


model = SegmentNet(SegmentSum())
options = {"reshard_after_forward": args.reshard_after_forward == "yes"}
if args.bf16:
    options["mp_policy"] = MixedPrecisionPolicy(torch.bfloat16, reduce_dtype=torch.float32)
for layer in (model.proj, model.head):
    fully_shard(layer, **options)
fully_shard(model, **options)
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
