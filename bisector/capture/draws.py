"""Where the script draws from Python's and numpy's global generators, which torch never sees.

A value drawn from ``random`` or ``numpy.random`` (a dropout rate from a sweep helper, a crop
offset, a shuffled file list) reaches torch only as an argument or as data, so the op that
first differs cannot say where the value came from. While a run is recorded, the module-level
functions of both generators (and ``numpy.random.default_rng``, which seeds itself from the
system when given no seed) are wrapped to note the first lines of the user's code that call
them, with a count, and the seed calls with their argument. A report then points at the draw
itself. The wrappers call the original functions with the same arguments: what is drawn does
not change.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable
from typing import Any

from bisector.capture.lines import Locator

MAX_SITES = 16  # distinct lines kept per generator; later ones are counted only

# The generators watched: the name used in reports, and where their module-level functions live.
PYTHON, NUMPY = "random", "numpy.random"
_NOT_DRAWS = {"getstate", "setstate", "get_state", "set_state"}  # read or set the state only


def _python_functions() -> dict[str, Callable]:
    """``random``'s module-level functions bound to its hidden global instance."""
    instance = getattr(random, "_inst", None)
    return {
        name: value
        for name, value in vars(random).items()
        if not name.startswith("_")
        and name not in _NOT_DRAWS
        and getattr(value, "__self__", None) is instance
    }


def _numpy_functions() -> dict[str, Callable]:
    """``numpy.random``'s legacy module-level functions (bound to its global RandomState), and
    ``default_rng`` (a new generator, seeded from the system when given no seed)."""
    try:
        import numpy as np
    except ImportError:
        return {}
    state = getattr(np.random.mtrand, "_rand", None)
    found = {
        name: value
        for name, value in vars(np.random).items()
        if not name.startswith("_")
        and name not in _NOT_DRAWS
        and getattr(value, "__self__", None) is state
    }
    found["default_rng"] = np.random.default_rng
    return found


class DrawSites:
    """Notes the user's lines that draw from (or seed) Python's and numpy's global generators.

    Args:
        locator: finds the user's frame of a call (see lines.py).
        step: returns the optimizer steps completed so far (the step a draw happens in).
    """

    def __init__(self, locator: Locator, step: Callable[[], int]) -> None:
        self._locator = locator
        self._step = step
        self._sites: dict[str, dict[str, list]] = {PYTHON: {}, NUMPY: {}}
        self._seeds: dict[str, list[list]] = {PYTHON: [], NUMPY: []}
        self._patched: list[tuple[Any, str, Any]] = []
        self._pid = os.getpid()  # draws in processes the script forks (workers) are not noted

    def install(self) -> None:
        import numpy as np

        for generator, namespace, functions in (
            (PYTHON, random, _python_functions()),
            (NUMPY, np.random, _numpy_functions()),
        ):
            for name, function in functions.items():
                setattr(namespace, name, self._wrap(generator, name, function))
                self._patched.append((namespace, name, function))

    def remove(self) -> None:
        """Put the original functions back; safe to call twice."""
        for namespace, name, function in reversed(self._patched):
            setattr(namespace, name, function)
        self._patched = []

    def summary(self) -> dict[str, dict[str, list]]:
        """For the trace's footer: per generator, ``sites`` ([line, function, calls, first
        step], in the order first seen) and ``seeds`` ([line, repr of the seed argument])."""
        return {
            generator: {"sites": list(self._sites[generator].values()), "seeds": seeds}
            for generator, seeds in self._seeds.items()
            if self._sites[generator] or seeds
        }

    def _wrap(self, generator: str, name: str, function: Callable) -> Callable:
        seeding = name == "seed" or name == "default_rng"

        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            with contextlib.suppress(Exception):  # a note never breaks the user's draw
                self._note(generator, name, seeding, args, kwargs)
            return function(*args, **kwargs)

        return wrapped

    def _note(self, generator: str, name: str, seeding: bool, args, kwargs) -> None:
        if os.getpid() != self._pid:
            return
        user, library, _ = self._locator.locate(3)
        line = self._locator.describe(user, library)
        if seeding:
            seed = args[0] if args else kwargs.get("seed", kwargs.get("a"))
            if name == "seed":  # seeds the global generator (from the system when None)
                seeds = self._seeds[generator]
                if len(seeds) < MAX_SITES:
                    seeds.append([line, f"{name}({seed!r})"[:80]])
                return
            if seed is not None:  # default_rng(seed): a generator of its own, seeded
                return
            # default_rng(None) seeds itself from the system: a draw of its own
        sites = self._sites[generator]
        site = sites.get(line)
        if site is not None:
            site[2] += 1
        elif len(sites) < MAX_SITES:
            sites[line] = [line, name, 1, self._step()]
