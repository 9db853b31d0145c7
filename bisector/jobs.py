"""torchrun jobs, seen from the parent: each rank's files, how the ranks ended, which ones
hang, and the error that names the failing rank.

Every rank writes its own files, named by a template that holds ``{rank}`` (see runfiles.py);
a rank that ends writes its ``.status``, a rank that records keeps its ``.progress`` current.
The runner polls both while the job runs (its watchdog) and reads them when it fails.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bisector.errors import BisectorError, InternalError, Interrupted, ScriptError
from bisector.runfiles import EXIT_INTERNAL, EXIT_SCRIPT_RAISED, RANK, RunFiles

if TYPE_CHECKING:
    from bisector.runner import Launch


def rank_template(output_file: Path, ranks: Iterable[int]) -> Path:
    """``a.trace`` -> ``a.rank{rank}.trace`` (the child puts its rank in), with the files of
    an earlier job of that name on this node's ranks removed."""
    template = RunFiles.per_rank(output_file)
    for rank in ranks:
        mine = template.of_rank(rank)
        # the file, its .status, .progress, ... and, for a trace, its snapshots
        stale = list(mine.output.parent.glob(f"{mine.output.name}*"))
        if output_file.suffix == ".trace":
            stale.append(mine.steps)
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return template.output


def rank_files(output_file: Path, suffix: str, ranks=None) -> list[tuple[int, Path]]:
    """The files ``<output_file with its rank><suffix>`` of the ranks that wrote one (of
    ``ranks`` only, if given: another node may write into the same folder)."""
    head, _, tail = output_file.name.partition(RANK)
    found = []
    for file in output_file.parent.glob(f"{head}*{tail}{suffix}"):
        rank = file.name[len(head) : len(file.name) - len(tail) - len(suffix)]
        if rank.isdigit() and (ranks is None or int(rank) in ranks):
            found.append((int(rank), file))
    return sorted(found)


def statuses(output_file: Path) -> dict[int, dict]:
    """How the ranks that ended ended (exit_code, time, error), from their status files."""
    found = {}
    for rank, file in rank_files(output_file, ".status"):
        try:
            status = json.loads(file.read_text())
            found[rank] = {
                "exit_code": int(status["exit_code"]),
                "time": float(status.get("time", 0.0)),
                "error": status.get("error"),
            }
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def progress_of_ranks(output_file: Path) -> dict[int, dict]:
    """The progress of each rank that has started recording (see capture/progress.py)."""
    from bisector.capture import progress

    found = {}
    for rank, file in rank_files(output_file, ".progress"):
        state = progress.read(file)
        if state is not None:
            found[rank] = state
    return found


def hang(output_file: Path, ended: dict[int, dict], ranks) -> str:
    """Which ranks hang, from their last progress: a rank waiting in a collective waits for
    the ranks that are not in one."""
    progress = progress_of_ranks(output_file)
    waiting = {r: p for r, p in progress.items() if p["collective"] and r not in ended}
    stuck = [r for r in ranks if r not in ended and r not in waiting]
    if stuck:
        where = "; ".join(
            f"rank {r} at step {progress[r]['step']}, event {progress[r]['events']}"
            if r in progress
            else f"rank {r} before recording anything"
            for r in stuck
        )
        others = ", ".join(
            f"rank {r} waits in {p['collective']} (step {p['step']})" for r, p in waiting.items()
        )
        return f"{where} stopped making progress outside any collective" + (
            f"; {others}" if others else ""
        )
    if waiting:
        return (
            "every rank still running waits in a collective ("
            + ", ".join(
                f"rank {r}: {p['collective']} at step {p['step']}" for r, p in waiting.items()
            )
            + "): the ranks do not call the same collectives (another count or order?)"
        )
    return "no rank made progress"


def failure(
    path: Path,
    name: str,
    output_file: Path,
    output: str,
    code: int | None,
    hung: str | None,
    launch: Launch,
    timeout: float | None,
    log: Path,
) -> BisectorError:
    """The error of a torchrun run that failed: which rank raised, exited or hung."""
    ended = statuses(output_file)
    kept = f"traces of every rank so far: {str(output_file).replace(RANK, '*')}"
    if hung is not None:
        return ScriptError(
            f"run {name} hangs: no rank made progress for {launch.rank_timeout:g} s: {hung}; "
            f"the job was stopped (its output: {log}); {kept}"
        )
    raised = sorted((s["time"], r, s) for r, s in ended.items() if s["exit_code"] != 0)
    if code is None:
        missing = [r for r in launch.ranks() if r not in ended]
        return ScriptError(
            f"run {name} took longer than {timeout:g} s and was stopped (ranks still "
            f"running: {', '.join(map(str, missing)) or 'none'}); {kept}",
            output=output,
        )
    if code in (130, -signal.SIGINT) and all(s["exit_code"] == 130 for s in ended.values()):
        return Interrupted(f"run {name} was interrupted; {kept}")
    if raised:
        _, rank, status = raised[0]
        after = [str(r) for _, r, _ in raised[1:]]
        then = f"; rank {', '.join(after)} failed after it" if after else ""
        error = f": {status['error']}" if status.get("error") else ""
        if status["exit_code"] == EXIT_INTERNAL:
            return InternalError(
                f"bisector failed while recording rank {rank} of run {name}{error}. This is a "
                f"bug in bisector, not in {path.name}; please report it with its traceback (in "
                f"{log}); {kept}",
                output=output,
            )
        if status["exit_code"] == EXIT_SCRIPT_RAISED:
            what = f"raised an exception on rank {rank}{error}"
        else:
            what = f"exited with status {status['exit_code']} on rank {rank}"
        return ScriptError(
            f"{path.name} {what} in run {name}{then} (its output is above; {kept})",
            output=output,
            exit_code=status["exit_code"],
        )
    missing = [r for r in launch.ranks() if r not in ended]
    return ScriptError(
        f"torchrun failed in run {name} (exit status {code}) before rank "
        f"{', '.join(map(str, missing)) or '?'} ended (its output is above; {kept})",
        output=output,
        exit_code=code,
    )
