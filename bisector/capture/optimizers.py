"""Which of the script's optimizers have stepped since recording began.

A run records ``steps`` optimizer steps, counted over every optimizer. A GAN steps its critic
twice before its generator once: two steps alone would leave the generator's training out. So
a run goes on past its steps until every optimizer of the script has stepped, for at most
``schema.MORE_STEPS_FOR_OPTIMIZERS`` steps more (the Recorder and the step digests alike).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import torch

from bisector.capture.replicas import job_rank
from bisector.words import counted


def parameters_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def live_optimizers() -> list[torch.optim.Optimizer]:
    """Every optimizer the process holds (the garbage collector's objects; by type, not
    isinstance: some of torch's own objects warn on ``__class__``)."""
    return [obj for obj in gc.get_objects() if issubclass(type(obj), torch.optim.Optimizer)]


class Stepped:
    """The optimizers seen stepping, and the script's optimizers that have not."""

    def __init__(self) -> None:
        self._stepped: weakref.WeakSet = weakref.WeakSet()
        self._all: list[weakref.ref] | None = None

    def add(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer`` finished a step."""
        self._stepped.add(optimizer)

    @property
    def searched(self) -> bool:
        """Whether ``unstepped`` looked for the script's optimizers yet."""
        return self._all is not None

    def unstepped(self) -> list[torch.optim.Optimizer]:
        """The script's optimizers with parameters of which none was stepped (by it, or by
        another optimizer over the same parameters: accelerate's ``AcceleratedOptimizer`` is an
        Optimizer whose own step no hook sees, the one it wraps steps). They are looked for
        once, in the garbage collector's objects: an optimizer made later is not waited for.
        None in a job of several ranks: every rank must stop at the same step (the collectives
        of one rank that went on would wait for ranks that stopped)."""
        if job_rank() is not None:
            return []
        if self._all is None:
            self._all = [weakref.ref(o) for o in live_optimizers() if parameters_of(o)]
        stepped = {id(p) for o in self._stepped for p in parameters_of(o)}
        alive = (ref() for ref in self._all)
        return [
            o
            for o in alive
            if o is not None and not any(id(p) in stepped for p in parameters_of(o))
        ]

    def described(self, name_of: Callable[[torch.Tensor], str | None]) -> list[str]:
        """The unstepped optimizers in words, for a footer ("SGD of 2 parameters, D.fc.weight
        first"; ``name_of`` names a parameter, or None); none before ``unstepped`` ran."""
        if not self.searched:
            return []
        described = []
        for optimizer in self.unstepped():
            params = parameters_of(optimizer)
            name = name_of(params[0])
            first = f", {name} first" if name else ""
            size = counted(len(params), "parameter")
            described.append(f"{type(optimizer).__name__} of {size}{first}")
        return described
