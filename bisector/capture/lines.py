"""Which line of code an op comes from: the user's own line first, the library frame beside it.

A stack seen from an op has three kinds of frames: *internal* ones (torch, bisector, Python's
standard library), which are never anybody's line; *library* frames (installed packages such as
Lightning, transformers or PyG, and code generated at run time: PyG's ``propagate`` written to a
temp file, ``<string>`` and ``<eval_with_key>`` code); and the *user's* frames: files under the
user's folders (the script's folder, the working folder, and folders named with ``--user-path``
or ``BISECTOR_USER_PATHS``), outside site-packages.

The headline line of an event is the innermost user frame; beside it the innermost library
frame when one lies in between (the library code that issued the op). With no user frame on the
stack (a thread a library started), the innermost library file that was not generated takes
the headline. Kinds are cached per code object, so a call costs one short walk up the stack.

That walk is shortened by module calls: where a module's forward starts (its pre-hook, see
capture/modules.py), the walk from the frame that runs it up to the user's frame is done once
and remembered (``enter_call``); an op's walk that reaches that frame takes the rest from there.
Above a running frame the stack cannot change, so the answer is the same as the full walk's.
Through transformers, a forward op's walk passes about 24 frames, most of them above the
innermost module call.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterable
from types import CodeType, FrameType

import torch

from bisector.runfiles import USER_PATHS_ENV
from bisector.trace import join_location

_USER, _INTERNAL, _TRANSFER, _LIBRARY, _GENERATED = 0, 1, 2, 4, 8

# Internal frames in which ops only move data in from another process (a DataLoader worker's
# batch rebuilt from shared memory): they are not computation, and when they run depends on the
# workers' timing, so they are not recorded. The tensors they make become leaves when used.
_TRANSFER_FILES = (os.path.join("torch", "multiprocessing", "reductions.py"),)


def _folder(path: str) -> str:
    return os.path.join(os.path.realpath(path), "")


def _prefixes(folders) -> tuple[str, ...]:
    return tuple({_folder(f) for f in folders} | {os.path.join(f, "") for f in folders})


def _internal_prefixes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(torch's and bisector's folders, the standard library's): frames there are never
    anybody's line. (In a virtual environment the standard library's folder can hold
    site-packages: packages there are libraries, not internal.)"""
    import bisector

    ours = (os.path.dirname(torch.__file__), os.path.dirname(bisector.__file__))
    paths = sysconfig.get_paths()
    return _prefixes(ours), _prefixes((paths["stdlib"], paths["platstdlib"]))


def named_paths(extra: Iterable[str] = ()) -> list[str]:
    """The folders and files the user names as their own code: ``extra`` (``--user-path``)
    and those in BISECTOR_USER_PATHS."""
    return [*extra, *filter(None, os.environ.get(USER_PATHS_ENV, "").split(os.pathsep))]


def user_folders(named: list[str]) -> tuple[str, ...]:
    """The user's own folders: the script's (``sys.argv[0]``, else ``__main__``'s file), the
    working folder, and the ``named`` ones (see ``named_paths``)."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else None
    script = script or getattr(sys.modules.get("__main__"), "__file__", None)
    folders = [os.path.dirname(os.path.abspath(script))] if script else []
    folders += [os.getcwd(), *named]
    return tuple(dict.fromkeys(_folder(f) for f in folders))


class Locator:
    """Finds an op's user frame and the library frame beside it (see the module docstring).

    Args:
        user_paths: more folders (or files) of the user's own code.
    """

    def __init__(self, user_paths: Iterable[str] = ()) -> None:
        named = named_paths(user_paths)
        self._ours, self._stdlib = _internal_prefixes()
        self._user = user_folders(named)
        # Files the user named, and the script: theirs even where they lie directly in the temp
        # folder, which is otherwise where libraries write generated code.
        if sys.argv and sys.argv[0].endswith(".py"):
            named.append(sys.argv[0])
        self._named = tuple(os.path.realpath(p) for p in named)
        self._temp = os.path.realpath(tempfile.gettempdir())
        installed = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")] + _site_packages()
        self._installed = tuple(_folder(p) for p in installed if p)
        # id(code) -> (kind, code). Keyed by id: hashing a code object hashes its bytecode and
        # constants, microseconds for a large ``forward``, and a walk does it per frame. The
        # entry holds the code object, so no other object can take its id while it is listed.
        self._kinds: dict[int, tuple[int, CodeType]] = {}
        # One per running module call (None: no frame known): (the frame that runs it, the walk
        # from there: user frame, library frame, transfer; the thread it runs in).
        self._marks: list[tuple[FrameType, FrameType | None, FrameType | None, bool, int] | None]
        self._marks = []

    def _kind(self, code: CodeType) -> int:
        entry = self._kinds.get(id(code))
        if entry is None:
            entry = self._kinds[id(code)] = (self._classify(code.co_filename), code)
        return entry[0]

    def _classify(self, filename: str) -> int:
        if filename.startswith("<frozen") or filename.startswith(self._ours):
            return _INTERNAL | (_TRANSFER if filename.endswith(_TRANSFER_FILES) else 0)
        if filename.startswith("<"):  # <string>, <eval_with_key>.N: made at run time
            return _LIBRARY | _GENERATED
        path = os.path.realpath(filename)
        if any(path == named or path.startswith(named + os.sep) for named in self._named):
            return _USER
        if os.path.dirname(path) == self._temp:  # a generated file (PyG's propagate)
            return _LIBRARY | _GENERATED
        if path.startswith(self._installed) or _in_site_packages(path):
            return _LIBRARY
        if filename.startswith(self._stdlib):
            return _INTERNAL
        return _USER if path.startswith(self._user) else _LIBRARY

    def locate(self, skip: int = 2) -> tuple[FrameType | None, FrameType | None, bool]:
        """(the innermost user frame or None, the innermost library frame inside it or None,
        whether the call only moves data in from another process), for the calling thread."""
        return self.walk(sys._getframe(skip))

    def walk(self, frame: FrameType | None) -> tuple[FrameType | None, FrameType | None, bool]:
        """``locate`` from a given frame outwards."""
        library: FrameType | None = None
        transfer = False
        kinds = self._kinds
        mark = self._marks[-1] if self._marks else None
        if mark is not None and mark[4] != threading.get_ident():
            mark = None
        stop = None if mark is None else mark[0]
        while frame is not None:
            if frame is stop:  # the innermost module call: the rest was walked when it began
                assert mark is not None
                if library is None:
                    return mark[1], mark[2], transfer or mark[3]
                return mark[1], library, transfer
            code = frame.f_code
            entry = kinds.get(id(code))
            kind = entry[0] if entry is not None else self._kind(code)
            if kind == _USER:
                return frame, library, transfer
            if kind & _LIBRARY:
                library = library or frame
            elif library is None:
                transfer |= kind == _INTERNAL | _TRANSFER
            frame = frame.f_back
        return None, library, transfer

    def enter_call(self, frame: FrameType | None) -> None:
        """A module call begins, run by ``frame`` (None: unknown): walk from there once, so that
        the walks of the ops inside it stop there. Calls nest: ``leave_call`` ends the innermost.
        """
        if frame is None:
            self._marks.append(None)
            return
        self._marks.append((frame, *self.walk(frame), threading.get_ident()))

    def leave_call(self) -> None:
        if self._marks:
            self._marks.pop()

    def forget_calls(self) -> None:
        """Forget every module call (the frames they hold)."""
        self._marks.clear()

    def describe(self, user: FrameType | None, library: FrameType | None) -> str:
        """The location string of an event (see ``trace.join_location``)."""
        if user is None and library is not None and not self._kind(library.f_code) & _GENERATED:
            user, library = library, None  # no user frame: the library's line leads
        return join_location(_line(user), _line(library))

    def cache_key(
        self, user: FrameType | None, library: FrameType | None
    ) -> tuple[int, int, int, int]:
        """A key equal for two calls only if ``describe`` is: the ids of the frames' code
        objects and their instruction offsets (``f_lineno`` costs a line-table search:
        ``describe`` does it once per key). The frames are ones ``walk`` returned: their code
        objects are listed in the kind cache, which keeps their ids their own."""
        return (
            0 if user is None else id(user.f_code),
            0 if user is None else user.f_lasti,
            0 if library is None else id(library.f_code),
            0 if library is None else library.f_lasti,
        )


def _line(frame: FrameType | None) -> str:
    return "" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _site_packages() -> list[str]:
    import site

    folders = list(getattr(site, "getsitepackages", lambda: [])())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    return folders + ([user_site] if isinstance(user_site, str) else [])


def _in_site_packages(path: str) -> bool:
    parts = path.split(os.sep)
    return "site-packages" in parts or "dist-packages" in parts


def in_custom_backward(frame: FrameType) -> bool:
    """True if the frame is the ``backward`` of a user-defined autograd Function."""
    code = frame.f_code
    return code.co_name == "backward" and code.co_argcount >= 1 and code.co_varnames[0] == "ctx"
