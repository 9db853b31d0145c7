"""Values that leave the recorded ops without an op reading them: kept, so they always count.

A difference that nothing reads and that is freed before the run ends is scratch (see
analysis/evidence.py). But a script can take a value out of torch with no aten call: it saves
it (``torch.save``), or turns it into Python or numpy data (``.tolist()``, ``.numpy()``, which
``np.asarray`` also uses), and then drops the tensor. Such a value is one of the script's outputs:
while recording, these three are wrapped so that the value they take out is noted as kept, and
its difference always counts.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from bisector.torch_api import tree_leaves

_OURS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


class Escapes:
    """Wraps ``torch.save``, ``Tensor.tolist`` and ``Tensor.numpy`` while installed.

    Args:
        keep: called with each tensor taken out of torch (by the recording process).
    """

    def __init__(self, keep: Callable[[torch.Tensor], None]):
        self._keep = keep
        self._originals: dict[tuple[Any, str], Any] = {}

    def install(self) -> None:
        if self._originals:
            return
        keep = self._keep

        def wrapped(original):
            @functools.wraps(original)
            def call(obj, *args, **kwargs):
                # bisector's own saves and read-backs (snapshots, fingerprints) are not outputs
                if not sys._getframe(1).f_code.co_filename.startswith(_OURS):
                    for leaf in tree_leaves(obj):
                        if isinstance(leaf, torch.Tensor):
                            keep(leaf)
                return original(obj, *args, **kwargs)

            return call

        for owner, name in ((torch, "save"), (torch.Tensor, "tolist"), (torch.Tensor, "numpy")):
            original = getattr(owner, name)
            self._originals[(owner, name)] = original
            setattr(owner, name, wrapped(original))

    def remove(self) -> None:
        for (owner, name), original in self._originals.items():
            setattr(owner, name, original)
        self._originals = {}
