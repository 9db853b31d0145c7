"""bisector inside a transformers Trainer run, with a callback: step digests of every run, and
every op of a window of steps.

    python examples/hf_trainer_callback.py --name a
    python examples/hf_trainer_callback.py --name b
    bisector diff a.digests b.digests   # the first step whose values differ, and which
    bisector diff a.trace b.trace       # the first op that differs in the recorded window

A tiny Llama from a config learns random token sequences (CPU, offline). The data collator
hides a random ~15% of the positions from the loss with a generator of its own, which
`--unseeded` seeds from the system (Trainer's `seed` does not reach it): the runs then differ
from step 0, and the trace names the draw. By default that generator is seeded and the runs are
bitwise identical.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from bisector.integrations.transformers import BisectorTrainerCallback  # noqa: E402


class RandomTokens(Dataset):
    def __init__(self, count: int, length: int, vocab: int):
        self.ids = torch.randint(
            0, vocab, (count, length), generator=torch.Generator().manual_seed(1)
        )

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


class MaskingCollator:
    """Stacks the examples and leaves a random ~15% of the positions out of the loss."""

    def __init__(self, seeded: bool):
        self.generator = torch.Generator()
        if seeded:
            self.generator.manual_seed(0)
        else:
            self.generator.seed()  # from the system: different in every run

    def __call__(self, examples):
        input_ids = torch.stack([e["input_ids"] for e in examples])
        labels = input_ids.clone()
        labels[torch.rand(input_ids.shape, generator=self.generator) > 0.85] = -100
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="a", help="files written: NAME.digests, NAME.trace")
    parser.add_argument("--unseeded", action="store_true", help="the collator's draws differ")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-callback-"),
        max_steps=args.steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    callback = BisectorTrainerCallback(
        f"{args.name}.digests", record=f"{args.name}.trace", record_from=0, record_steps=1
    )
    trainer = Trainer(
        model=LlamaForCausalLM(config),
        args=training,
        train_dataset=RandomTokens(64, 32, config.vocab_size),
        data_collator=MaskingCollator(seeded=not args.unseeded),
        callbacks=[callback],
    )
    trainer.train()


if __name__ == "__main__":
    main()
