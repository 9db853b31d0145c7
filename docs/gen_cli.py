"""Generate docs/cli.md, the command-line reference, from the typer app in bisector/cli.py.

    python docs/gen_cli.py           # write docs/cli.md
    python docs/gen_cli.py --check   # exit 1 if docs/cli.md is not what this would write

Everything comes from the click command tree that typer builds (commands, help texts, arguments,
options, types, defaults), so a new command or option appears here without touching this file.
The output depends on nothing but the code: no terminal width, no typer help formatter.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "cli.md"
PROG = "bisector"
REGENERATE = "python docs/gen_cli.py"


def _import_cli():
    """bisector.cli, importable from a checkout without an install."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bisector import cli

    return cli


def root_command():
    """The click command tree of bisector's CLI."""
    return _import_cli().click_command()


def walk(command=None, path: tuple[str, ...] = (PROG,), parent=None) -> Iterator[tuple]:
    """Yield ``(path, command, context)`` for the root and every visible subcommand, depth
    first, in the order the app lists them."""
    command = command if command is not None else root_command()
    ctx = command.make_context(path[-1], [], parent=parent, resilient_parsing=True)
    yield path, command, ctx
    list_commands = getattr(command, "list_commands", None)
    if list_commands is None:
        return
    for name in list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        yield from walk(sub, (*path, name), ctx)


def params(command, ctx) -> list:
    """The visible parameters of a command, --help included."""
    return [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]


def is_option(param) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def clean_help(text: str | None) -> str:
    """A docstring or help string as Markdown paragraphs: dedented, click's ``\\b`` markers
    dropped, text after ``\\f`` cut, lines of one paragraph joined."""
    if not text:
        return ""
    text = inspect.cleandoc(text).split("\f", 1)[0]
    paragraphs = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip() != "\b"]
        if lines:
            paragraphs.append(" ".join(line for line in lines if line))
    return "\n\n".join(paragraphs)


def first_sentence(text: str) -> str:
    paragraph = clean_help(text).split("\n\n", 1)[0]
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Types and defaults, from either a classic click parameter (``param.type``) or a typer
# parameter that carries its annotation (``param.type_descriptor``).

_TYPE_NAMES = {
    int: "integer",
    float: "number",
    str: "text",
    bool: "boolean",
    Path: "path",
    "integer": "integer",
    "integer range": "integer",
    "float": "number",
    "float range": "number",
    "text": "text",
    "string": "text",
    "boolean": "boolean",
    "path": "path",
    "file": "file",
    "filename": "path",
    "directory": "path",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is a list) of an annotation such as ``list[str] | None``."""
    is_list = False
    for _ in range(4):
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
        elif origin in (list, tuple, set, frozenset, typing.List) and args:  # noqa: UP006
            annotation, is_list = args[0], True
        else:
            break
    return annotation, is_list


def type_label(param) -> str:
    """A short, stable type name: ``integer >= 1``, ``path``, ``text, repeatable``, ``flag``."""
    if is_option(param) and getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return "flag"
    if getattr(param, "count", False):
        return "count"
    click_type = getattr(param, "type", None)
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(click_type, "choices", None)
    if descriptor is not None:
        annotation, _ = _unwrap(descriptor.annotation)
        if isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
            choices = [member.value for member in annotation]
        name = _TYPE_NAMES.get(annotation) or getattr(annotation, "__name__", str(annotation))
    elif click_type is not None:
        raw = str(getattr(click_type, "name", click_type)).lower()
        name = _TYPE_NAMES.get(raw, raw)
    else:
        name = "text"
    if choices:
        name = "one of " + ", ".join(f"`{c}`" for c in choices)
    bounds = []
    low = getattr(param, "min", None)
    high = getattr(param, "max", None)
    if low is None and high is None and click_type is not None:
        low, high = getattr(click_type, "min", None), getattr(click_type, "max", None)
    if low is not None:
        bounds.append(f">= {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    if bounds:
        name += " " + ", ".join(bounds)
    if getattr(param, "multiple", False):
        name += ", repeatable"
    elif not is_option(param) and getattr(param, "nargs", 1) == -1:
        name += ", any number"
    return name


def default_label(param) -> str:
    if getattr(param, "required", False):
        return "required"
    default = getattr(param, "default", None)
    if callable(default):
        return "computed"
    if is_option(param) and getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None) and default is None:
            return "automatic"
        if isinstance(default, bool):
            return "on" if default else "off"
    if default is None or default == () or default == []:
        return "—"
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{d}`" for d in default)
    return f"`{default}`"


def option_names(param) -> str:
    """``--steps``, ``-n`` (long names first); ``--ladder`` / ``--no-ladder`` for a pair."""
    names = sorted(param.opts, key=lambda o: (not o.startswith("--"), o))
    text = ", ".join(f"`{name}`" for name in names)
    if getattr(param, "secondary_opts", None):
        text += " / " + ", ".join(f"`{name}`" for name in param.secondary_opts)
    return text


def argument_metavar(param) -> str:
    metavar = getattr(param, "metavar", None) or param.name.upper()
    if param.nargs == -1 or param.nargs > 1:
        metavar += "..."
    return metavar if getattr(param, "required", False) else f"[{metavar}]"


def usage(path: tuple[str, ...], command, ctx) -> str:
    pieces = [" ".join(path)]
    visible = params(command, ctx)
    if any(is_option(p) for p in visible):
        pieces.append("[OPTIONS]")
    pieces += [argument_metavar(p) for p in visible if not is_option(p)]
    if getattr(command, "list_commands", None) is not None:
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


# ---------------------------------------------------------------------------------------------
# The page.


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _command_section(path: tuple[str, ...], command, ctx, level: int) -> list[str]:
    lines = [f"{'#' * level} `{' '.join(path)}`", ""]
    help_text = clean_help(getattr(command, "help", None))
    if help_text:
        lines += [help_text, ""]
    lines += ["```", usage(path, command, ctx), "```", ""]
    visible = params(command, ctx)
    arguments = [p for p in visible if not is_option(p)]
    options = [p for p in visible if is_option(p) and p.name != "help"]
    if arguments:
        lines += ["| argument | type | default | description |", "| --- | --- | --- | --- |"]
        for p in arguments:
            row = [f"`{argument_metavar(p)}`", type_label(p), default_label(p), _param_help(p)]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    if options:
        lines += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
        for p in options:
            row = [option_names(p), type_label(p), default_label(p), _param_help(p)]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    return lines


def _param_help(param) -> str:
    text = clean_help(getattr(param, "help", None)).replace("\n\n", " ")
    envvar = getattr(param, "envvar", None)
    if envvar:
        names = envvar if isinstance(envvar, (list, tuple)) else [envvar]
        text += " (environment: " + ", ".join(f"`{n}`" for n in names) + ")"
    return text


def _interventions_section() -> list[str]:
    """The catalogue `bisector interventions` prints, with an anchor per name."""
    try:
        from bisector.confirm.interventions import catalogue
    except ImportError:
        return []
    lines = [
        "## Interventions",
        "",
        "What `bisector find` can change in both runs of a pair to confirm a cause "
        "(`bisector interventions` prints this list). `find` picks those that apply to the "
        "sources it found; `--try NAME` adds one, `--only-tries` keeps only those given. See "
        "[causes.md](causes.md) for which cause each one tests.",
        "",
    ]
    for intervention in catalogue():
        lines += [f"### `{intervention.name}`", ""]
        details = [f"- What it changes: {clean_help(intervention.summary)}."]
        if intervention.fix:
            details.append(
                f"- Fix it stands for, when it makes the runs identical: {intervention.fix}"
            )
        else:
            details.append("- Never proposed as a fix: it changes the training itself.")
        if intervention.env:
            env = ", ".join(f"`{k}={v}`" for k, v in sorted(intervention.env.items()))
            details.append(f"- Set in the child's environment before Python starts: {env}")
        lines += [*details, ""]
    return lines


def render() -> str:
    """The whole of docs/cli.md."""
    tree = list(walk())
    (root_path, root, root_ctx), commands = tree[0], tree[1:]
    lines = [
        f"<!-- Generated by docs/gen_cli.py from bisector/cli.py. Do not edit by hand: "
        f"run `{REGENERATE}`. -->",
        "",
        "# Command-line reference",
        "",
        clean_help(getattr(root, "help", None)),
        "",
        "```",
        usage(root_path, root, root_ctx),
        "```",
        "",
    ]
    root_options = [p for p in params(root, root_ctx) if is_option(p) and p.name != "help"]
    for p in root_options:
        lines.append(f"- {option_names(p)}: {_param_help(p)}")
    if root_options:
        lines.append("")
    lines += [
        "Every command takes `--help`. Arguments for your script go after `--` "
        "(`bisector find train.py -- --lr 3e-4`).",
        "",
        "Exit codes: `0` the runs are reproducible, `1` a divergence was found, `2` an error "
        "(bad input, the script failed, Ctrl-C, or a bug in bisector, said so); an error is one "
        "line starting with `bisector: error:`; `3` inconclusive: the runs agree, but they do "
        "not show that the training is reproducible (the model never ran, no parameter changed, "
        "or training ran in processes bisector did not record).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for path, command, _ in commands:
        link = f"[`{' '.join(path[1:])}`](#{_anchor(path)})"
        lines.append(f"| {link} | {_cell(first_sentence(getattr(command, 'help', '')))} |")
    lines.append("")
    for path, command, ctx in commands:
        lines += _command_section(path, command, ctx, level=len(path))
    lines += _interventions_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(
    render_page, output: Path, source: str, regenerate: str, argv: list[str] | None, doc: str
) -> int:
    """Write ``output`` from ``render_page()``, or with ``--check`` exit 1 if it differs: the
    main of both generators (docs/gen_api.py calls it too). ``source``: what the page is made
    from, and ``regenerate``: the command that remakes it, for the message."""
    relative = output.relative_to(ROOT)
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {relative} is not up to date"
    )
    args = parser.parse_args(argv)
    text = render_page()
    if args.check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            print(
                f"{relative} is out of date with {source}: "
                f"run `{regenerate}` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{relative} is up to date")
        return 0
    output.write_text(text)
    print(f"wrote {relative}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return generate(render, OUTPUT, "bisector/cli.py", REGENERATE, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
