"""Generate docs/api.md, the Python API reference, from bisector's signatures and docstrings.

    python docs/gen_api.py           # write docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is not what this would write

Which objects are documented, and in what order, is the list ``SECTIONS`` below; what is said
about each comes from the code: signatures (``inspect``), dataclass fields (their annotations and
defaults as written in the source), and Google-style docstrings (Args, Returns, Raises,
Attributes, Example). Sections whose module does not exist yet say so instead of failing.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
REGENERATE = "python docs/gen_api.py"
# Signatures longer than this are written one parameter per line.
_WIDTH = 92


@dataclasses.dataclass(frozen=True)
class Section:
    """One part of the page: a title, a sentence, and the objects it documents, each as
    ``(name shown, where it is defined)``; or whole modules (``modules``), every public
    function and class they define, documented when the module can be imported."""

    title: str
    intro: str
    objects: tuple[tuple[str, str], ...] = ()
    modules: tuple[str, ...] = ()


SECTIONS = (
    Section(
        "Running and comparing",
        "`find` runs a script twice and compares the runs; `diff` compares what two finished "
        "runs left behind; `record` and `watch` write from inside your own script. Options "
        "travel as small frozen dataclasses.",
        (
            ("bisector.find", "bisector.api.find"),
            ("bisector.api.FindOptions", "bisector.api.FindOptions"),
            ("bisector.runner.RunOptions", "bisector.runner.RunOptions"),
            ("bisector.runner.Launch", "bisector.runner.Launch"),
            ("bisector.confirm.ConfirmOptions", "bisector.confirm.ConfirmOptions"),
            ("bisector.diff", "bisector.api.diff"),
            ("bisector.record", "bisector.api.record"),
            ("bisector.watch", "bisector.api.watch"),
            ("bisector.checkpoint.diff_checkpoints", "bisector.checkpoint.diff_checkpoints"),
        ),
    ),
    Section(
        "Results",
        "Plain dataclasses. `to_json()` gives the JSON that `--json` writes: `schema` is an "
        "integer and keys are only ever added. What each field means on screen: "
        "[reading-a-report.md](reading-a-report.md).",
        (
            ("bisector.Report", "bisector.report.Report"),
            ("bisector.Source", "bisector.report.Source"),
            ("bisector.report.RunInfo", "bisector.report.RunInfo"),
            ("bisector.digests.DigestReport", "bisector.digests.DigestReport"),
            ("bisector.checkpoint.CheckpointReport", "bisector.checkpoint.CheckpointReport"),
            ("bisector.tensor_diff.TensorDiff", "bisector.tensor_diff.TensorDiff"),
        ),
    ),
    Section(
        "What `record` and `watch` return",
        "Both are context managers that install hooks on entry and remove them on exit, also "
        "when the code inside raises.",
        (
            ("bisector.capture.recorder.Recorder", "bisector.capture.recorder.Recorder"),
            ("bisector.capture.recorder.RecordOptions", "bisector.capture.recorder.RecordOptions"),
            ("bisector.capture.digester.Watch", "bisector.capture.digester.Watch"),
        ),
    ),
    Section(
        "Framework callbacks",
        "Step digests of every run, and every op of a window of steps, from the callbacks of "
        "PyTorch Lightning and the transformers Trainer (examples/lightning_callback.py, "
        "examples/hf_trainer_callback.py; docs/postmortem.md).",
        (
            (
                "bisector.integrations.lightning.BisectorCallback",
                "bisector.integrations.lightning.BisectorCallback",
            ),
            (
                "bisector.integrations.transformers.BisectorTrainerCallback",
                "bisector.integrations.transformers.BisectorTrainerCallback",
            ),
            ("bisector.integrations.StepWindow", "bisector.integrations.StepWindow"),
        ),
    ),
    Section(
        "Errors",
        "Every error bisector reports to a user is a `BisectorError` whose message is one line "
        "naming the problem and what to do. The CLI prints it as `bisector: error: ...` and "
        "exits with code 2; a failing script's own traceback is shown above it.",
        (
            ("bisector.BisectorError", "bisector.errors.BisectorError"),
            ("bisector.errors.ScriptError", "bisector.errors.ScriptError"),
            ("bisector.errors.TraceError", "bisector.errors.TraceError"),
            ("bisector.errors.MismatchError", "bisector.errors.MismatchError"),
            ("bisector.errors.Interrupted", "bisector.errors.Interrupted"),
        ),
    ),
    Section(
        "Testing",
        "A reproducibility gate for your own test suite.",
        modules=("bisector.testing", "bisector.pytest_plugin"),
    ),
)


# Meanings of fields and members whose docstring does not describe them yet, keyed
# "Class.name". A docstring entry, once written, wins; then the line here can go.
UNDOCUMENTED = {
    "RunInfo.name": '"A" or "B" (with a torchrun job: "A rank 0", "B rank 1", ...).',
    "RunInfo.trace": "path of the run's trace file (its digest file for a digests-only run).",
    "RunInfo.events": "events (aten calls and leaves) recorded; 0 for a digests-only run.",
    "RunInfo.steps": "optimizer steps completed while recording.",
    "RunInfo.status": 'how the run ended: "complete" (the script ended), "stopped" (after the '
    'steps asked for), "exited" (sys.exit with a non-zero code), "failed", "interrupted", or '
    '"incomplete" (the trace has no footer: the process was killed).',
    "RunInfo.complete": "the trace was written to its end (False: cut short, read up to its last "
    "complete chunk).",
    "RunInfo.exit_code": "the child process's exit status, when known.",
    "RunInfo.seconds": "wall time of the run.",
    "RunInfo.log": "the file holding the script's output (stdout and stderr).",
    "Report.sources_total": "sources found; `sources` lists at most the first 1000.",
    "Report.schema": "version of the JSON shape (an integer; keys are only ever added).",
    "DigestReport.paths": "the two digest files, A then B.",
    "DigestReport.schema": "version of the JSON shape.",
    "CheckpointReport.schema": "version of the JSON shape.",
    "RunOptions.capture_dir": "folder where the inputs of the ``capture`` events are saved "
    "(``event-<index>.pt``).",
    "Watch.path": "the digest file being written.",
    "Launch.torchrun_args": "the options passed to torchrun for this launch.",
}


# ---------------------------------------------------------------------------------------------
# Finding objects.


def _import_bisector() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bisector  # noqa: F401


def resolve(dotted: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _is_fixture(obj: Any) -> bool:
    return type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(
        obj, "_pytestfixturefunction"
    )


def module_members(module) -> list[tuple[str, Any]]:
    """Public functions, classes and pytest fixtures a module defines, in source order."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj) or _is_fixture(obj):
            found.append((name, obj))
    return found


# ---------------------------------------------------------------------------------------------
# Docstrings (Google style) to Markdown.

_SECTION = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Return|Raises|Yields|Example|Examples|Note|Notes):\s*$"
)
_ITEM = re.compile(r"^\**([\w.]+)(?:\s*\(([^)]*)\))?:\s*(.*)$")
_NAMED_SECTIONS = {"Args": "Arguments", "Arguments": "Arguments", "Attributes": "Attributes"}


def _rst(text: str) -> str:
    """RST inline literals (``x``) as Markdown code (`x`)."""
    return text.replace("``", "`")


@dataclasses.dataclass
class Docstring:
    prose: list[str]  # Markdown blocks
    sections: dict[str, Any]  # name -> list of (item, text) or a string


def parse_docstring(doc: str | None) -> Docstring:
    if not doc:
        return Docstring([], {})
    lines = inspect.cleandoc(doc).splitlines()
    prose_lines: list[str] = []
    raw_sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        match = _SECTION.match(line)
        if match:
            current = raw_sections.setdefault(match.group(1), [])
        elif current is not None and (not line.strip() or line.startswith((" ", "\t"))):
            current.append(line)
        else:
            current = None
            prose_lines.append(line)
    sections: dict[str, Any] = {}
    for name, body in raw_sections.items():
        body_text = textwrap.dedent("\n".join(body)).strip("\n")
        if name in ("Example", "Examples"):
            sections["Example"] = body_text
        elif name in ("Args", "Arguments", "Attributes", "Raises"):
            sections[_NAMED_SECTIONS.get(name, name)] = _items(body_text)
        else:
            sections["Returns" if name == "Return" else name] = _join(body_text)
    return Docstring(_prose_blocks(prose_lines), sections)


def _join(text: str) -> str:
    return _rst(" ".join(line.strip() for line in text.splitlines() if line.strip()))


def _items(text: str) -> list[tuple[str, str]]:
    """``name: text`` entries, continuation lines indented deeper."""
    items: list[list[str]] = []
    for line in text.splitlines():
        match = _ITEM.match(line) if line and not line[0].isspace() else None
        if match:
            items.append([match.group(1), match.group(3)])
        elif items and line.strip():
            items[-1][1] += " " + line.strip()
    return [(name, _rst(desc.strip())) for name, desc in items]


def _prose_blocks(lines: list[str]) -> list[str]:
    """Paragraphs joined into one line each; indented runs of lines become code blocks."""
    blocks: list[str] = []
    paragraph: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(_rst(" ".join(paragraph)))
            paragraph.clear()
        if code:
            while code and not code[-1].strip():
                code.pop()
            blocks.append("```python\n" + textwrap.dedent("\n".join(code)) + "\n```")
            code.clear()

    for line in lines:
        if line.startswith("    ") and not paragraph:
            code.append(line)
        elif not line.strip():
            if code:
                code.append("")
            else:
                flush()
        else:
            if code:
                flush()
            paragraph.append(line.strip())
    flush()
    return blocks


def _doc_markdown(doc: Docstring, skip: tuple[str, ...] = ()) -> list[str]:
    lines: list[str] = []
    for block in doc.prose:
        lines += [block, ""]
    for name in ("Arguments", "Attributes", "Returns", "Yields", "Raises", "Note", "Notes"):
        if name in skip or name not in doc.sections:
            continue
        value = doc.sections[name]
        if isinstance(value, str):
            lines += [f"**{name}**: {value}", ""]
        else:
            lines += [f"**{name}**", ""]
            lines += [f"- `{item}`: {text}" for item, text in value]
            lines.append("")
    if "Example" in doc.sections:
        lines += ["**Example**", "", "```python", doc.sections["Example"], "```", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Signatures and fields.


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _default(value: Any) -> str:
    text = repr(value)
    return "..." if " at 0x" in text else text


def signature(name: str, obj: Any, skip_self: bool = False) -> str:
    """``name(a: int = 1, ...) -> R``, one parameter per line when long."""
    sig = inspect.signature(obj)
    parts = []
    star_done = False
    for param in sig.parameters.values():
        if skip_self and not parts and param.name in ("self", "cls"):
            continue
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        elif param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if param.annotation is not param.empty:
            text += ": " + _annotation(param.annotation)
        if param.default is not param.empty:
            joiner = " = " if param.annotation is not param.empty else "="
            text += joiner + _default(param.default)
        parts.append(text)
    returns = ""
    if sig.return_annotation is not sig.empty:
        returns = " -> " + _annotation(sig.return_annotation)
    one_line = f"{name}({', '.join(parts)}){returns}"
    if len(one_line) <= _WIDTH:
        return one_line
    inner = "".join(f"    {part},\n" for part in parts)
    return f"{name}(\n{inner}){returns}"


def _field_sources(cls: type) -> dict[str, tuple[str, str | None]]:
    """Per field: its annotation and default as written in the class body (so that defaults
    such as ``sys.executable`` read as code, not as this machine's value)."""
    found: dict[str, tuple[str, str | None]] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                default = None
                if node.value is not None:
                    default = _field_default(node.value, source)
                annotation = ast.get_source_segment(source, node.annotation) or ""
                found[node.target.id] = (annotation, default)
    return found


def _field_default(value: ast.expr, source: str) -> str:
    text = ast.get_source_segment(source, value) or "..."
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
        for keyword in value.keywords:
            segment = ast.get_source_segment(source, keyword.value) or "..."
            if keyword.arg == "default":
                return segment
            if keyword.arg == "default_factory":
                return {"list": "[]", "dict": "{}", "set": "set()", "tuple": "()"}.get(
                    segment, f"{segment}()"
                )
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _methods(cls: type) -> list[str]:
    """One bullet per public method or property defined in the class itself."""
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        doc = parse_docstring(
            inspect.getdoc(member) if not isinstance(member, property) else member.__doc__
        )
        summary = " ".join(doc.prose[:1]) or doc.sections.get("Returns") or ""
        summary = summary or _rst(UNDOCUMENTED.get(f"{cls.__name__}.{name}", ""))
        if isinstance(member, property):
            lines.append(f"- `{name}` (property){': ' + summary if summary else ''}")
            continue
        function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if not inspect.isfunction(function):
            continue
        kind = "classmethod " if isinstance(member, classmethod) else ""
        text = signature(name, function, skip_self=not isinstance(member, staticmethod))
        text = text if "\n" not in text else " ".join(text.split())
        text = text.replace("( ", "(").replace(", )", ")")
        lines.append(f"- {kind}`{text}`{': ' + summary if summary else ''}")
    return lines


# ---------------------------------------------------------------------------------------------
# One object.


def document(shown: str, obj: Any) -> list[str]:
    lines = [f"### `{shown}`", ""]
    if _is_fixture(obj):
        wrapped = getattr(obj, "__wrapped__", None) or obj
        lines += ["A pytest fixture (available in every test once bisector is installed).", ""]
        lines += _doc_markdown(parse_docstring(inspect.getdoc(wrapped) or obj.__doc__))
        return lines
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return lines + _exception(shown, obj)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return lines + _dataclass(obj)
    if inspect.isclass(obj):
        return lines + _class(shown, obj)
    lines += ["```python", signature(shown, obj), "```", ""]
    return lines + _doc_markdown(parse_docstring(inspect.getdoc(obj)))


def _exception(shown: str, cls: type) -> list[str]:
    base = cls.__mro__[1]
    lines = [f"Subclass of `{base.__name__}`.", ""]
    if "__init__" in vars(cls):
        lines += ["```python", signature(shown, cls), "```", ""]
    return lines + _doc_markdown(parse_docstring(cls.__doc__))


def _class(shown: str, cls: type) -> list[str]:
    lines = ["```python", signature(shown, cls), "```", ""]
    lines += _doc_markdown(parse_docstring(cls.__doc__))
    if "__enter__" in vars(cls):
        lines += ["A context manager: `with ...:` enters and leaves it.", ""]
    methods = _methods(cls)
    if methods:
        lines += [*methods, ""]
    return lines


def _dataclass(cls: type) -> list[str]:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    kind = "Frozen dataclass" if params.frozen else "Dataclass"
    lines = [f"{kind}.", ""]
    doc = parse_docstring(cls.__doc__)
    lines += _doc_markdown(doc, skip=("Attributes",))
    described = dict(doc.sections.get("Attributes", []))
    sources = _field_sources(cls)
    lines += ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        annotation, default = sources.get(field.name, (str(field.type), None))
        row = [
            f"`{field.name}`",
            f"`{annotation}`",
            "required" if default is None else f"`{default}`",
            described.get(field.name) or _rst(UNDOCUMENTED.get(f"{cls.__name__}.{field.name}", "")),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines.append("")
    methods = _methods(cls)
    if methods:
        lines += ["Methods:", "", *methods, ""]
    return lines


# ---------------------------------------------------------------------------------------------
# The page.


def _module_section(module_name: str) -> list[str]:
    if importlib.util.find_spec(module_name) is None:
        return [f"`{module_name}` is not in this version of bisector.", ""]
    module = importlib.import_module(module_name)
    lines = [f"### Module `{module_name}`", ""]
    lines += _doc_markdown(parse_docstring(module.__doc__))
    for name, obj in module_members(module):
        lines += document(f"{module_name}.{name}", obj)
    return lines


def render() -> str:
    """The whole of docs/api.md."""
    _import_bisector()
    import bisector

    exported = ", ".join(f"`{name}`" for name in bisector.__all__)
    lines = [
        f"<!-- Generated by docs/gen_api.py from the docstrings in bisector/. Do not edit by "
        f"hand: run `{REGENERATE}`. -->",
        "",
        "# Python API reference",
        "",
        f"`import bisector` gives {exported}. Everything else is imported from its module, as "
        "named in each heading. The command line ([cli.md](cli.md)) calls these same functions.",
        "",
        "```python",
        "import bisector",
        "",
        'report = bisector.find("train.py", steps=2)',
        "if not report.reproducible:",
        "    print(report.first_divergence.op, report.fix)",
        "```",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## {section.title}", "", section.intro, ""]
        for shown, where in section.objects:
            lines += document(shown, resolve(where))
        for module_name in section.modules:
            lines += _module_section(module_name)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    from gen_cli import generate  # docs/ is on sys.path when this runs as a script

    return generate(render, OUTPUT, "the docstrings in bisector/", REGENERATE, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
