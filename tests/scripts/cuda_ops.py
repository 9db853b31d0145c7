"""GPU training scripts, one per case (argv[1]): a small model whose module `probe` applies one
CUDA op. Cases from the ground-truth table that differ from run to run, and deterministic twins.

    python cuda_ops.py index_add [--steps N]
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

parser = argparse.ArgumentParser()
parser.add_argument("case")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

torch.manual_seed(0)
torch.backends.cudnn.benchmark = False
device = "cuda"
g = torch.Generator(device=device).manual_seed(1)


class IndexAdd(nn.Module):
    """100k rows of 64 into 100 rows with index_add_ (float atomics)."""

    def forward(self, h):
        index = torch.randint(0, 100, (h.shape[0],), device=h.device, generator=g_fixed())
        return h.new_zeros(100, h.shape[1]).index_add_(0, index, h)


class ScatterAdd(nn.Module):
    def forward(self, h):
        index = torch.randint(0, 100, (h.shape[0], 1), device=h.device, generator=g_fixed())
        return h.new_zeros(100, h.shape[1]).scatter_add_(0, index.expand_as(h), h)


def image(h):
    """The first 640000 values of h as a batch of 8 images of 4 x 100 x 200."""
    return h.reshape(-1)[: 8 * 4 * 100 * 200].reshape(8, 4, 100, 200)


class Interpolate(nn.Module):
    def forward(self, h):
        return F.interpolate(image(h), scale_factor=2.0, mode="bilinear", align_corners=False)


class GridSample(nn.Module):
    def forward(self, h):
        grid = torch.rand(8, 300, 300, 2, device=h.device, generator=g_fixed()) * 2 - 1
        return F.grid_sample(image(h), grid, align_corners=False)


class Cumsum(nn.Module):
    def forward(self, h):
        return torch.cumsum(h.reshape(-1)[: 1 << 20], dim=0)


class Bincount(nn.Module):
    def forward(self, h):
        index = torch.randint(0, 100, (h.shape[0],), device=h.device, generator=g_fixed())
        counts = torch.bincount(index, weights=h[:, 0].detach(), minlength=100)
        return h[:100] * counts.to(h.dtype).unsqueeze(1)


class Attention(nn.Module):
    """Causal SDPA of the seed's shape (16 x 14 heads x 2048 tokens x 64), on the backend the
    case names. (Smaller problems can get kernels that do not split the keys, and agree.)"""

    def __init__(self, backend, dtype):
        super().__init__()
        self.backend, self.dtype = backend, dtype
        self.head_scale = nn.Parameter(torch.linspace(0.5, 1.5, 14).reshape(1, 14, 1, 1))

    def forward(self, h):
        base = h.reshape(-1)[: 3 * 2048 * 64].reshape(3, 1, 1, 2048, 64)
        q, k, v = (part.expand(16, 14, 2048, 64) * self.head_scale for part in base)
        q, k, v = (t.to(self.dtype) for t in (q, k, v))
        with sdpa_kernel(self.backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).float()


class Matmul(nn.Module):
    def forward(self, h):
        return (h @ h[:64].t()) @ h[:64]


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, h):
        return self.conv(image(h))


def g_fixed():
    """A generator seeded the same way at every call: fixed indices and grids."""
    return torch.Generator(device=device).manual_seed(7)


PROBES = {
    "index_add": IndexAdd,
    "scatter_add": ScatterAdd,
    "interpolate": Interpolate,
    "grid_sample": GridSample,
    "cumsum": Cumsum,
    "bincount": Bincount,
    "sdpa_flash": lambda: Attention(SDPBackend.FLASH_ATTENTION, torch.bfloat16),
    "sdpa_mem_efficient": lambda: Attention(SDPBackend.EFFICIENT_ATTENTION, torch.float32),
    "sdpa_cudnn": lambda: Attention(SDPBackend.CUDNN_ATTENTION, torch.bfloat16),
    "sdpa_math": lambda: Attention(SDPBackend.MATH, torch.float32),
    "matmul": Matmul,
    "conv": Conv,
}


class Net(nn.Module):
    def __init__(self, probe):
        super().__init__()
        self.embed = nn.Linear(32, 64)
        self.probe = probe
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        out = self.probe(self.embed(x)).float()
        # Every output element gets a gradient: a sparse one would leave atomics adding zeros.
        return self.head(out.reshape(-1, 1)[:4096]).pow(2).mean() + out.square().mean()


model = Net(PROBES[args.case]()).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(100_000, 32, device=device, generator=g)
for step in range(args.steps):
    loss = model(x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
