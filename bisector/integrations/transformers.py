"""A transformers ``TrainerCallback``: step digests of every run, and a trace of a window of
steps.

    from bisector.integrations.transformers import BisectorTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[BisectorTrainerCallback("run-a.digests")])
    trainer.train()
    # run again with "run-b.digests", then: bisector diff run-a.digests run-b.digests

``BisectorTrainerCallback("run.digests", record="run.trace", record_from=120)`` also records
every op of steps 120 and 121 (``bisector diff a.trace b.trace``).
"""

from __future__ import annotations

from transformers import TrainerCallback

from bisector.integrations import StepWindow


class BisectorTrainerCallback(TrainerCallback):
    """Step digests (``bisector.watch``) of the Trainer's model and optimizer, and optionally a
    trace of a window of steps. Arguments as ``StepWindow``'s."""

    def __init__(self, digests="run.digests", every=1, record=None, record_from=0, record_steps=2):
        self.window = StepWindow(digests, every, record, record_from, record_steps)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        self.window.start(model, optimizer, rank=args.process_index)

    def on_train_end(self, args, state, control, **kwargs):
        self.window.close()
