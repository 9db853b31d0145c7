"""The case that started bisector: a Qwen2-style decoder layer, fine-tuned with Adam, every seed
fixed and cuDNN deterministic, still ends with different weights on two runs (on a GPU).

The layer: hidden 896, 14 query heads and 2 key/value heads of dim 64 (grouped-query attention),
RoPE with theta 1e6, RMSNorm (eps 1e-6), a SwiGLU MLP of 4864, batch 16 x 2048 tokens, float32.
The cause: the backward kernels of ``scaled_dot_product_attention`` (memory-efficient, flash,
cuDNN) accumulate dQ with atomic additions, so dQ differs in its last bits from run to run; Adam
normalises each update, which makes those bits visible weight differences within a few steps.

    bisector find examples/qwen2_sdpa_adam.py

names the SDPA backward op in ``layers.0.self_attn`` (backward, step 0). ``--attn math`` (the
math SDPA backend) or ``--attn eager`` (attention written out) makes both runs identical; on a
CPU the script runs a smaller layer and is reproducible: the case shows on a GPU.
"""

import argparse
import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, THETA, EPS = 896, 14, 2, 64, 4864, 1e6, 1e-6


class RMSNorm(nn.Module):
    def __init__(self, size, eps=EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotary(seq_len, dim=HEAD_DIM, theta=THETA):
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def repeat_kv(x, groups=HEADS // KV_HEADS):
    """Share each key/value head with its group of query heads, as transformers' Qwen2 does.

    (``repeat_interleave`` would do the same, but its backward is an ``index_add_``, which is
    itself nondeterministic on a GPU.)
    """
    b, heads, t, d = x.shape
    return x[:, :, None].expand(b, heads, groups, t, d).reshape(b, heads * groups, t, d)


class Attention(nn.Module):
    def __init__(self, attn="sdpa"):
        super().__init__()
        self.attn = attn
        self.q_proj = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=True)
        self.k_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=True)
        self.v_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=True)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k), repeat_kv(v)
        if self.attn == "eager":
            scores = (q @ k.transpose(-1, -2)) / HEAD_DIM**0.5
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            out = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        elif self.attn == "math":
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM))


class SwiGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN, MLP, bias=False)
        self.up_proj = nn.Linear(HIDDEN, MLP, bias=False)
        self.down_proj = nn.Linear(MLP, HIDDEN, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, attn="sdpa"):
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN)
        self.self_attn = Attention(attn)
        self.post_attention_layernorm = RMSNorm(HIDDEN)
        self.mlp = SwiGLU()

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, attn="sdpa"):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(attn)])
        self.norm = RMSNorm(HIDDEN)

    def forward(self, x, cos, sin):
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


def setup(attn="sdpa", batch=None, seq=None, device=None):
    """The seeded layer and its data: (model, inputs, targets, cos, sin)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = batch or (16 if device == "cuda" else 2)
    seq = seq or (2048 if device == "cuda" else 128)
    torch.manual_seed(0)
    torch.cuda.manual_seed_all(0)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    model = Decoder(attn).to(device)
    cos, sin = (t.to(device) for t in rotary(seq))
    generator = torch.Generator(device=device).manual_seed(1)
    inputs = torch.randn(batch, seq, HIDDEN, device=device, generator=generator)
    targets = torch.randn(batch, seq, HIDDEN, device=device, generator=generator)
    return model, inputs, targets, cos, sin


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train one Qwen2-style decoder layer.")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on a GPU, 2 on a CPU")
    parser.add_argument(
        "--seq", type=int, default=None, help="default: 2048 on a GPU, 128 on a CPU"
    )
    parser.add_argument("--attn", choices=["sdpa", "math", "eager"], default="sdpa")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU: running a smaller layer on the CPU; the SDPA case shows on a GPU")
    model, inputs, targets, cos, sin = setup(args.attn, args.batch, args.seq)
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        loss = F.mse_loss(model(inputs, cos, sin), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.8f}")
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    print(f"weight checksum: {checksum:.12e}")


if __name__ == "__main__":
    main(sys.argv[1:])
