"""The command line: parse, call the API, render. The only place that prints errors and exits.

Exit codes: 0 reproducible, 1 divergence found, 2 error (bad input, script failure, Ctrl-C),
3 inconclusive (the runs agree but do not show that training is reproducible).
"""

from __future__ import annotations

import importlib
import io
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.console import Console

from bisector import __version__
from bisector.digests import LADDER_FROM
from bisector.errors import BisectorError, ScriptError
from bisector.words import counted, plural

if TYPE_CHECKING:
    from bisector.runner import Launch

# torch and what imports it (the API, the runner, the renderers) are imported by the commands
# that need them, so that `--help` and `--version` answer at once.

EXIT_REPRODUCIBLE, EXIT_DIVERGED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
# Lines of a failed script's output shown (the end, where its traceback is).
_OUTPUT_TAIL = 60

app = typer.Typer(
    name="bisector",
    help="Find why two runs of the same PyTorch training stop being bitwise identical.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _version(value: bool) -> None:
    if value:
        print(f"bisector {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find why two runs of the same PyTorch training stop being bitwise identical."""


_MODULE = typer.Option(
    None,
    "--module",
    "-m",
    help="Run this module as `python -m` does (package.train), instead of a SCRIPT; the "
    "script's arguments still go after `--`.",
)


def _target(script: Path | None, module: str | None, args: list[str] | None):
    """(the script's file, its arguments, environment for the child) of SCRIPT or -m MODULE."""
    from bisector.runner import MODULE_ENV, module_file

    if module is None:
        if script is None:
            raise BisectorError("give the training script to run, or -m package.module")
        return script, tuple(args or ()), ()
    if script is not None:  # `-m pkg.train -- --lr 3`: the first script argument landed here
        args = [str(script), *(args or [])]
    return module_file(module), tuple(args or ()), ((MODULE_ENV, module),)


# torchrun options, shared by find and record.
_NPROC = typer.Option(
    None,
    "--nproc-per-node",
    min=1,
    help="Launch each run through torchrun with this many processes (ranks) on this node; "
    "one trace per rank, compared rank by rank.",
)
_NNODES = typer.Option(1, "--nnodes", min=1, help="Nodes in the torchrun job.")
_NODE_RANK = typer.Option(
    0, "--node-rank", min=0, help="This node's rank (run the same command on every node)."
)
_MASTER_ADDR = typer.Option(None, "--master-addr", help="Address of the node of rank 0.")
_MASTER_PORT = typer.Option(None, "--master-port", help="A free port on the node of rank 0.")
_RANK_TIMEOUT = typer.Option(
    300.0,
    "--rank-timeout",
    min=1,
    help="With --nproc-per-node: seconds without progress on any rank (no op recorded, no rank "
    "ending) before the job is taken as hung, stopped, and the hanging rank named.",
)


_HTML = typer.Option(
    None,
    "--html",
    help="Also write the report as one self-contained HTML file (plots, module tree): open it "
    "in a browser or attach it to a bug report.",
)
_QUIET = typer.Option(
    False, "--quiet", "-q", help="Print nothing but errors (no progress, no report on screen)."
)
_USER_PATH = typer.Option(
    None,
    "--user-path",
    help="A folder or file of your own code (repeatable), besides the script's folder and the "
    "working folder: a report's line is the innermost line in your code, with the library "
    "line beside it.",
)


def _absolute(paths: list[Path] | None) -> tuple[str, ...]:
    return tuple(str(p.resolve()) for p in paths or ())


def _launch(nproc, nnodes, node_rank, master_addr, master_port, rank_timeout) -> Launch | None:
    from bisector.runner import Launch

    if nproc is None:
        if nnodes > 1:
            raise BisectorError("--nnodes needs --nproc-per-node")
        return None
    return Launch(nproc, nnodes, node_rank, master_addr, master_port, rank_timeout)


@app.command(
    context_settings={"ignore_unknown_options": False},
    short_help="Run a script twice, name the first op that differs, confirm the cause.",
)
def find(
    script: Path | None = typer.Argument(
        None, help="The training script to run twice (or -m MODULE)."
    ),
    args: list[str] | None = typer.Argument(
        None, help="Arguments for the script; put them after `--`."
    ),
    module: str | None = _MODULE,
    steps: int = typer.Option(
        2,
        "--steps",
        "-n",
        min=1,
        help="Optimizer steps to record in each run (top-level forward calls if the script "
        "has no optimizer); recording goes on past them until every optimizer of the script "
        "has stepped (a GAN's generator after its critic's), for at most 16 steps more.",
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write the report as JSON to this file."
    ),
    html_path: Path | None = _HTML,
    quiet: bool = _QUIET,
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        help="Folder for the traces and logs of the two runs "
        "(default: a new folder under .bisector/).",
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=1, help="Stop a run that takes longer than this many seconds."
    ),
    show_output: bool = typer.Option(
        False, "--show-output", help="Show the script's own output while it runs."
    ),
    no_confirm: bool = typer.Option(
        False,
        "--no-confirm",
        help="Only name the first divergent op: no replay, no pairs "
        "of runs with interventions, no verdict.",
    ),
    tries: list[str] | None = typer.Option(
        None,
        "--try",
        help="Also try this intervention (repeatable; see `bisector interventions`).",
    ),
    only_tries: bool = typer.Option(
        False, "--only-tries", help="Try only the interventions given with --try."
    ),
    replays: int = typer.Option(
        20,
        "--replays",
        min=1,
        help="Times each source op is re-run on its saved inputs, at least (while every "
        "result is the same, on to 200 runs within 10 s more).",
    ),
    fix: bool = typer.Option(
        False,
        "--fix",
        help="Write the verdict's fix as a patch to the script (fix/fix.patch in the work "
        "folder; the script itself is not changed), run the patched script twice, and report "
        "whether it is bitwise reproducible over the steps asked for and what it costs per step.",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        min=1,
        help="Pairs of runs with interventions made at the same time, at most (default: one "
        "per GPU when the script used CUDA, each pair seeing only its GPU; else one per 4 CPU "
        "cores).",
    ),
    ladder: bool | None = typer.Option(
        None,
        "--ladder/--no-ladder",
        help="First find the first differing step with cheap per-step digests, then the first "
        "module of that step whose inputs are equal and outputs differ, then record the ops of "
        f"that module (else every op of the step) only (default: when --steps is over "
        f"{LADDER_FROM}).",
    ),
    check_observer: bool = typer.Option(
        False,
        "--check-observer",
        help="Also run the script once without recording and check that its training state "
        "after the same steps is bitwise that of the recorded run.",
    ),
    nproc_per_node: int | None = _NPROC,
    nnodes: int = _NNODES,
    node_rank: int = _NODE_RANK,
    master_addr: str | None = _MASTER_ADDR,
    master_port: int | None = _MASTER_PORT,
    rank_timeout: float = _RANK_TIMEOUT,
    user_paths: list[Path] | None = _USER_PATH,
) -> None:
    """Run SCRIPT twice in fresh processes, record every operator, name the first one whose
    outputs differ while its inputs were identical, and confirm the cause."""
    from bisector import api
    from bisector.runner import RunOptions

    script, script_args, env = _target(script, module, args)
    launch = _launch(nproc_per_node, nnodes, node_rank, master_addr, master_port, rank_timeout)
    display = _Progress(enabled=not quiet)
    run = RunOptions(
        steps=steps,
        timeout=timeout,
        echo=show_output,
        launch=launch,
        on_progress=display.update,
        user_paths=_absolute(user_paths),
        env=env,
    )
    confirm = None
    if not no_confirm:
        from bisector.confirm import ConfirmOptions
        from bisector.confirm.interventions import catalogue

        known = {i.name for i in catalogue()}
        unknown = [name for name in tries or () if name not in known]
        if unknown:
            raise BisectorError(
                f"unknown intervention {unknown[0]!r}; `bisector interventions` lists them"
            )
        confirm = ConfirmOptions(
            replays=replays,
            forced=tuple(tries or ()),
            only_forced=only_tries,
            run=run,
            jobs=jobs,
            fix=fix,
        )
    options = api.FindOptions(
        workdir=str(workdir) if workdir else None,
        run=run,
        confirm=confirm,
        ladder=ladder,
        check_observer=check_observer,
    )
    with display:
        report = api.find(script, script_args, steps=steps, options=options)
    _finish(report, json_path, html_path, quiet, next_hint=True)


@app.command(short_help="Run a script once and save its trace, for `bisector diff`.")
def record(
    script: Path | None = typer.Argument(
        None, help="The training script to run once (or -m MODULE)."
    ),
    args: list[str] | None = typer.Argument(
        None, help="Arguments for the script; put them after `--`."
    ),
    module: str | None = _MODULE,
    output: Path = typer.Option(..., "--output", "-o", help="The trace file to write."),
    steps: int | None = typer.Option(
        2,
        "--steps",
        "-n",
        min=1,
        help="Optimizer steps to record (top-level forward calls if there is no optimizer); "
        "recording goes on past them until every optimizer of the script has stepped, for at "
        "most 16 steps more.",
    ),
    all_steps: bool = typer.Option(
        False, "--all", help="Record the whole script (ignore --steps)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=1, help="Stop the run if it takes longer than this many seconds."
    ),
    show_output: bool = typer.Option(
        False, "--show-output", help="Show the script's own output while it runs."
    ),
    nproc_per_node: int | None = _NPROC,
    nnodes: int = _NNODES,
    node_rank: int = _NODE_RANK,
    master_addr: str | None = _MASTER_ADDR,
    master_port: int | None = _MASTER_PORT,
    rank_timeout: float = _RANK_TIMEOUT,
    user_paths: list[Path] | None = _USER_PATH,
) -> None:
    """Run SCRIPT once and save its trace, to compare later with `bisector diff`."""
    from bisector.runner import RunOptions, run_ranks, run_recorded

    script, script_args, env = _target(script, module, args)
    launch = _launch(nproc_per_node, nnodes, node_rank, master_addr, master_port, rank_timeout)
    run = RunOptions(
        steps=None if all_steps else steps,
        timeout=timeout,
        echo=show_output,
        launch=launch,
        user_paths=_absolute(user_paths),
        env=env,
    )
    out = _console()
    if launch is not None:
        for rank, info, _ in run_ranks(script, script_args, output, run, name="A"):
            out.print(f"Rank {rank}: recorded {_recorded(info)} into")
            _command(out, str(info.trace))
        out.print("Next: record another run with another name, then diff the two jobs:")
        _command(out, f"bisector diff {output} OTHER{output.suffix}")
        return
    info, _ = run_recorded(script, script_args, output, run, name="A")
    out.print(f"Recorded {_recorded(info)} into")
    _command(out, str(output))
    out.print("Next: record another run, then")
    _command(out, f"bisector diff {output} OTHER.trace")


def _recorded(info) -> str:
    return f"{counted(info.events, 'event')} over {counted(info.steps, 'optimizer step')}"


def _command(out: Console, text: str) -> None:
    """A command or path on a line of its own, never wrapped (so it copies whole)."""
    out.print(f"  {text}", markup=False, soft_wrap=True)


@app.command()
def interventions() -> None:
    """List the interventions `find` can try, and what each changes."""
    from bisector.confirm.interventions import catalogue
    from bisector.render.console import hanging, width_of

    out = _console()
    for intervention in catalogue():
        for line in hanging(intervention.summary, f"{intervention.name:18s} ", width_of(out)):
            out.print(line, markup=False)


@app.command(short_help="List the work folders of past runs under .bisector/, and prune them.")
def runs(
    prune: bool = typer.Option(
        False, "--prune", help="Remove old runs: beyond --keep, or older than --older-than."
    ),
    keep: int | None = typer.Option(
        None,
        "--keep",
        min=0,
        help="With --prune: keep this many of the newest runs (default: "
        "the number kept after each run, 20 or $BISECTOR_KEEP_RUNS; 0: no limit).",
    ),
    older_than: float | None = typer.Option(
        None, "--older-than", min=0, help="With --prune: remove runs older than this many days."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --prune: say what would be removed, remove nothing."
    ),
    folder: Path = typer.Option(Path(".bisector"), "--dir", help="The folder that holds the runs."),
) -> None:
    """List the work folders that `bisector find` left under .bisector/ (newest first: size,
    script, what it found), or prune them. After each run, find keeps the newest 20
    ($BISECTOR_KEEP_RUNS sets how many; 0 keeps all)."""
    from bisector import workdirs
    from bisector.render.console import hanging, width_of

    out = _console()
    width = width_of(out)
    if prune:
        limit = workdirs.keep_default() if keep is None and older_than is None else keep
        removed = workdirs.prune(folder, limit, older_than, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        total = workdirs.human_size(sum(run.size for run in removed))
        out.print(f"{verb} {counted(len(removed), 'run')} ({total}) from {folder}/", markup=False)
        for run in removed:
            _command(out, str(run.path))
        return
    found = workdirs.runs(folder)
    if not found:
        out.print(f"no runs under {folder}/", markup=False)
        return
    for run in found:
        about = run.about
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started))
        script = " ".join([about.get("script", "?"), *about.get("args", [])]).strip()
        head = f"{run.path}  {when}  {workdirs.human_size(run.size)}"
        out.print(head, markup=False, soft_wrap=True)
        noted = about.get("headline", "no report noted") if about else "no run.json (an older run)"
        for line in hanging(f"{script}: {noted}", "    ", width):
            out.print(line, markup=False, soft_wrap=True)
    total = workdirs.human_size(sum(run.size for run in found))
    out.print(
        f"{counted(len(found), 'run')}, {total}; `bisector runs --prune` keeps the newest "
        f"{workdirs.keep_default()}",
        markup=False,
    )


@app.command(short_help="Settings that matter here, and known nondeterministic ops of a script.")
def doctor(
    script: Path | None = typer.Argument(
        None,
        help="A training script to survey (run once, briefly): which known "
        "nondeterministic ops it runs, where.",
    ),
    args: list[str] | None = typer.Argument(
        None, help="Arguments for the script; put them after `--`."
    ),
    module: str | None = _MODULE,
    steps: int = typer.Option(1, "--steps", "-n", min=1, help="Optimizer steps to survey."),
    timeout: float | None = typer.Option(
        None, "--timeout", min=1, help="Stop the survey run after this many seconds."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write what was found as JSON to this file."
    ),
) -> None:
    """Show the determinism-relevant settings of this environment (versions, flags, environment
    variables, SDPA backends, threads) and, given a script, the known nondeterministic ops it
    runs, from one short run (nothing is compared)."""
    import json
    import tempfile

    from bisector import doctor as doc
    from bisector.render import doctor as doctor_render
    from bisector.runner import RunOptions, run_survey

    env = doc.environment()
    survey, hits = None, []
    if script is not None or module is not None:
        script, script_args, target_env = _target(script, module, args)
        with tempfile.TemporaryDirectory(prefix="bisector-doctor-") as folder:
            path = Path(folder) / "survey.json"
            run = RunOptions(steps=steps, timeout=timeout, env=target_env)
            run_survey(script, script_args, path, run)
            survey = doc.load_survey(path)
        hits = doc.match(survey)
    out = _console()
    doctor_render.render(env, doc.advice(env, survey), survey, hits, out)
    data = {"schema": 1, **env, "advice": doc.advice(env)}
    if survey is not None:
        data.update(survey_steps=survey.steps, script_settings=survey.settings, known_ops=hits)
        data["ops"] = survey.ops
    if json_path is not None:
        _write(json.dumps(data, indent=2, default=str) + "\n", json_path, "JSON", out)


@app.command(short_help="Compare two traces, digest files or checkpoints of finished runs.")
def diff(
    file_a: Path = typer.Argument(
        ...,
        help="Trace, digest file or checkpoint of the first run (a torchrun job: the name given "
        "to record, e.g. a.trace for a.rank0.trace, a.rank1.trace, ...).",
    ),
    file_b: Path = typer.Argument(..., help="The same kind of file from the second run."),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write the report as JSON to this file."
    ),
    html_path: Path | None = _HTML,
    quiet: bool = _QUIET,
) -> None:
    """Compare two finished runs from what they left behind: two traces (the first divergent
    op), two digest files from bisector.watch (the first divergent step and values), or two
    checkpoints (every tensor that differs). The kind is read from the files' content."""
    from bisector import api

    report = api.diff(file_a, file_b)
    _finish(report, json_path, html_path, quiet, next_hint=False)


def _write(text: str, path: Path, what: str, out: Console) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BisectorError(f"cannot write the {what} report to {path}: {exc.strerror}") from None
    out.print(f"{what} report written to")
    _command(out, str(path))


def _finish(report, json_path: Path | None, html_path: Path | None, quiet: bool, next_hint: bool):
    """Show the report (a Report, DigestReport or CheckpointReport), write its files, exit."""
    from bisector.render import to_console, to_file

    out = Console(file=io.StringIO()) if quiet else _console()
    if not quiet:  # quiet: nothing on screen, the exit code and the files carry the result
        to_console(report, out)
    if json_path is not None:  # the report is only serialised when asked for
        _write(to_file(report, "json"), json_path, "JSON", out)
    if html_path is not None:
        _write(to_file(report, "html"), html_path, "HTML", out)
    if next_hint and len(report.runs) == 2 and not report.reproducible:
        a, b = report.runs
        out.print("Re-read these runs any time:")
        _command(out, f"bisector diff {a.trace} {b.trace}")
    raise typer.Exit(_exit_code(report))


def _exit_code(report) -> int:
    if report.reproducible:
        return EXIT_REPRODUCIBLE
    if getattr(report, "verdict", "") == "inconclusive":
        return EXIT_INCONCLUSIVE
    return EXIT_DIVERGED


class _Progress:
    """A one-line live status on stderr while runs go (only on a terminal, never with --quiet):
    which run, its step and events recorded, and time."""

    def __init__(self, enabled: bool):
        self._console = Console(stderr=True, highlight=False)
        self._enabled = enabled and self._console.is_terminal
        self._status: Any = None
        self._lock = threading.Lock()
        self._lines: dict[str, tuple[float, str]] = {}

    def __enter__(self) -> _Progress:
        if self._enabled:
            self._status = self._console.status("starting the first run...")
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> Literal[False]:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None
        return False

    def update(self, label: str, state: dict) -> None:
        """Called about twice a second by each run going (pairs may run side by side)."""
        if self._status is None:
            return
        count = state["events"]
        events = f", {count:,} {plural(count, 'event')} recorded" if count else ""
        now = time.monotonic()
        with self._lock:
            self._lines[label] = (now, f"{label}: step {state['step']}{events}")
            going = [(t, line) for t, line in self._lines.values() if now - t < 2.0]
            self._lines = {k: v for k, v in self._lines.items() if now - v[0] < 2.0}
        others = f" (+{len(going) - 1} more running)" if len(going) > 1 else ""
        self._status.update(f"{self._lines[label][1]} ({state['seconds']:.0f} s){others}")


def _click_exceptions() -> list:
    """The exception modules of click and of the click copy that newer typer versions carry."""
    modules = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


_CLICK = _click_exceptions()
_EXITS = tuple(m.Exit for m in _CLICK if hasattr(m, "Exit")) + (typer.Exit,)
_ABORTS = tuple(m.Abort for m in _CLICK if hasattr(m, "Abort")) + (typer.Abort,)
_USAGE = tuple(m.UsageError for m in _CLICK)
_NO_ARGS = tuple(m.NoArgsIsHelpError for m in _CLICK if hasattr(m, "NoArgsIsHelpError"))
_CLICK_OTHER = tuple(m.ClickException for m in _CLICK)


# The value placeholder each option and argument shows in --help, by parameter name.
_METAVARS = {
    "script": "SCRIPT",
    "args": "ARGS",
    "file_a": "A",
    "file_b": "B",
    "output": "FILE",
    "json_path": "FILE",
    "html_path": "FILE",
    "workdir": "DIR",
    "steps": "N",
    "replays": "N",
    "jobs": "N",
    "nproc_per_node": "N",
    "nnodes": "N",
    "node_rank": "N",
    "master_addr": "HOST",
    "master_port": "PORT",
    "timeout": "SECONDS",
    "rank_timeout": "SECONDS",
    "tries": "NAME",
    "module": "MODULE",
    "user_paths": "PATH",
}


def click_command():
    """The click command tree that typer builds from ``app``, with plain value placeholders
    (``--steps N``, not typer's ``<int range>``)."""
    root = typer.main.get_command(app)
    for sub in getattr(root, "commands", {}).values():
        for param in sub.params:
            metavar = _METAVARS.get(param.name or "")
            if metavar is None or getattr(param, "is_flag", False):
                continue
            param.metavar = metavar
            if param.param_type_name == "argument":  # SCRIPT [ARGS]..., as click writes them
                usage = metavar if param.required else f"[{metavar}]"
                usage += "..." if param.nargs != 1 else ""
                param._usage_display_name = lambda usage=usage: usage  # type: ignore[attr-defined]
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    return root


def _usage_message(exc, command: str) -> str:
    """The usage error in one line; an unknown option of a command that runs a script is most
    likely the script's own, given before the `--` that separates them."""
    message = exc.format_message()
    option = getattr(exc, "option_name", None)
    if option and command.rpartition(" ")[2] in ("find", "record", "doctor"):
        return (
            f"{message}. If {option} is your script's option, put the script's arguments "
            f"after `--`: {command} SCRIPT -- {option} ..."
        )
    return f"{message} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bisector` command; returns the exit code."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of exiting.
        code = click_command().main(args=argv, prog_name="bisector", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_REPRODUCIBLE
    except _EXITS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _NO_ARGS as exc:
        print(exc.ctx.get_help() if exc.ctx else "Usage: bisector COMMAND --help")
        return EXIT_ERROR
    except _USAGE as exc:
        command = exc.ctx.command_path if exc.ctx else "bisector"
        err.print(f"bisector: error: {_usage_message(exc, command)}", markup=False)
        return EXIT_ERROR
    except _CLICK_OTHER as exc:
        err.print(f"bisector: error: {exc.format_message()}", markup=False)
        return EXIT_ERROR
    except _ABORTS + (KeyboardInterrupt,):
        err.print("bisector: interrupted", markup=False)
        return EXIT_ERROR
    except ScriptError as exc:
        if exc.output:
            lines = exc.output.rstrip("\n").splitlines()
            if len(lines) > _OUTPUT_TAIL:
                lines = [
                    f"... ({len(lines) - _OUTPUT_TAIL} earlier lines of the script's output "
                    "are in the run's .log file)"
                ] + lines[-_OUTPUT_TAIL:]
            sys.stderr.write("\n".join(lines) + "\n")
        err.print(f"bisector: error: {exc}", markup=False)
        return EXIT_ERROR
    except BisectorError as exc:
        err.print(f"bisector: error: {exc}", markup=False)
        return EXIT_ERROR


def run() -> None:
    """Console-script wrapper: exit with main()'s code."""
    sys.exit(main())
