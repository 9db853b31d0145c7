"""The module tree of the HTML report: dotted module paths as nested lists with event counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from bisector.report import ModuleRow

# Trees up to this many nodes show every node open; larger ones open only where events differ.
_ALL_OPEN = 80
_OUTSIDE = "(outside every module)"


@dataclass
class _Node:
    """One module: its own events and its submodules (the counts of a parent include theirs)."""

    name: str
    path: str | None
    events: int = 0
    differing: int = 0
    children: dict[str, _Node] = field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        """Events and differing events in this module and every submodule."""
        events, differing = self.events, self.differing
        for child in self.children.values():
            more, more_differing = child.totals()
            events, differing = events + more, differing + more_differing
        return events, differing

    def size(self) -> int:
        return 1 + sum(child.size() for child in self.children.values())


def module_tree(modules: list[ModuleRow], first_module: str | None) -> str:
    """The module tree as nested ``<ul>``/``<details>``, the path to the first source marked.

    Args:
        modules: ``{"module", "events", "differing"}`` per module path (Report.modules); a
            parent not listed itself is made from its children. ``""`` is outside every module.
        first_module: the first source's module (None: no first source, nothing marked).

    Returns:
        A ``<ul class="tree">`` element.
    """
    root = _build(modules)
    on_path = _path_to(first_module)
    everything_open = root.size() <= _ALL_OPEN
    return f'<ul class="tree">{_item(root, on_path, first_module, everything_open)}</ul>'


def _build(modules: list[ModuleRow]) -> _Node:
    root = _Node("(all events)", path=None)
    outside = None
    for entry in modules:
        path = str(entry["module"])
        if path == "":
            outside = _Node(_OUTSIDE, path="", events=entry["events"], differing=entry["differing"])
            continue
        node = root
        parts = path.split(".")
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[: depth + 1])
            node = node.children.setdefault(part, _Node(part, prefix))
        node.events += int(entry["events"])
        node.differing += int(entry["differing"])
    if outside is not None:
        # Listed after the modules; the NUL key cannot clash with a module name.
        root.children["\0outside"] = outside
    return root


def _path_to(module: str | None) -> set[str | None]:
    """The paths of the nodes from the root to ``module`` (the root's path is None)."""
    if module is None:
        return set()
    if module == "":
        return {None, ""}
    parts = module.split(".")
    return {None, *(".".join(parts[: depth + 1]) for depth in range(len(parts)))}


def _natural(key: str) -> tuple:
    # "layers.2" before "layers.10"; the outside-every-module node last.
    return (key.startswith("\0"), (int(key), "") if key.isdigit() else (float("inf"), key))


def _item(node: _Node, on_path: set, first: str | None, everything_open: bool) -> str:
    row = _row(node, on_path, first, bool(node.children))
    if not node.children:
        return f"<li>{row}</li>"
    children = "".join(
        _item(node.children[key], on_path, first, everything_open)
        for key in sorted(node.children, key=_natural)
    )
    is_open = everything_open or node.totals()[1] > 0 or node.path in on_path
    return (
        f"<li><details{' open' if is_open else ''}><summary>{row}</summary>"
        f"<ul>{children}</ul></details></li>"
    )


def _row(node: _Node, on_path: set, first: str | None, has_children: bool) -> str:
    events, differing = node.totals()
    classes = ["node"]
    if differing:
        classes.append("differs")
    if on_path and node.path in on_path:
        classes.append("path")
    if not node.path:
        classes.append("virtual")  # the root and "outside every module" are not modules
    badge = '<span class="badge">first source</span>' if node.path == first else ""
    share = 100.0 * differing / events if events else 0.0
    tip = node.path if node.path else node.name
    if has_children and node.events:
        tip += f": {node.events} events in the module itself, {node.differing} differ"
    return (
        f'<span class="{" ".join(classes)}" title="{escape(tip)}">'
        '<span class="twisty"></span>'
        f'<span class="name">{escape(node.name)}{badge}</span>'
        f'<span class="counts"><b>{differing}</b> of {events} differ</span>'
        f'<span class="bar"><span style="width:{share:.1f}%"></span></span></span>'
    )
