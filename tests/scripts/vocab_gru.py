"""Tiny word-level GRU language model on an inline corpus.

Cause: the vocabulary is `list(set(words))`, whose order depends on the per-process string hash
seed (PYTHONHASHSEED unset), so word ids, and with them the embedding rows used, change per run.
Twin: `--sorted` builds the vocabulary with sorted(set(words)).
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--sorted", action="store_true")
args = parser.parse_args()

text = """the cat sat on the mat . the dog sat on the log .
a bird flew over the house . the cat saw the bird and the dog saw the cat .
we went to the market and bought bread and milk . the sun was warm on the hill ."""
words = text.split()
vocab = sorted(set(words)) if args.sorted else list(set(words))  # SOURCE
word_to_idx = {w: i for i, w in enumerate(vocab)}
ids = torch.tensor([word_to_idx[w] for w in words])


class LanguageModel(nn.Module):
    def __init__(self, ntokens, emb=32, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(ntokens, emb)
        self.rnn = nn.GRU(emb, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, ntokens)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.decoder(out)


torch.manual_seed(0)
model = LanguageModel(len(vocab))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
seq_len = 8
inputs = torch.stack([ids[i:i + seq_len] for i in range(0, len(ids) - seq_len - 1, seq_len)])
targets = torch.stack([ids[i + 1:i + seq_len + 1] for i in range(0, len(ids) - seq_len - 1, seq_len)])
for step in range(3):
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
