"""Run a user's script in a fresh Python process under the Recorder, as ``python script.py`` would.

The parent side (``run_recorded``) checks the script, starts the child, keeps its output in a log
file, forwards Ctrl-C, and turns a failed run into a ScriptError. The child side is
``bisector._child``.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisector import jobs
from bisector.digests import Digests
from bisector.digests import load as load_digests
from bisector.errors import InternalError, Interrupted, ScriptError, TraceError
from bisector.report import RunInfo
from bisector.runfiles import (
    EXIT_INTERNAL,
    EXIT_SCRIPT_RAISED,
    EXIT_SETUP_FAILED,
    RANK,
    USER_PATHS_ENV,
    ChildSpec,
    RunFiles,
)
from bisector.trace import Trace, load

# Seconds we give a child to write its trace after Ctrl-C before we stop it harder.
_GRACE = 20.0


@dataclass(frozen=True)
class Launch:
    """How a run starts through torchrun (torch.distributed.run): one process per rank.

    Attributes:
        nproc_per_node: processes (ranks) on this node.
        nnodes: nodes in the job; run the same command on each with its ``node_rank``.
        node_rank: this node's rank.
        master_addr: address of the node of rank 0 (several nodes).
        master_port: a free port on it.
        rank_timeout: seconds without progress on any rank (no op recorded, no rank ending)
            after which the job is taken as hung and stopped.
    """

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rank_timeout: float = 300.0

    def ranks(self) -> range:
        """The ranks that run on this node."""
        first = self.node_rank * self.nproc_per_node
        return range(first, first + self.nproc_per_node)

    def torchrun_args(self) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}"]
        if self.nnodes > 1:
            args.append(f"--node-rank={self.node_rank}")
        if self.master_addr:
            args.append(f"--master-addr={self.master_addr}")
        if self.master_port:
            args.append(f"--master-port={self.master_port}")
        if self.nnodes == 1 and not self.master_port:
            args.append("--standalone")  # a free port of its own: runs A and B never collide
        return args


@dataclass(frozen=True)
class RunOptions:
    """How one recorded run is made.

    Attributes:
        steps: stop after this many optimizer steps (None: run the script to its end).
        python: the Python interpreter of the child (default: this one).
        timeout: seconds before a run is stopped (None: no limit).
        echo: let the script's output through to our stdout/stderr as well as the log.
        capture: event indices whose op inputs the run saves (for a replay), in ``capture_dir``.
        capture_rank: in a torchrun job, the rank whose events ``capture`` numbers.
        interventions: names of interventions applied in the child (see confirm/; the caller
            puts what they need in ``env``).
        snapshots: save the training state after each step next to the trace (``.steps/``).
        start_step: record ops only from this optimizer step on (earlier steps run unrecorded).
        launch: start the run through torchrun, one process per rank (see Launch); None: one
            plain process.
        on_progress: called about twice a second while the run goes, with what it is (e.g.
            "run B with sdpa-math") and its progress: {"step", "events", "seconds"}.
        user_paths: folders or files of the user's own code besides the script's folder and
            the working folder (see capture/lines.py).
        env: environment variables set for this run only (e.g. the GPU a pair runs on).
        source: a file whose code the run executes in the script's place (same path, folder
            and argv): a patched copy of the script (``find --fix``).
        modules_only: record module calls only, one event each (the ladder's module rung).
        inside: record only the ops of this module (its path) and of its backward.
    """

    steps: int | None = 2
    python: str = sys.executable
    timeout: float | None = None
    echo: bool = False
    capture: tuple[int, ...] = ()
    capture_dir: str | None = None
    capture_rank: int | None = None
    interventions: tuple[str, ...] = ()
    snapshots: bool = False
    start_step: int = 0
    launch: Launch | None = None
    on_progress: Callable[[str, dict], None] | None = None
    user_paths: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    modules_only: bool = False
    inside: str | None = None


# Set in a child started through torchrun: the PYTHONPATH the script must see.
LAUNCH_PYTHONPATH = "BISECTOR_ORIGINAL_PYTHONPATH"


# Set for a child that runs a module (`find -m package.module`), as `python -m` does.
MODULE_ENV = "BISECTOR_RUN_MODULE"


def module_file(name: str) -> Path:
    """The file ``python -m name`` would run, found as Python finds it (the working folder
    first, then sys.path) without importing anything: ``name``'s ``.py`` file, or a package's
    ``__main__.py``.

    Raises:
        ScriptError: no such module.
    """
    parts = name.split(".")
    if not name or not all(part.isidentifier() for part in parts):
        raise ScriptError(f"{name!r} is not a module name (like package.train)")
    for base in [os.getcwd(), *sys.path]:
        folder = Path(base or os.getcwd()).joinpath(*parts[:-1])
        for candidate in (folder / f"{parts[-1]}.py", folder / parts[-1] / "__main__.py"):
            if candidate.is_file():
                found = candidate.resolve()
                inside = str(found).startswith(os.path.join(os.getcwd(), ""))
                return Path(os.path.relpath(found)) if inside else found
    raise ScriptError(
        f"no module named {name} (looked for {'/'.join(parts)}.py in the working folder and "
        "on sys.path, as `python -m` would)"
    )


def check_script(script: str | os.PathLike) -> Path:
    """Check that the script exists and parses, before anything runs.

    Raises:
        ScriptError: missing, not a file, unreadable, or a syntax error.
    """
    path = Path(script)
    if not path.exists():
        raise ScriptError(f"script not found: {script}")
    if not path.is_file():
        raise ScriptError(f"{script} is not a file")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read {script}: {exc.strerror}") from None
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ScriptError(
            f"{script} has a syntax error at line {exc.lineno}: {exc.msg}; fix it and run again"
        ) from None
    except ValueError as exc:  # e.g. null bytes
        raise ScriptError(f"{script} is not a Python source file ({exc})") from None
    return path


def run_recorded(
    script: str | os.PathLike,
    args: tuple[str, ...],
    trace: Path,
    options: RunOptions,
    name: str = "A",
) -> tuple[RunInfo, Trace]:
    """Run the script once in a fresh process, recording into ``trace``.

    The child gets the script's own argv, the script's folder on sys.path, our working folder
    and our environment unchanged (no seeds, no PYTHONHASHSEED).

    Returns:
        What the run did (trace file, events, how it ended), and the trace, loaded (callers
        analyse it without reading the file again).

    Raises:
        ScriptError: the script raised, exited non-zero, or recorded no op.
        Interrupted: Ctrl-C; the trace written so far is kept.
    """
    spec = _recording(trace, options)
    path, output, code, seconds = _run_child(script, args, trace, spec, options, name)
    try:
        loaded = load(trace)
    except TraceError as exc:
        raise ScriptError(f"run {name} left no readable trace: {exc}", output=output) from None
    if len(loaded) == 0:
        raise ScriptError(
            f"{path.name} ran without calling any torch operator: bisector records PyTorch "
            "training scripts",
            output=output,
        )
    return _run_info(name, trace, len(loaded), loaded, code, seconds, _log_of(trace)), loaded


def run_digests(
    script: str | os.PathLike,
    args: tuple[str, ...],
    path: Path,
    options: RunOptions,
    name: str = "A",
) -> tuple[RunInfo, Digests]:
    """Run the script once in a fresh process, writing step digests only (no op recording).

    Returns:
        What the run did, and its digests.

    Raises:
        ScriptError: the script raised or exited non-zero.
        Interrupted: Ctrl-C; the digests written so far are kept.
    """
    _, output, code, seconds = _run_child(script, args, path, {"digests": str(path)}, options, name)
    try:
        loaded = load_digests(path)
    except TraceError as exc:
        raise ScriptError(
            f"run {name} left no readable digest file: {exc}", output=output
        ) from None
    return _run_info(name, path, 0, loaded, code, seconds, _log_of(path)), loaded


def _run_info(
    name: str, path: Path, events: int, loaded, code: int, seconds: float, log: Path
) -> RunInfo:
    """What a run did, from the file it left (a trace or digests, by its footer)."""
    return RunInfo(
        name=name,
        trace=str(path),
        events=events,
        steps=int(loaded.footer.get("steps", 0)),
        status=str(loaded.footer.get("status", "incomplete")),
        complete=loaded.complete,
        exit_code=code,
        seconds=round(seconds, 3),
        log=str(log),
    )


def run_ranks(
    script: str | os.PathLike,
    args: tuple[str, ...],
    trace: Path,
    options: RunOptions,
    name: str = "A",
) -> list[tuple[int, RunInfo, Trace]]:
    """Run the script once through torchrun (``options.launch``), one trace per rank.

    The traces are ``trace`` with ``.rank<R>`` before the suffix (``a.rank1.trace``); each
    rank's snapshots (``options.snapshots``) go to ``a.rank1.steps``.

    Returns:
        (rank, RunInfo, Trace) of each rank of this node, by rank.

    Raises:
        ScriptError: a rank raised, exited non-zero, hung or recorded nothing (named).
        Interrupted: Ctrl-C; the traces recorded so far are kept.
    """
    assert options.launch is not None
    template = jobs.rank_template(trace, options.launch.ranks())
    spec = _recording(template, options)
    results, path, output = _run_per_rank(script, args, template, spec, options, name, load)
    if not results or all(len(t) == 0 for _, _, t in results):
        raise ScriptError(
            f"{path.name} ran without calling any torch operator on any rank", output=output
        )
    return results


def run_rank_digests(
    script: str | os.PathLike,
    args: tuple[str, ...],
    path: Path,
    options: RunOptions,
    name: str = "A",
) -> list[tuple[int, RunInfo, Digests]]:
    """Run the script once through torchrun writing step digests only, one file per rank
    (``a.rank1.digests``).

    Returns:
        (rank, RunInfo, Digests) of each rank of this node, by rank.

    Raises:
        ScriptError: a rank raised, exited non-zero or hung (named), or wrote no digests.
        Interrupted: Ctrl-C; the digests written so far are kept.
    """
    assert options.launch is not None
    template = jobs.rank_template(path, options.launch.ranks())
    spec = {"digests": str(template)}
    results, _, _ = _run_per_rank(script, args, template, spec, options, name, load_digests)
    return results


def _run_per_rank(script, args, template: Path, spec: dict, options, name: str, loader):
    """Run a torchrun job whose ranks each write ``template`` (with their rank), and load each
    rank's file: ([(rank, RunInfo, loaded)], the script's path, its output)."""
    path, output, code, seconds = _run_child(script, args, template, spec, options, name)
    results, log = [], _log_of(template, options)
    for rank, file in jobs.rank_files(template, "", options.launch.ranks()):
        try:
            loaded = loader(file)
        except TraceError as exc:
            raise ScriptError(f"rank {rank} of run {name} left no readable file: {exc}") from None
        events = len(loaded) if isinstance(loaded, Trace) else 0
        info = _run_info(f"{name} rank {rank}", file, events, loaded, code, seconds, log)
        results.append((rank, info, loaded))
    if not results:
        raise ScriptError(f"no rank of run {name} wrote {template.name}", output=output)
    return results, path, output


def _recording(trace: Path, options: RunOptions) -> dict[str, Any]:
    """The child spec's fields of a recorded run writing ``trace`` (see runfiles.ChildSpec)."""
    spec: dict[str, Any] = {
        "trace": str(trace),
        "snapshots": options.snapshots,
        "start_step": options.start_step,
        "modules_only": options.modules_only,
        "inside": options.inside,
    }
    if options.capture and options.capture_dir:
        spec.update(capture=list(options.capture), capture_dir=options.capture_dir)
        spec["capture_rank"] = options.capture_rank
    return spec


def run_plain(script: str | os.PathLike, args: tuple[str, ...], path: Path, options: RunOptions):
    """Run the script once without recording; after ``options.steps`` optimizer steps its
    training state is saved to ``path`` as a recorded run's snapshot (the observer check).
    Through torchrun, ``path`` holds ``{rank}`` and each rank saves its own.

    Raises:
        ScriptError: the script raised or exited non-zero.
    """
    _run_child(script, args, path, {"plain_state": str(path)}, options, "plain")


def run_step_times(
    script: str | os.PathLike, args: tuple[str, ...], path: Path, options: RunOptions
) -> list[float]:
    """Run the script once without recording for ``options.steps`` optimizer steps; the wall
    time of each step, in seconds (empty if no optimizer stepped).

    Raises:
        ScriptError: the script raised or exited non-zero.
    """
    import json

    _run_child(script, args, path, {"step_times": str(path)}, options, "timing")
    try:
        return [float(t) for t in json.loads(path.read_text())["seconds"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run_survey(script: str | os.PathLike, args: tuple[str, ...], path: Path, options: RunOptions):
    """Run the script once with the light op survey of ``bisector doctor``; the survey lands in
    ``path`` (JSON).

    Raises:
        ScriptError: the script raised or exited non-zero.
    """
    _run_child(script, args, path, {"survey": str(path)}, options, "survey")


def _run_child(
    script: str | os.PathLike,
    args: tuple[str, ...],
    output_file: Path,
    fields: dict[str, Any],
    options: RunOptions,
    name: str,
) -> tuple[Path, str, int, float]:
    """Start the child on the script (through torchrun if ``options.launch``), wait for it,
    and turn a failed run into an exception that names the failing rank. ``fields``: what
    the run writes, as the ChildSpec's fields (the rest comes from ``options``).

    Returns:
        (the script's path, its output, exit code (0), seconds).
    """
    path = check_script(script)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    log = _log_of(output_file, options)
    env = {**os.environ, **dict(options.env)}
    launch = options.launch
    if launch is None:
        # Import bisector from where this one lives without touching the child's environment.
        boot = (
            f"import sys; sys.path.insert(0, {_package_root()!r}); "
            "import bisector._child as child; child.main()"
        )
        command = [options.python, "-c", boot]
    else:
        # torchrun starts a module: put our folder on PYTHONPATH; the child restores it.
        env[LAUNCH_PYTHONPATH] = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
        command = [options.python, "-m", "torch.distributed.run", *launch.torchrun_args()]
        command += ["-m", "bisector._child"]
    if options.user_paths:
        named = [*options.user_paths, env.get(USER_PATHS_ENV, "")]
        env[USER_PATHS_ENV] = os.pathsep.join(filter(None, named))
    spec = ChildSpec(
        script=str(script),
        args=list(args),
        steps=options.steps,
        interventions=list(options.interventions),
        source=options.source,
        **fields,
    )
    command += ["--spec", spec.to_json()]
    started = time.perf_counter()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE if options.echo else log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            code, hung = _wait(process, log_file, options, output_file)
        except KeyboardInterrupt:
            _interrupt(process)
            raise Interrupted(
                f"interrupted during run {name}; what was recorded is kept in {_shown(output_file)}"
            ) from None
    seconds = time.perf_counter() - started
    output = log.read_text(errors="replace")
    if launch is not None and (code != 0 or hung is not None):
        raise jobs.failure(
            path, name, output_file, output, code, hung, launch, options.timeout, log
        )
    recorded = f"recorded so far: {output_file}"
    if code == EXIT_SCRIPT_RAISED:
        raise ScriptError(
            f"{path.name} raised an exception in run {name} (its traceback is above; {recorded})",
            output=output,
            exit_code=code,
        )
    if code == EXIT_INTERNAL:
        raise InternalError(
            f"bisector failed while recording run {name}: {_internal_line(output)}. This is a "
            f"bug in bisector, not in {path.name}; please report it with its traceback (in "
            f"{log}, or run with --show-output); {recorded}",
            output=output,
        )
    if code == EXIT_SETUP_FAILED:
        raise ScriptError(
            f"bisector could not start recording run {name}", output=output, exit_code=code
        )
    if code is None:
        raise ScriptError(
            f"run {name} took longer than {options.timeout:g} s and was stopped; {recorded}",
            output=output,
        )
    if code in (130, -signal.SIGINT):
        raise Interrupted(f"run {name} was interrupted; what was recorded is kept in {output_file}")
    if code != 0:
        raise ScriptError(
            f"{path.name} exited with status {code} in run {name} (its output is above; "
            f"{recorded})",
            output=output,
            exit_code=code,
        )
    return path, output, code, seconds


def _internal_line(output: str) -> str:
    """The error of an internal failure, from the line the child printed for it."""
    marker = "bisector: internal error while recording: "
    for line in output.splitlines():
        if line.startswith(marker):
            return line[len(marker) :]
    return "see its log"


def _log_of(output_file: Path, options: RunOptions | None = None) -> Path:
    """The log of a run (see RunFiles.log)."""
    launch = options.launch if options is not None else None
    if launch is None:
        return RunFiles(output_file).log()
    return RunFiles(output_file).log(launch.nnodes, launch.node_rank)


def _shown(output_file: Path) -> str:
    return str(output_file).replace(RANK, "*")


def _report_progress(options: RunOptions, output_file: Path, seconds: float) -> None:
    """Tell ``options.on_progress`` how far the run is (slowest rank for a torchrun job)."""
    from bisector.capture import progress

    if options.launch is None:
        states = [progress.read(RunFiles(output_file).progress)]
    else:
        states = list(jobs.progress_of_ranks(output_file).values())
    found = [s for s in states if s is not None]
    state = {
        "step": min((s["step"] for s in found), default=0),
        "events": sum(s["events"] for s in found),
        "seconds": seconds,
    }
    if options.on_progress is not None:
        options.on_progress(_label(options, output_file), state)


def _label(options: RunOptions, output_file: Path) -> str:
    """What a run is, for progress: "run A (step digests)", "run B with sdpa-math", ..."""
    name = output_file.name.split(".")[0]
    label = f"run {name.upper() if len(name) == 1 else name}"
    if options.interventions:
        label += f" with {', '.join(options.interventions)}"
    if output_file.suffix == ".digests":
        label += " (step digests)"
    elif options.modules_only:
        label += f" (module calls of step {options.start_step})"
    elif options.inside:
        label += f" (ops of {options.inside}, step {options.start_step})"
    elif options.start_step:
        label += f" (ops of step {options.start_step})"
    return label


def _package_root() -> str:
    """The folder holding the bisector package, so the child imports this very bisector."""
    return str(Path(__file__).resolve().parent.parent)


def _wait(
    process: subprocess.Popen, log_file, options: RunOptions, output_file: Path
) -> tuple[int | None, str | None]:
    """Wait for the child: (exit code, or None if stopped at the timeout; under torchrun, if
    no rank made progress for ``rank_timeout`` s, which ranks hang)."""
    pump = None
    if options.echo and process.stdout is not None:
        stdout: Any = process.stdout

        def copy_output() -> None:
            for chunk in iter(lambda: stdout.read1(65536), b""):
                log_file.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()

        pump = threading.Thread(target=copy_output, daemon=True)
        pump.start()
    started = time.monotonic()
    seen, changed = None, started
    code, hung = None, None
    while True:
        try:
            code = process.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if options.timeout is not None and now - started > options.timeout:
            _interrupt(process)
            code = None
            break
        if options.on_progress is not None:
            _report_progress(options, output_file, now - started)
        if options.launch is not None:
            # The watchdog: once ranks record, some rank must make progress (or end).
            state = (jobs.progress_of_ranks(output_file), jobs.statuses(output_file))
            if state != seen:
                seen, changed = state, now
            elif state[0] and now - changed > options.launch.rank_timeout:
                ranks = options.launch.ranks()
                hung = jobs.hang(output_file, state[1], ranks)  # before the stop changes it
                _interrupt(process)
                code = process.returncode
                break
    if pump is not None:
        pump.join(timeout=5)
    return code, hung


def _interrupt(process: subprocess.Popen) -> None:
    """Ask the child to stop as Ctrl-C would (it writes its trace), then insist."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now
        process.kill()
        process.wait()
