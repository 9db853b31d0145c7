"""Callbacks for the frameworks people train with: step digests of every run, and on request a
trace of a window of steps, without touching the training loop.

    from bisector.integrations.lightning import BisectorCallback        # PyTorch Lightning
    from bisector.integrations.transformers import BisectorTrainerCallback  # HF Trainer

Both drive a ``StepWindow`` from the framework's hooks: when training starts, the digests
(``bisector.watch`` on the model and its optimizer) and the recorder (``bisector.record``),
which records every op from optimizer step ``record_from`` for ``record_steps`` steps. Compare
two runs with ``bisector diff a.digests b.digests`` (then ``bisector diff a.trace b.trace`` for
the ops of the window). In a job of several processes, ``{rank}`` in a path is replaced by the
process's rank.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bisector.capture.digester import Watch
from bisector.capture.recorder import Recorder, RecordOptions


class StepWindow:
    """Step digests of a training run and, on request, a trace of a window of its steps.

    Args:
        digests: the digest file to write ("" or None: no digests).
        every: digest one optimizer step in ``every``.
        record: the trace file of the window (None: no trace).
        record_from: the optimizer step (counted from 0) at which the trace starts.
        record_steps: optimizer steps the trace records.
    """

    def __init__(
        self,
        digests: str | os.PathLike | None = "run.digests",
        every: int = 1,
        record: str | os.PathLike | None = None,
        record_from: int = 0,
        record_steps: int = 2,
    ):
        if record_steps < 1 or record_from < 0 or every < 1:
            raise ValueError("record_steps and every must be >= 1, record_from >= 0")
        self.digests = digests
        self.every = every
        self.record = record
        self.record_from = record_from
        self.record_steps = record_steps
        self.watch: Watch | None = None
        self.recorder: Recorder | None = None
        self._rank = 0

    def start(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0
    ) -> None:
        """Training starts: begin the digests of ``model`` stepped by ``optimizer``, and the
        recorder, which records from step ``record_from`` for ``record_steps`` steps (its
        trace numbers the steps as training does)."""
        self._rank = rank
        if self.digests and self.watch is None:
            self.watch = Watch(model, optimizer, self._path(self.digests), self.every).start()
        if self.record and self.recorder is None:
            options = RecordOptions(
                steps=self.record_from + self.record_steps, start_step=self.record_from
            )
            self.recorder = Recorder(self._path(self.record), options)
            self.recorder.__enter__()
            # Frameworks call the model's submodules, not the model: name them under it.
            self.recorder.name_modules(model)

    def close(self, error: BaseException | None = None) -> None:
        """Training ends (``error``: it ended by raising): finish both files."""
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            if error is None:
                recorder.__exit__(None, None, None)
            else:
                recorder.__exit__(type(error), error, error.__traceback__)
        if self.watch is not None:
            watch, self.watch = self.watch, None
            if error is None:
                watch.close()
            else:
                watch.close("failed", f"{type(error).__name__}: {error}")

    def _path(self, path: str | os.PathLike) -> Path:
        return Path(str(path).replace("{rank}", str(self._rank)))
