"""A Llama-style decoder (RMSNorm, rotary positions, SDPA attention, SwiGLU MLP) trained with
FSDP2 in bfloat16 on GPUs (NCCL), each rank on its own batch. Run with torchrun.

In bfloat16 SDPA picks its flash backend, whose backward computes dQ with atomic additions:
runs differ from run to run there (measured on an H200; the forward and the math backend do
not).

--attention {default,math}: SDPA as torch picks it, or the math backend on every rank (the
deterministic twin).
--flash-on-rank N: only rank N calls SDPA as torch picks it, the others use math (a source
on one rank).
--wrap {fsdp2,ddp}: shard with fully_shard (bf16 mixed precision policy) or replicate with
DistributedDataParallel under bf16 autocast.
--drift-on-rank N: that rank's optimizer gets twice the learning rate (with --wrap ddp its
replica of the weights drifts at step 0, in every run alike).
--time N: a benchmark instead of training: N plain steps, then N steps under
bisector.record, timed on every rank (rank 0 prints JSON; --time-out FILE writes it).
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=2)
parser.add_argument("--layers", type=int, default=4)
parser.add_argument("--hidden", type=int, default=512)
parser.add_argument("--heads", type=int, default=8)
parser.add_argument("--seq", type=int, default=512)
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--vocab", type=int, default=8192)
parser.add_argument("--attention", choices=["default", "math"], default="default")
parser.add_argument("--flash-on-rank", type=int, default=None)
parser.add_argument("--wrap", choices=["fsdp2", "ddp"], default="fsdp2")
parser.add_argument("--fp32", action="store_true", help="FSDP2 without a mixed precision policy")
parser.add_argument("--drift-on-rank", type=int, default=None)
parser.add_argument("--time", type=int, default=0)
parser.add_argument("--time-out", default=None)
args = parser.parse_args()

dist.init_process_group("nccl")
rank = dist.get_rank()
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(device)
torch.manual_seed(0)
if args.flash_on_rank is not None:
    args.attention = "default" if rank == args.flash_on_rank else "math"


def attention(q, k, v):
    if args.attention == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # SOURCE


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x.float() * scale).to(x.dtype) * self.weight


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gate = nn.Linear(dim, 4 * dim, bias=False)
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = RMSNorm(dim), MLP(dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(args.vocab, args.hidden)
        self.layers = nn.ModuleList(Block(args.hidden, args.heads) for _ in range(args.layers))
        self.norm = RMSNorm(args.hidden)
        self.lm_head = nn.Linear(args.hidden, args.vocab, bias=False)
        head_dim = args.hidden // args.heads
        freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(args.seq).float(), freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


model = Llama().to(device)
if args.wrap == "fsdp2":
    policy = MixedPrecisionPolicy(
        param_dtype=None if args.fp32 else torch.bfloat16, reduce_dtype=torch.float32
    )
    for layer in model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
else:
    model = DistributedDataParallel(model, device_ids=[device.index])
lr = 2e-4 if rank == args.drift_on_rank else 1e-4
optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
data = torch.Generator(device=device).manual_seed(1 + rank)  # each rank its own batch
tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device, generator=data)


def train_step():
    with torch.autocast("cuda", torch.bfloat16, enabled=args.wrap == "ddp"):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def timed(steps: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        train_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1000


if args.time:
    import tempfile

    import bisector
    from bisector.trace import load

    for _ in range(3):  # warm up: allocator, kernels, NCCL communicators
        train_step()
    plain = timed(args.time)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"rank{rank}.trace")
        with bisector.record(path, steps=args.time):
            recorded = timed(args.time)
        events = len(load(path))
    plain_again = timed(args.time)
    parameters = sum(p.numel() for p in model.parameters())  # a DTensor's numel is global
    result = {
        "rank": rank,
        "plain_ms": round(plain, 2),
        "recorded_ms": round(recorded, 2),
        "plain_again_ms": round(plain_again, 2),
        "events_per_step": events // args.time,
        "parameters": parameters,
    }
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)
    if rank == 0:
        text = json.dumps({"device": torch.cuda.get_device_name(), "ranks": results}, indent=1)
        print(text)
        if args.time_out:
            with open(args.time_out, "w") as file:
                file.write(text)
else:
    for _ in range(args.steps):
        train_step()
dist.destroy_process_group()
