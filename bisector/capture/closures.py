"""The closure an optimizer step is given (``optimizer.step(closure)``: LBFGS, Lightning's
automatic optimization), reached from a step pre-hook, where the forward and backward run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def wrap_closure(args: tuple, kwargs: dict, wrap: Callable[[Callable], Callable]) -> Any:
    """For a step pre-hook's ``(args, kwargs)`` (``args[0]`` is the optimizer): the same with
    the step's closure replaced by ``wrap(closure)``, as the hook returns them; None when the
    step has no closure."""
    positional = len(args) > 1 and callable(args[1])
    closure = args[1] if positional else kwargs.get("closure")
    if not callable(closure):
        return None
    if positional:
        return (args[0], wrap(closure), *args[2:]), kwargs
    return args, {**kwargs, "closure": wrap(closure)}
