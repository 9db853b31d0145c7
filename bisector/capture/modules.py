"""Module paths: which nn.Module (``layers.0.self_attn``) each operator call runs in.

Global forward hooks keep a stack of the modules being run. The first module called while the
stack is empty is a *root*; it names itself by its class (``Net``) and its submodules by their
dotted path relative to it (``layers.0.self_attn``). Names are resolved once per root, lazily.
Where the script's own code holds several models in variables (a GAN's ``gen`` and ``disc``, a
teacher and a student), each such root is named by its variable and its submodules' paths start
with it (``disc.stats``), so that equal paths of two models are told apart.
Backward ops get their module from the forward op that created their autograd node (see ops.py).

A framework may run a model's code without calling it: Lightning calls ``training_step``, not
``__call__``. An op or a module call made while no module runs, from a method of a module (its
``self``), belongs to that module: it becomes a root (``Lit``, its submodules ``head.0``), so
that ``self.table[ids]`` in ``training_step`` is ``Lit``'s and ``self.head`` is ``head``, as in
the module's ``state_dict``, not a root of its own.

For reports, each module is also described as the user wrote it: its class, its arguments as
``extra_repr`` shows them (``p=0.1, inplace=False``; else its plain attributes) and the line
that built it. That line is noted by wrapping ``nn.Module.__init__`` while the tracker is
installed: the first frame outside the module's own ``__init__`` chain, located as ops are.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import torch
from torch.nn.modules import module as nn_module

from bisector.capture.lines import Locator

MAX_DESCRIBED = 4096  # modules described per run (class, arguments, where built)
_BISECTOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
# The files of torch that run a module call (``__call__``, its hooks) above the hook.
_CALL_FILES = {nn_module.__file__}


class ModuleTracker:
    """Keeps the stack of running modules; owns the global forward hooks it installs.

    Args:
        on_root_enter: called with the root module each time a root module's forward starts.
        guard: wraps the hooks (an exception in them is the tracker's owner's bug).
        locator: finds the line that builds each module (none: built lines are not noted).
    """

    def __init__(
        self,
        on_root_enter: Callable[[torch.nn.Module], None],
        guard: Callable[[Callable], Callable] = lambda function: function,
        locator: Locator | None = None,
    ):
        self._on_root_enter = on_root_enter
        self._guard = guard  # wraps the hooks: an exception in them is the tracker's owner's bug
        self._names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._param_names: dict[int, tuple[weakref.ref, str, str]] = {}
        # The owner of a root's own parameter or buffer where no prefix names the root (no
        # variable of the script does): name -> the root's name (its class name).
        self._owners: dict[str, str] = {}
        self._stack: list[str] = []
        self._handles: list = []
        self._roots: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._locator = locator
        self._built: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._init: Any = None  # nn.Module.__init__ as it was before install
        # id(code) -> (code, whether it may be a method of a module: its first argument is
        # ``self``, and no call of it has had another kind of ``self``)
        self._methods: dict[int, tuple[CodeType, bool]] = {}
        self.described: dict[str, list[str]] = {}  # path -> [class, arguments, built at]

    @property
    def current(self) -> str:
        """Path of the innermost running module, or "" outside every module."""
        return self._stack[-1] if self._stack else ""

    @property
    def depth(self) -> int:
        return len(self._stack)

    def install(self) -> None:
        """Install the global forward hooks (removed by ``remove``)."""
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._guard(self._pre_hook)),
            nn_module.register_module_forward_hook(self._guard(self._post), always_call=True),
        ]
        if self._locator is not None and self._init is None:
            self._init = torch.nn.Module.__init__
            torch.nn.Module.__init__ = self._wrap_init(self._init)  # type: ignore[method-assign]

    def remove(self) -> None:
        """Remove every hook installed by ``install``; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack.clear()
        if self._locator is not None:
            self._locator.forget_calls()
        if self._init is not None:
            torch.nn.Module.__init__ = self._init  # type: ignore[method-assign]
            self._init = None

    def _wrap_init(self, init: Callable) -> Callable:
        tracker = self

        @functools.wraps(init)
        def __init__(module, *args, **kwargs):
            init(module, *args, **kwargs)
            with contextlib.suppress(Exception):  # a note never breaks the user's constructor
                if module not in tracker._built:
                    tracker._built[module] = tracker._built_at(module)

        return __init__

    def _built_at(self, module: torch.nn.Module) -> str:
        """The line that builds ``module``: the first frame outside its own ``__init__``s."""
        assert self._locator is not None
        frame: FrameType | None = sys._getframe(2)  # the caller of nn.Module.__init__
        while frame is not None and frame.f_code.co_name == "__init__":
            if frame.f_locals.get("self") is not module:
                break
            frame = frame.f_back
        user, library, _ = self._locator.walk(frame)
        return self._locator.describe(user, library)

    def suspend(self) -> bool:
        """Take the hooks out, keeping the stack (``resume`` puts them back); returns whether
        they were installed."""
        if not self._handles:
            return False
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return True

    def resume(self) -> None:
        if not self._handles:
            self.install()

    def enter(self, module: torch.nn.Module) -> bool:
        """Push a module as if its forward pre-hook ran, unless it is the innermost already."""
        if self._stack and self._names.get(module) == self._stack[-1]:
            return False
        self._pre(module, ())
        return True

    def leave(self) -> None:
        self._post(None, (), None)

    def name_of(self, module: torch.nn.Module) -> str | None:
        """The path of a module seen under a root, or None."""
        return self._names.get(module)

    def parameter_name(self, tensor: torch.Tensor) -> tuple[str, str] | None:
        """(kind, name) of a registered parameter or buffer, e.g. ("parameter", "fc.weight")."""
        entry = self._param_names.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1], entry[2]

    def roots(self) -> list[torch.nn.Module]:
        """The live root modules seen (in no particular order)."""
        return list(self._roots)

    def owner_of(self, name: str) -> str:
        """Module path that owns a qualified parameter name ("fc.weight" -> "fc"; a root's own
        ``pos_embed``, no variable naming the root -> the root's class name)."""
        return self._owners.get(name) or name.rpartition(".")[0]

    def _pre_hook(self, module: torch.nn.Module, args: tuple) -> None:
        """The forward pre-hook: ``_pre``, with the frame that runs the module's forward (the
        first one above the hook outside bisector) for the locator's walks."""
        frame = None
        if self._locator is not None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(_BISECTOR):
                frame = frame.f_back
        self._pre(module, args, frame)

    def method_owner(self, frame: FrameType | None) -> str:
        """The path of the module whose method ``frame`` runs (``training_step``), or "": for an
        op made while no module runs. A module first seen so becomes a root."""
        owner = self._self_module(frame)
        if owner is None:
            return ""
        name = self._names.get(owner)
        if name is None:
            self._register_root(owner)
            name = self._names[owner]
        return name

    def _self_module(self, frame: FrameType | None) -> torch.nn.Module | None:
        """``self_module(frame)``, with what each code object is remembered (this runs for
        every op made while no module runs)."""
        if frame is None:
            return None
        code = frame.f_code
        entry = self._methods.get(id(code))
        if entry is None:  # (the entry holds the code: no other code object takes its id)
            entry = self._methods[id(code)] = (code, _may_be_method(code))
        if not entry[1]:
            return None
        owner = self_module(frame)
        if owner is None:  # a method of another class
            self._methods[id(code)] = (code, False)
        return owner

    def _pre(self, module: torch.nn.Module, args: tuple, frame: FrameType | None = None) -> None:
        name = self._names.get(module)
        root = not self._stack
        if name is None:
            if root:
                self._adopt_caller(module)
                if module not in self._names:
                    self._register_root(module)
                name = self._names[module]
            else:
                name = f"{self._stack[-1]}.<{type(module).__name__}>"
        self._stack.append(name)
        if self._locator is not None:
            self._locator.enter_call(frame)
        if root:
            self._on_root_enter(module)

    def _adopt_caller(self, module: torch.nn.Module) -> None:
        """Where a new top-level module is called from a method of a module that holds it
        (``self.head(x)`` in ``training_step``), make that module the root."""
        owner = calling_module(module)
        if owner is not None:  # (named before: again, for the submodules it has gained since)
            self._register_root(owner)

    def _post(self, module: torch.nn.Module | None, args: tuple, output: object) -> None:
        if self._stack:
            self._stack.pop()
            if self._locator is not None:
                self._locator.leave_call()

    def register(self, model: torch.nn.Module) -> None:
        """Name a model and its submodules now, as its first call would (see Recorder's
        ``name_modules``); a no-op for a model already named."""
        if model not in self._names:
            self._register_root(model)

    def _register_root(self, root: torch.nn.Module) -> None:
        self._roots.add(root)
        models = models_in_script()
        inner = getattr(root, "_orig_mod", None)  # torch.compile's wrapper: name what it wraps
        if isinstance(inner, torch.nn.Module):
            self._names.setdefault(root, models.get(inner) or type(inner).__name__)
            root = inner
        variable = models.get(root)
        prefix = f"{variable}." if variable else ""
        for path, sub in root.named_modules(remove_duplicate=True):
            name = f"{prefix}{path}" if path else variable or type(root).__name__
            self._names.setdefault(sub, name)
            if len(self.described) < MAX_DESCRIBED and name not in self.described:
                built = self._built.get(sub, "")
                self.described[name] = [type(sub).__name__, _arguments(sub), built]
        if not variable:  # (else "model.items" names its owner, as "fc.weight" does)
            own = [*root.named_parameters(recurse=False), *root.named_buffers(recurse=False)]
            for path, _ in own:
                self._owners.setdefault(path, self._names[root])
        for kind, items in (
            ("parameter", root.named_parameters()),
            ("buffer", root.named_buffers()),
        ):
            for path, tensor in items:
                entry = (weakref.ref(tensor), kind, f"{prefix}{path}")
                self._param_names.setdefault(id(tensor), entry)


# Code objects of their own that run inside the function that holds them (Python < 3.12).
_COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def _may_be_method(code: CodeType) -> bool:
    """Whether the code may run a method of a module: its first argument is ``self`` (not in
    ``__init__``: building a module is not running it), or a comprehension inside one."""
    if code.co_name in _COMPREHENSIONS:
        return True
    return code.co_argcount > 0 and code.co_varnames[0] == "self" and code.co_name != "__init__"


def self_module(frame: FrameType) -> torch.nn.Module | None:
    """The module that is ``self`` in the method ``frame`` runs (or the method a
    comprehension at ``frame`` runs in), or None."""
    while frame.f_code.co_name in _COMPREHENSIONS and frame.f_back is not None:
        frame = frame.f_back
    if not _may_be_method(frame.f_code):
        return None
    owner = frame.f_locals.get("self")
    return owner if isinstance(owner, torch.nn.Module) else None


def calling_module(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose method calls ``module`` and holds it as a submodule (``self.head(x)``
    in a LightningModule's ``training_step``), or None; for a forward hook to ask."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename in _CALL_FILES or frame.f_code.co_filename.startswith(_BISECTOR)
    ):
        frame = frame.f_back
    owner = self_module(frame) if frame is not None else None
    if owner is None or owner is module or not any(sub is module for sub in owner.modules()):
        return None
    return owner


def _arguments(module: torch.nn.Module) -> str:
    """The module's arguments as its ``extra_repr`` shows them (``p=0.1, inplace=False``), or,
    where it shows none, its attributes of plain types (``p=0.1``)."""
    try:
        text = module.extra_repr()
    except Exception:  # noqa: BLE001 - the user's extra_repr; a description is optional
        text = ""
    if not text:
        plain = (bool, int, float, str)
        text = ", ".join(
            f"{name}={value!r}"
            for name, value in vars(module).items()
            if not name.startswith("_") and name != "training" and isinstance(value, plain)
        )
    return text[:200]


def models_in_script() -> dict[torch.nn.Module, str]:
    """The models the script's own code holds in variables, by variable name, when it holds
    more than one: modules with parameters bound in the script's globals or in the locals of
    its functions now running, less those inside another of them. One model: {} (paths stay
    relative to it, unprefixed)."""
    main = sys.modules.get("__main__")
    scope = getattr(main, "__dict__", None)
    if not isinstance(scope, dict):
        return {}
    spaces = [scope]
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is scope and frame.f_locals is not scope:
            spaces.append(frame.f_locals)
        frame = frame.f_back
    found: dict[torch.nn.Module, str] = {}
    for space in spaces:
        for name, value in list(space.items()):
            if isinstance(value, torch.nn.Module) and not name.startswith("_"):
                inner = getattr(value, "_orig_mod", value)
                model = inner if isinstance(inner, torch.nn.Module) else value
                if model not in found and next(model.parameters(), None) is not None:
                    found[model] = name
    inside = {sub for model in found for sub in model.modules() if sub is not model}
    models = {model: name for model, name in found.items() if model not in inside}
    return models if len(models) > 1 else {}
