"""Word-level LSTM language model, after pytorch/examples word_language_model (no planted cause).

Expected deterministic: 2-layer nn.LSTM on CPU (oneDNN mkldnn_rnn_layer), seeded dropout, SGD with
clip_grad_norm_, then an evaluate() pass under model.eval() and torch.no_grad(). No twin.
"""

import torch
from torch import nn

torch.manual_seed(0)
ntokens, bptt, batch_size = 200, 16, 8
gen = torch.Generator().manual_seed(1)
corpus = torch.randint(0, ntokens, (3000,), generator=gen)  # stands in for a tokenized text


def batchify(data, bsz):
    return data[: data.size(0) // bsz * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp=32, nhid=64, nlayers=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz):
        return tuple(self.decoder.weight.new_zeros(2, bsz, 64) for _ in range(2))


train_data, val_data = batchify(corpus[:2400], batch_size), batchify(corpus[2400:], 4)
model = RNNModel(ntokens)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=5.0)


def evaluate(data_source):
    model.eval()
    total_loss, hidden = 0.0, model.init_hidden(4)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i)
            output, hidden = model(data, hidden)
            total_loss += len(data) * criterion(output, targets).item()
    return total_loss / (len(data_source) - 1)


model.train()
hidden = model.init_hidden(batch_size)
for batch, i in enumerate(range(0, 5 * bptt, bptt)):
    data, targets = get_batch(train_data, i)
    hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
    output, hidden = model(data, hidden)
    loss = criterion(output, targets)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    optimizer.step()
    print(f"batch {batch} loss {loss.item():.6f}")
print(f"valid loss {evaluate(val_data):.6f}")
