"""A tiny Llama causal LM trained for 3 steps by transformers.Trainer on random token ids (CPU).

Planted source (CPU, data): the script's own data collator (MaskingCollator) hides a random
subset of positions from the loss (label -100). It draws them with torch.rand(...,
generator=self.generator), and in the planted variant that generator is seeded from the OS
(torch.Generator().seed()), so the labels, hence the loss and gradients, differ run to run.
Trainer's seed=0 (set_seed) does not touch this private generator.

Expected first differing op: aten.rand.generator on the draw line in MaskingCollator.__call__
(line 78, marked SOURCE), outside any module (module ""), phase other (data collation, before
the forward of step 0), step 0.

--twin: the collator's generator is seeded with manual_seed(0); nothing else changes.
--load {config,from_config,pretrained}: LlamaForCausalLM(config) / AutoModelForCausalLM
.from_config(config) / save_pretrained to a temp folder then from_pretrained (all offline).
--device cuda: Trainer's bf16 mixed precision with the default (sdpa) attention (smoke-run on an
H200: all --load values train; its digests were not measured).

Truth (statehash.py, CPU): planted 3/3 distinct digests for each --load; twin 3/3 equal for each --load.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

parser = argparse.ArgumentParser()
parser.add_argument("--load", choices=["config", "from_config", "pretrained"], default="config")
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
parser.add_argument("--twin", action="store_true", help="seed the collator's generator")
parser.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
args = parser.parse_args()

torch.manual_seed(0)

SEQ_LEN = args.seq_len


class RandomTokens(Dataset):
    """Fixed random token sequences (seeded)."""

    def __init__(self, n, seq_len, vocab_size):
        g = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(0, vocab_size, (n, seq_len), generator=g)

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


class MaskingCollator:
    """Stacks the examples and keeps only a random ~85% of the positions in the labels."""

    def __init__(self, keep=0.85, seeded=False):
        self.keep = keep
        self.generator = torch.Generator()
        if seeded:
            self.generator.manual_seed(0)
        else:
            self.generator.seed()

    def __call__(self, examples):
        input_ids = torch.stack([e["input_ids"] for e in examples])
        labels = input_ids.clone()
        draw = torch.rand(input_ids.shape, generator=self.generator)  # SOURCE
        labels[draw > self.keep] = -100
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
        }


# On the GPU, heads of 64 and long sequences: the attention backward then spans many key blocks
# (with heads of 16 and 512 tokens, three runs on an H200 were bitwise equal).
wide = args.device == "cuda"
config = LlamaConfig(
    vocab_size=256,
    hidden_size=512 if wide else 64,
    intermediate_size=1024 if wide else 128,
    num_hidden_layers=2,
    num_attention_heads=8 if wide else 4,
    num_key_value_heads=4 if wide else 2,
    max_position_embeddings=max(64, SEQ_LEN),
)

if args.load == "config":
    model = LlamaForCausalLM(config)
elif args.load == "from_config":
    model = AutoModelForCausalLM.from_config(config)
else:
    saved = tempfile.mkdtemp(prefix="hf_trainer_model_")
    LlamaForCausalLM(config).save_pretrained(saved)
    model = AutoModelForCausalLM.from_pretrained(saved)

use_cuda = args.device == "cuda"
training_args = TrainingArguments(
    output_dir=tempfile.mkdtemp(prefix="hf_trainer_out_"),
    max_steps=3,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    report_to=[],
    save_strategy="no",
    logging_strategy="no",
    use_cpu=not use_cuda,
    bf16=use_cuda,
    seed=0,
    dataloader_num_workers=0,
    disable_tqdm=True,
)

trainer = Trainer(
    model=model,
    args=training_args,
    train_dataset=RandomTokens(64, SEQ_LEN, config.vocab_size),
    data_collator=MaskingCollator(seeded=args.twin),
)
trainer.train()
