"""The exceptions bisector raises; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class BisectorError(Exception):
    """Base of every error bisector reports to a user: bad input, a failed run, a bad file.

    The message is one line that names the problem and what to do about it.
    """


class ScriptError(BisectorError):
    """The user's script is missing, cannot be parsed, or failed while it ran.

    Attributes:
        output: what the script printed to stderr (its own traceback), shown as the script's.
        exit_code: the exit status of the failed run, when there was one.
    """

    def __init__(self, message: str, output: str = "", exit_code: int | None = None):
        super().__init__(message)
        self.output = output
        self.exit_code = exit_code


class InternalError(BisectorError):
    """bisector's own code failed while recording a run: a bug in bisector, not in the script.

    Attributes:
        output: what the run printed, our traceback included (kept in the run's log).
    """

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class TraceError(BisectorError):
    """A trace file is missing, corrupt, of an unknown format version, or not a trace at all."""


class MismatchError(BisectorError):
    """Two traces cannot be compared (for example one is empty)."""


class Interrupted(BisectorError):
    """The user pressed Ctrl-C; what was recorded so far is kept on disk."""
