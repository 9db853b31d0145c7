"""A PyTorch Lightning callback: step digests of every run, and a trace of a window of steps.

    from bisector.integrations.lightning import BisectorCallback

    trainer = Trainer(callbacks=[BisectorCallback("run-a.digests")], ...)
    trainer.fit(model, data)
    # run again with "run-b.digests", then: bisector diff run-a.digests run-b.digests

``BisectorCallback("run.digests", record="run.trace", record_from=120, record_steps=2)`` also
records every op of steps 120 and 121 (``bisector diff a.trace b.trace``). Works with
``lightning.pytorch`` (or, where only that is installed, ``pytorch_lightning``).
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    from pytorch_lightning import Callback  # type: ignore[assignment]

from bisector.integrations import StepWindow


class BisectorCallback(Callback):
    """Step digests (``bisector.watch``) of the LightningModule and its first optimizer, and
    optionally a trace of a window of steps. Arguments as ``StepWindow``'s."""

    def __init__(self, digests="run.digests", every=1, record=None, record_from=0, record_steps=2):
        super().__init__()
        self.window = StepWindow(digests, every, record, record_from, record_steps)

    def on_train_start(self, trainer, pl_module) -> None:
        optimizers = trainer.optimizers
        optimizer = optimizers[0] if optimizers else None
        self.window.start(pl_module, optimizer, rank=trainer.global_rank)

    def on_train_end(self, trainer, pl_module) -> None:
        self.window.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.window.close(exception)
