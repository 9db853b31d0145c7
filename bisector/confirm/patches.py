"""The verdict's fix as a change to the user's script: a unified diff, never applied to it.

``find --fix`` writes the patch, runs the pair again on a patched copy of the script's source
(the child runs it in the script's place: same path, folder, argv), and says whether the patched
script is bitwise reproducible over the steps recorded, and what the change costs per step.

Only fixes that are process-wide switches have a patch: a few lines placed before the script's
first statement after its imports. A fix that lives elsewhere (how a model is loaded, a
DataLoader's workers, torch.compile) is described, not patched.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from pathlib import Path

# The lines each patchable fix adds (``torch`` imported), and whether they need ``os``.
_LINES: dict[str, list[str]] = {
    "deterministic": ["torch.use_deterministic_algorithms(True)"],
    "single-thread": ["torch.set_num_threads(1)"],
    "cudnn": [
        "torch.backends.cudnn.deterministic = True",
        "torch.backends.cudnn.benchmark = False",
    ],
    "no-tf32": [
        "torch.backends.cuda.matmul.allow_tf32 = False",
        "torch.backends.cudnn.allow_tf32 = False",
        'torch.set_float32_matmul_precision("highest")',
    ],
    "sdpa-math": [
        "torch.backends.cuda.enable_flash_sdp(False)",
        "torch.backends.cuda.enable_mem_efficient_sdp(False)",
        "torch.backends.cuda.enable_cudnn_sdp(False)",
    ],
    "seed-everything": [
        "random.seed(0)",
        "numpy.random.seed(0)",
        "torch.manual_seed(0)",
    ],
}
_CUBLAS = 'os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")'
_MARK = "# bisector --fix: bitwise reproducible runs"


@dataclass
class Patch:
    """A change to one file of the user's.

    Attributes:
        intervention: the fix it stands for.
        path: the file changed.
        original: its text.
        patched: its text with the change.
        diff: the unified diff (``--- a/train.py``, ``+++ b/train.py``).
        line: the line before which the change goes.
        notes: what the patch does not do (``PYTHONHASHSEED`` cannot be set from inside).
    """

    intervention: str
    path: Path
    original: str
    patched: str
    diff: str
    line: int
    notes: list[str]


# seed-everything narrowed to the generators known to differ (``Place.unseeded``).
_SEED_LINES = {
    "Python's random": ("random", "random.seed(0)"),
    "numpy.random": ("numpy", "numpy.random.seed(0)"),
    "torch": ("torch", "torch.manual_seed(0)"),
}


def make_patch(
    intervention: str, script: str | Path, cuda: bool, unseeded: tuple[str, ...] = ()
) -> Patch | None:
    """The patch for a fix, or None if the fix is not a process-wide switch (or the script
    cannot be read or parsed). ``unseeded``: for seed-everything, the generators known to
    differ (only they are seeded; all of them when none is known)."""
    lines = list(_LINES.get(intervention, ()))
    if not lines:
        return None
    path = Path(script)
    try:
        original = path.read_text()
        tree = ast.parse(original)
    except (OSError, SyntaxError, ValueError):
        return None
    line = first_statement(tree)
    if line is None:
        return None
    imported = _top_level_imports(tree)
    notes = []
    needed = ["torch"]
    narrowed = [_SEED_LINES[name] for name in unseeded if name in _SEED_LINES]
    if intervention == "seed-everything" and narrowed:
        needed = [module for module, _ in narrowed]
        lines = [line for _, line in narrowed]
    elif intervention == "seed-everything":
        needed = ["random", "numpy", "torch"]
        notes.append(
            "PYTHONHASHSEED cannot be set from inside the script: set it to 0 in the "
            "environment if the order of sets or dicts of strings matters"
        )
    if intervention == "deterministic" and cuda:
        needed = ["os", *needed]
        lines.insert(0, _CUBLAS)  # before cuBLAS starts: before the first CUDA matmul
    added = [f"import {name}" for name in needed if name not in imported]
    block = [_MARK, *added, *lines, ""]
    text = original.splitlines(keepends=True)
    newline = "\n"
    patched = "".join(text[: line - 1]) + newline.join(block) + newline + "".join(text[line - 1 :])
    diff = "".join(
        difflib.unified_diff(
            original.splitlines(keepends=True),
            patched.splitlines(keepends=True),
            fromfile=f"a/{path.name}",
            tofile=f"b/{path.name}",
        )
    )
    return Patch(intervention, path, original, patched, diff, line, notes)


def first_statement(tree: ast.Module) -> int | None:
    """Line of the first top-level statement after the docstring and the imports (and
    ``from __future__``), where the switches go; the end of the file if there is none."""
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if docstring or isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        decorators = getattr(node, "decorator_list", None)
        return decorators[0].lineno if decorators else node.lineno
    last = tree.body[-1] if tree.body else None
    return (last.end_lineno or last.lineno) + 1 if last is not None else 1


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Names bound by ``import x`` at the top level (``import numpy as np`` binds ``np``)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is None:
                    names.add(alias.name.split(".")[0])
    return names
