"""The layers of the package import each other one way only (see docs/how-it-works.md): the
analysis reads traces through the trace's vocabulary (bisector/schema.py), never the recorder;
the file formats stand alone; the recorder and the runner do not reach into confirmation; and
no module uses another's private names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bisector"
FORMATS = ("trace", "records", "digests", "checkpoint", "safetensors_reader", "tensor_diff")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, at any depth (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _modules(*parts: str) -> list[Path]:
    path = PACKAGE.joinpath(*parts)
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _offending(files: list[Path], forbidden: str) -> list[str]:
    return [
        f"{file.relative_to(PACKAGE.parent)} imports {module}"
        for file in files
        for module, _ in _imports(file)
        if module == forbidden or module.startswith(forbidden + ".")
    ]


def test_the_analysis_does_not_import_the_recorder():
    assert _offending(_modules("analysis"), "bisector.capture") == []


@pytest.mark.parametrize("name", FORMATS)
def test_file_formats_do_not_import_the_analysis(name):
    files = _modules(name)
    assert _offending(files, "bisector.analysis") == []
    assert _offending(files, "bisector.capture") == []


@pytest.mark.parametrize("parts", [("capture",), ("runner",)])
def test_the_recorder_and_the_runner_do_not_import_confirmation(parts):
    assert _offending(_modules(*parts), "bisector.confirm") == []


def test_the_vocabulary_imports_nothing_of_ours():
    assert [m for m, _ in _imports(PACKAGE / "schema.py") if m.startswith("bisector")] == []


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{file.relative_to(PACKAGE.parent)}: from {module} import {name}"
        for file in _modules("")
        for module, names in _imports(file)
        if module.startswith("bisector")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("name", ["compiled", "cuda_graphs"])
def test_boundary_helpers_drive_the_recorder_through_its_public_boundary(name):
    text = (PACKAGE / "capture" / f"{name}.py").read_text()
    assert re.findall(r"\b(?:recorder|boundary)\._\w+", text) == []


def test_every_private_torch_name_is_there_and_used_only_through_torch_api():
    from bisector import torch_api

    assert torch_api.missing() == []
    private = re.compile(r"torch\._C\b|torch\.utils\._|from torch\._|import torch\._")
    users = [
        str(file.relative_to(PACKAGE.parent))
        for file in _modules("")
        if file.name != "torch_api.py" and private.search(file.read_text())
    ]
    assert users == []


def test_the_child_spec_travels_as_json_and_names_each_ranks_files(tmp_path):
    from bisector.runfiles import ChildSpec, RunFiles

    template = RunFiles.per_rank(tmp_path / "a.trace").output
    assert template.name == "a.rank{rank}.trace"
    spec = ChildSpec("train.py", ["--lr", "0.1"], trace=str(template), steps=3, capture=[5, 9])
    back = ChildSpec.from_json(spec.to_json())
    assert back == spec
    mine = back.for_rank(1)
    assert mine.trace == str(tmp_path / "a.rank1.trace") and mine.capture == [5, 9]
    files = RunFiles(tmp_path / "a.rank1.trace")
    assert files.status.name == "a.rank1.trace.status"
    assert files.snapshot(2) == tmp_path / "a.rank1.steps" / "step-2.safetensors"
    assert RunFiles(template).log() == tmp_path / "a.log"
    assert RunFiles(template).log(nnodes=2, node_rank=1) == tmp_path / "a.node1.log"
