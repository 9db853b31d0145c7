"""A tiny GPT language model trained under torch.compile, with a batch sampler that is not seeded.

What it trains: a character-level-style GPT (vocab 65, context 32, width 48, 2 blocks of
LayerNorm -> causal self-attention through F.scaled_dot_product_attention(is_causal=True) ->
LayerNorm -> GELU MLP, final LayerNorm, lm head tied to the token embedding) with AdamW
(weight decay on matrices only), 3 steps, on a seeded random token array. get_batch() draws the
window offsets with `torch.randint(len(data) - block_size, (batch_size,), generator=g)`.
The model is wrapped with `torch.compile(model, backend=BACKEND)`, BACKEND from env
BISECTOR_TEST_BACKEND, default "inductor" if g++ is found else "aot_eager"; `--no-compile`
trains the eager model.

Planted source: the batch generator `g` is created with `torch.Generator(); g.seed()` (a
non-deterministic seed), so each run trains on other windows of the data.
The script also calls torch.use_deterministic_algorithms(True): without it inductor compiles the
embedding backward into a scatter with atomic adds (a second, unplanted race under --twin).
Expected first differing op: aten.randint.generator (randint(high, size, generator=g)) in get_batch,
no module, phase other (before the first forward), step 0, line marked `# SOURCE`; its output
differs while its explicit inputs are equal (the generator state is the hidden input).
`--twin`: `g.manual_seed(1337)` instead of `g.seed()`; nothing else changes.
Truth (statehash.py, inductor): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest
(same with BISECTOR_TEST_BACKEND=aot_eager and with --no-compile: planted 3 -> 3, twin 3 -> 1).
"""

import argparse
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="seed the batch generator")
parser.add_argument("--no-compile", action="store_true", help="train the eager model")
args = parser.parse_args()

BACKEND = os.environ.get("BISECTOR_TEST_BACKEND") or (
    "inductor" if shutil.which("g++") else "aot_eager"
)

vocab_size, block_size, n_embd, n_head, n_layer = 65, 32, 48, 4, 2
batch_size, max_iters, lr = 8, 3, 1e-3

torch.manual_seed(1337)
# reproducibility: inductor lowers the embedding backward to a scatter with atomic adds unless
# deterministic algorithms are requested (then it falls back to aten's serial index_put_)
torch.use_deterministic_algorithms(True)
data = torch.randint(0, vocab_size, (20000,), generator=torch.Generator().manual_seed(0))

g = torch.Generator()
if args.twin:
    g.manual_seed(1337)
else:
    g.seed()


def get_batch():
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)  # SOURCE
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.out = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(n_embd, dim=2)
        q = q.view(b, t, n_head, c // n_head).transpose(1, 2)
        k = k.view(b, t, n_head, c // n_head).transpose(1, 2)
        v = v.view(b, t, n_head, c // n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd)
        self.down = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention()
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([Block() for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("out.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, vocab_size), targets.view(-1))


model = GPT()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
train_model = model if args.no_compile else torch.compile(model, backend=BACKEND)

for it in range(max_iters):
    x, y = get_batch()
    loss = train_model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    print(f"iter {it} loss {loss.item():.4f}")
