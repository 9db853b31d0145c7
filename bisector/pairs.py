"""Two runs of one script and their comparison, for one process or a torchrun job alike.

Every level of ``find`` (step digests, then ops) and every pair of confirmation runs the
script twice and compares the runs. A torchrun job (``RunOptions.launch``) is compared rank by
rank (rank r of run A with rank r of run B, see analysis/ranks.py); a plain process is rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bisector import analysis, digests
from bisector.errors import MismatchError
from bisector.report import Report, RunInfo
from bisector.runfiles import RunFiles
from bisector.runner import RunOptions, run_digests, run_rank_digests, run_ranks, run_recorded
from bisector.trace import Trace


@dataclass
class Pair:
    """Two recorded runs and their comparison.

    Attributes:
        report: what comparing them found (every rank's sources, for a torchrun job).
        ranks: (rank, trace of run A, trace of run B) of each rank; one entry, rank 0, for a
            plain process.
    """

    report: Report
    ranks: list[tuple[int, Trace, Trace]]

    def traces_a(self) -> dict[int, Trace]:
        return {rank: a for rank, a, _ in self.ranks}

    def lead(self) -> tuple[Trace, Trace]:
        """The traces of the rank of the first source (the lowest rank if none)."""
        first = self.report.first_divergence
        rank = first.rank if first is not None else min(r for r, _, _ in self.ranks)
        return next((a, b) for r, a, b in self.ranks if r == rank)


def record_pair(
    script: str | os.PathLike, args: tuple[str, ...], folder: Path, run: RunOptions
) -> Pair:
    """Record runs A and B (``folder/a.trace``, ``folder/b.trace``; per rank
    ``a.rank<R>.trace``) and compare them.

    Raises:
        ScriptError: a run (or rank) failed; MismatchError: the runs started other ranks.
    """
    if run.launch is None:
        run_a, a = run_recorded(script, args, folder / "a.trace", run, name="A")
        run_b, b = run_recorded(script, args, folder / "b.trace", run, name="B")
        return Pair(analysis.compare(a, b, runs=[run_a, run_b]), [(0, a, b)])

    ranks_a = run_ranks(script, args, folder / "a.trace", run, name="A")
    ranks_b = run_ranks(script, args, folder / "b.trace", run, name="B")
    _same_ranks([r for r, _, _ in ranks_a], [r for r, _, _ in ranks_b])
    traces_b = {rank: (info, trace) for rank, info, trace in ranks_b}
    ranks, runs = [], []
    for rank, info, trace in ranks_a:
        ranks.append((rank, trace, traces_b[rank][1]))
        runs += [info, traces_b[rank][0]]
    report = _compare_job(ranks, runs)
    return Pair(report, ranks)


def digest_pair(
    script: str | os.PathLike, args: tuple[str, ...], folder: Path, run: RunOptions
) -> tuple[list[RunInfo], digests.DigestReport]:
    """Runs A and B with step digests only (``folder/a.digests``; per rank
    ``a.rank<R>.digests``), compared; a torchrun job's ranks merged (``digests.merge_ranks``).

    Returns:
        The runs (every rank's), and the comparison.

    Raises:
        ScriptError: a run (or rank) failed; MismatchError: the runs share no step or started
        other ranks.
    """
    if run.launch is None:
        run_a, a = run_digests(script, args, folder / "a.digests", run, name="A")
        run_b, b = run_digests(script, args, folder / "b.digests", run, name="B")
        if not a.steps and not b.steps:
            return [run_a, run_b], _no_steps([a.path, b.path])
        return [run_a, run_b], digests.compare(a, b)
    ranks_a = run_rank_digests(script, args, folder / "a.digests", run, name="A")
    ranks_b = run_rank_digests(script, args, folder / "b.digests", run, name="B")
    _same_ranks([r for r, _, _ in ranks_a], [r for r, _, _ in ranks_b])
    files_b = {rank: (info, loaded) for rank, info, loaded in ranks_b}
    runs, compared = [], {}
    for rank, info, a in ranks_a:
        run_b, b = files_b[rank]
        runs += [info, run_b]
        if a.steps or b.steps:
            compared[rank] = digests.compare(a, b)
    if not compared:
        return runs, _no_steps([str(info.trace) for _, info, _ in ranks_a])
    return runs, digests.merge_ranks(compared)


def _no_steps(paths: list[str]) -> digests.DigestReport:
    """The comparison of runs in which no optimizer stepped: nothing to bisect over."""
    return digests.DigestReport(True, None, [], [], 0, paths)


def _same_ranks(ranks_a: list[int], ranks_b: list[int]) -> None:
    if set(ranks_a) != set(ranks_b):
        raise MismatchError(
            f"run A ran ranks {sorted(ranks_a)} and run B ranks {sorted(ranks_b)}: the two "
            "runs did not start the same processes"
        )


def job_files(path: Path) -> dict[int, Path]:
    """The files of a torchrun job's ranks named by ``path`` (``a.trace`` ->
    ``a.rank0.trace``, ``a.rank1.trace``, ...), when ``path`` itself does not exist."""
    if path.exists():
        return {}
    found = {}
    head, tail = f"{path.stem}.rank", path.suffix
    for file in path.parent.glob(f"{head}*{tail}"):
        rank = file.name[len(head) : len(file.name) - len(tail)]
        if rank.isdigit():
            found[int(rank)] = file
    return found


def diff_jobs(files_a: dict[int, Path], files_b: dict[int, Path]):
    """Compare two torchrun jobs from their ranks' files (traces: rank by rank, differences
    followed across ranks; digest files: the rank that differs first leads).

    Raises:
        MismatchError: the jobs have other ranks, or files of different kinds.
        TraceError: a file is missing or unreadable.
    """
    from bisector.trace import load

    _same_ranks(list(files_a), list(files_b))
    suffixes = {p.suffix for p in [*files_a.values(), *files_b.values()]}
    if suffixes == {".digests"}:
        compared = {
            rank: digests.compare(digests.load(files_a[rank]), digests.load(files_b[rank]))
            for rank in sorted(files_a)
        }
        return digests.merge_ranks(compared)
    if suffixes != {".trace"}:
        raise MismatchError("compare the traces (or the digest files) of two jobs, not a mix")
    ranks = [(rank, load(files_a[rank]), load(files_b[rank])) for rank in sorted(files_a)]
    runs = [
        analysis.run_info(f"{name} rank {rank}", trace)
        for rank, a, b in ranks
        for name, trace in (("A", a), ("B", b))
    ]
    return _compare_job(ranks, runs)


def _compare_job(ranks: list[tuple[int, Trace, Trace]], runs: list[RunInfo]) -> Report:
    """Compare two jobs rank by rank, and run A's replicas across its ranks."""
    from bisector.analysis.ranks import compare_ranks
    from bisector.analysis.replicas import describe, drift

    report = compare_ranks(ranks, runs)
    report.replicas = drift({rank: RunFiles(Path(a.path)).replicas for rank, a, _ in ranks})
    if report.replicas is not None:
        report.notes.insert(0, describe(report.replicas))
    return report
