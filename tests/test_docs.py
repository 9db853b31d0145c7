"""The docs stay true to the code: generated references are current, every CLI parameter has
help, every relative link points to a file, and the causes catalogue covers every intervention."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _generator(name: str):
    """Import docs/<name>.py (a script, not a package module) by its path."""
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "generator, page", [("gen_cli", "cli.md"), ("gen_api", "api.md")], ids=["cli", "api"]
)
def test_generated_reference_is_up_to_date(generator, page):
    expected = _generator(generator).render()
    current = (DOCS / page).read_text() if (DOCS / page).exists() else ""
    assert current == expected, (
        f"docs/{page} is out of date with the code: run `python docs/{generator}.py` "
        "and commit the result"
    )


def test_every_cli_parameter_has_help():
    gen_cli = _generator("gen_cli")
    missing = []
    for path, command, ctx in gen_cli.walk():
        for param in gen_cli.params(command, ctx):
            if not (getattr(param, "help", None) or "").strip():
                names = "/".join(param.opts) if gen_cli.is_option(param) else param.name
                missing.append(f"{' '.join(path)} {names}")
    assert not missing, f"CLI parameters without help text: {', '.join(missing)}"


def test_every_command_has_help():
    gen_cli = _generator("gen_cli")
    missing = [
        " ".join(p) for p, command, _ in gen_cli.walk() if not gen_cli.clean_help(command.help)
    ]
    assert not missing, f"commands without help text: {', '.join(missing)}"


# [text](target), ![alt](target), [label]: target, and src="..." / href="..." in inline HTML.
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HTML = re.compile(r"(?:src|href)=\"([^\"]+)\"")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _links(markdown: str) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    return [m for pattern in (_INLINE, _REFERENCE, _HTML) for m in pattern.findall(text)]


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith(
        ("#", "/", "//")
    )


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_links_parser_finds_the_kinds_of_link_we_use():
    sample = (
        "[a](docs/a.md) ![b](img/b.svg) [c](c.md#part) [d](https://x.org) [e](#anchor)\n"
        '[ref]: ref.md\n<img src="pic.png">\n`[no](code.md)`\n```\n[no](fenced.md)\n```\n'
    )
    relative = [link for link in _links(sample) if _is_relative(link)]
    assert relative == ["docs/a.md", "img/b.svg", "c.md#part", "ref.md", "pic.png"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in _links(page.read_text()):
        if not _is_relative(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {', '.join(broken)}"


def _heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to -)."""
    text = _FENCE.sub("", markdown)
    headings = re.findall(r"^#{1,6} (.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_causes_catalogue_covers_every_intervention():
    from bisector.confirm.interventions import catalogue

    causes = (DOCS / "causes.md").read_text()
    names = {i.name for i in catalogue()}
    linked = set(re.findall(r"\(cli\.md#([\w-]+)\)", causes))
    assert not names - linked, f"docs/causes.md links no entry for: {sorted(names - linked)}"
    anchors = _heading_anchors((DOCS / "cli.md").read_text())
    dangling = sorted(linked - anchors)
    assert not dangling, f"docs/causes.md links to cli.md anchors that do not exist: {dangling}"
