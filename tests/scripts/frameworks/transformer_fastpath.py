"""Self-training of a document classifier on nn.TransformerEncoder; pseudo-labels by the fast path.

What it trains: documents of 8 chunks x 8 tokens (vocab 100), 16 classes. `embed` (token +
position embeddings, width 32) -> `encoder` (nn.TransformerEncoder, 2 layers, nhead 4,
dim_feedforward 64, batch_first) -> `head` (MultiSampleDocHead: 32 dropout samples of the token
vectors, Linear 32 -> 16 class scores per token and sample, summed per document). Each of 3 steps:
the model predicts pseudo-labels for an unlabeled batch of 32 documents in `model.eval()` under
`torch.inference_mode()` (PyTorch's fast path: each layer runs as
aten._transformer_encoder_layer_fwd, checked with a TorchDispatchMode), then trains in
`model.train()` on a labeled batch of 32 documents plus the pseudo-labeled batch (AdamW).

Planted source: `head` sums the 32 x 2048 = 65536 rows of 16 class scores per document with
`doc_scores.index_put_((doc,), scores, accumulate=True)`; on a CPU with >= 2 threads these
rows are added with atomics, so the document scores differ in their last bits from run to run.
Expected first differing op: aten.index_put_.default, module `head`, step 0, line marked
`# SOURCE`, first reached in the pseudo-labeling pass (eval, inference_mode: phase forward, or
whatever bisector calls a no-grad pass before the training forward); the training forward then
runs the same line again.
`--twin`: the document sums use `index_add_` (bitwise reproducible on this CPU).
Truth (statehash.py, 2 CPU threads): planted 3 runs -> 3 different digests; twin 3 runs -> 1 digest.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--twin", action="store_true", help="deterministic document sums (index_add_)")
args = parser.parse_args()

VOCAB, SEQ, D_MODEL, N_CLASSES = 100, 8, 32, 16
DOCS, CHUNKS = 32, 8
torch.manual_seed(0)


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.randn(SEQ, D_MODEL) * 0.02)

    def forward(self, tokens):
        return self.tok(tokens) + self.pos


class MultiSampleDocHead(nn.Module):
    """Multi-sample dropout: class scores of every token under `samples` dropout masks, averaged
    per document."""

    def __init__(self, samples=32, p=0.2, deterministic=False):
        super().__init__()
        self.samples = samples
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(D_MODEL, N_CLASSES)
        self.deterministic = deterministic

    def forward(self, h, doc, n_docs):
        tok = h.reshape(-1, h.shape[-1])                       # (chunks * SEQ, D)
        tok_doc = doc.repeat_interleave(h.shape[1])            # document of each token
        scores = self.fc(self.drop(tok.repeat(self.samples, 1)))
        index = tok_doc.repeat(self.samples)
        doc_scores = scores.new_zeros(n_docs, N_CLASSES)
        if self.deterministic:
            doc_scores.index_add_(0, index, scores)
        else:
            doc_scores.index_put_((index,), scores, accumulate=True)  # SOURCE
        counts = torch.bincount(index, minlength=n_docs).clamp(min=1)
        return doc_scores / counts.unsqueeze(1).to(scores.dtype)


class DocClassifier(nn.Module):
    def __init__(self, deterministic):
        super().__init__()
        self.embed = Embed()
        layer = nn.TransformerEncoderLayer(D_MODEL, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = MultiSampleDocHead(deterministic=deterministic)

    def forward(self, tokens, doc, n_docs):
        return self.head(self.encoder(self.embed(tokens)), doc, n_docs)


def make_batch(g):
    """DOCS documents of CHUNKS chunks each; chunks shuffled, labels from a keyword per class."""
    labels = torch.randint(0, N_CLASSES, (DOCS,), generator=g)
    doc = torch.arange(DOCS).repeat_interleave(CHUNKS)
    doc = doc[torch.randperm(len(doc), generator=g)]
    tokens = torch.randint(N_CLASSES, VOCAB, (len(doc), SEQ), generator=g)
    keyword = torch.rand(len(doc), SEQ, generator=g) < 0.2
    tokens = torch.where(keyword, labels[doc].unsqueeze(1), tokens)
    return tokens, doc, labels


model = DocClassifier(deterministic=args.twin)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
data_gen = torch.Generator().manual_seed(1)

for step in range(3):
    x_l, doc_l, y_l = make_batch(data_gen)
    x_u, doc_u, _ = make_batch(data_gen)

    # pseudo-labels from the current model (inference fast path)
    model.eval()
    with torch.inference_mode():
        probs = model(x_u, doc_u, DOCS).softmax(dim=1)
        conf, pseudo = probs.max(dim=1)
    pseudo, weight = pseudo.clone(), (conf >= conf.median()).float().clone()

    model.train()
    loss_l = F.cross_entropy(model(x_l, doc_l, DOCS), y_l)
    loss_u = (F.cross_entropy(model(x_u, doc_u, DOCS), pseudo, reduction="none") * weight).mean()
    loss = loss_l + 0.5 * loss_u
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.4f} (labeled {loss_l.item():.4f})")
