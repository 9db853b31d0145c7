"""A small MLP trained on 2 CPU processes (gloo) with FSDP1 (FullyShardedDataParallel: each rank
holds a shard of one flat parameter) or tensor parallelism (parallelize_module: the first Linear
split by columns, the second by rows, its bias replicated as a DTensor). Deterministic: every
rank draws the same seeded batches. Run with torchrun --nproc-per-node 2 --mode fsdp1|tp.
"""

import argparse

import torch
import torch.distributed as dist
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=["fsdp1", "tp"], required=True)
args = parser.parse_args()

dist.init_process_group("gloo")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
if args.mode == "fsdp1":
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = FullyShardedDataParallel(model, device_id=torch.device("cpu"))
else:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
batches = torch.Generator().manual_seed(5)
for step in range(3):
    x = torch.randn(32, 16, generator=batches)
    y = torch.randn(32, 1, generator=batches)
    loss = (model(x) - y).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
dist.destroy_process_group()
