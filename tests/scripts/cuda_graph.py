"""A training step whose forward and backward are captured in a CUDA graph and replayed; the
optimizer step runs eagerly after each replay. ``atomic`` (argv[1]) pools the rows with an
index_add_ of 100k rows into 100 (float atomics: differs from run to run) in the captured step
only (the eager warm-up pools deterministically), so the race shows in the replays; otherwise
the step is deterministic."""

import sys

import torch
from torch import nn

atomic = len(sys.argv) > 1 and sys.argv[1] == "atomic"
torch.manual_seed(0)
device = "cuda"
rows = 100_000
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
static_x = torch.randn(rows, 64, device=device)
static_y = torch.randn(100, 64, device=device)
index = torch.randint(0, 100, (rows,), device=device)


def forward_backward(racy: bool):
    out = model(static_x)
    if racy:
        pooled = torch.zeros(100, 64, device=device).index_add_(0, index, out)  # SOURCE
    else:
        pooled = out.view(1000, 100, 64).sum(0)
    loss = (pooled - static_y).pow(2).mean()
    loss.backward()
    return loss


side = torch.cuda.Stream()  # warm up on a side stream, as torch.cuda.graph asks
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        forward_backward(racy=False)
torch.cuda.current_stream().wait_stream(side)

graph = torch.cuda.CUDAGraph()
opt.zero_grad(set_to_none=True)  # the gradients are made inside the graph: static tensors
with torch.cuda.graph(graph):
    static_loss = forward_backward(racy=atomic)

for step in range(4):
    g = torch.Generator(device=device).manual_seed(step)
    static_x.copy_(torch.randn(rows, 64, device=device, generator=g))
    graph.replay()
    opt.step()
print("loss", float(static_loss))
