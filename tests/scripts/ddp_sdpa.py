"""DDP on GPUs (NCCL): a transformer block with SDPA attention (14 heads of 64, 2048 tokens,
fp32), each rank on its own data. The fused SDPA backward accumulates with atomics, so every
rank has a source of its own. Run with torchrun --nproc-per-node 2.

--attn math: the math SDPA backend (the deterministic twin).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=2)
parser.add_argument("--attn", choices=["sdpa", "math"], default="sdpa")
args = parser.parse_args()

dist.init_process_group("nccl")
rank = dist.get_rank()
local_rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local_rank)
torch.manual_seed(0)
HIDDEN, HEADS = 896, 14


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        if args.attn == "math":
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, HIDDEN))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(HIDDEN)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 2048), nn.GELU(), nn.Linear(2048, HIDDEN))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


model = DistributedDataParallel(Block().cuda(), device_ids=[local_rank])
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
data = torch.Generator(device="cuda").manual_seed(1 + rank)
x = torch.randn(8, 2048, HIDDEN, device="cuda", generator=data)
target = torch.randn(8, 2048, HIDDEN, device="cuda", generator=data)
for step in range(args.steps):
    loss = F.mse_loss(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
dist.destroy_process_group()
