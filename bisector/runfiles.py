"""The contract between the parent (``find``, ``record``) and the child process that runs the
script: every file of a run, named here once, and what the child is to do, as one JSON object.

A run has one main file, its trace or digest file (``a.trace``); every other file is named
after it:

    a.trace                     the trace (or a.digests: step digests)
    a.trace.status              how a rank of a torchrun job ended (JSON), for the parent
    a.trace.progress            what the run is doing now (a small shared file: progress.py)
    a.trace.intervened          what the interventions noted in the run (JSON)
    a.trace.processes           other processes the script started, their torch work (JSON lines)
    a.trace.replicas            per step, fingerprints of what ranks should hold alike (JSON lines)
    a.steps/step-N.safetensors  the training state after step N (``--snapshots``)
    a.log                       the run's output (every rank's; a.node1.log per node of several)

In a torchrun job each rank writes its own, named by a template that holds ``{rank}``
(``a.rank{rank}.trace``: ``a.rank0.trace``, ``a.rank1.trace``); the child puts its rank in.
Inputs saved for a replay are ``event-N.pt`` in the capture folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# The placeholder of the rank in a torchrun job's file names.
RANK = "{rank}"

# Exit status the child uses when the user's script raised (its traceback is on stderr).
EXIT_SCRIPT_RAISED = 97
# Exit status the child uses when bisector itself could not start recording.
EXIT_SETUP_FAILED = 98
# Exit status the child uses when bisector's own code failed while recording (a bug in bisector).
EXIT_INTERNAL = 99


@dataclass(frozen=True)
class RunFiles:
    """The files of one run, from its main file (a path, or a template holding ``{rank}``)."""

    output: Path

    @classmethod
    def per_rank(cls, output: Path) -> RunFiles:
        """``a.trace`` -> the template ``a.rank{rank}.trace`` of a torchrun job's files."""
        return cls(output.with_name(f"{output.stem}.rank{RANK}{output.suffix}"))

    def of_rank(self, rank: int | str) -> RunFiles:
        return RunFiles(Path(str(self.output).replace(RANK, str(rank))))

    def _beside(self, suffix: str) -> Path:
        return Path(f"{self.output}{suffix}")

    @property
    def status(self) -> Path:
        return self._beside(".status")

    @property
    def progress(self) -> Path:
        return self._beside(".progress")

    @property
    def intervened(self) -> Path:
        return self._beside(".intervened")

    @property
    def processes(self) -> Path:
        return self._beside(".processes")

    @property
    def replicas(self) -> Path:
        return self._beside(".replicas")

    @property
    def steps(self) -> Path:
        """The folder of the training state's snapshots, one file per step."""
        return self.output.with_suffix(".steps")

    def snapshot(self, step: int) -> Path:
        return self.steps / snapshot_name(step)

    def snapshot_steps(self) -> list[int]:
        """The steps whose snapshot is on disk, in order."""
        found = self.steps.glob(f"step-*{SNAPSHOT_SUFFIX}")
        return sorted(int(p.stem.split("-")[1]) for p in found)

    def log(self, nnodes: int = 1, node_rank: int = 0) -> Path:
        """The run's output, every rank's together (one per node in a job of several)."""
        log = Path(str(self.output).replace(f".rank{RANK}", "")).with_suffix(".log")
        return log.with_suffix(f".node{node_rank}.log") if nnodes > 1 else log


# Snapshots of the training state are safetensors files (capture/snapshots.py).
SNAPSHOT_SUFFIX = ".safetensors"


def snapshot_name(step: int) -> str:
    """The file name of the snapshot after step ``step`` (in RunFiles.steps)."""
    return f"step-{int(step)}{SNAPSHOT_SUFFIX}"


# Folders the user names as their own code (os.pathsep-separated), besides the script's folder:
# set by the parent, read by the child's line locator.
USER_PATHS_ENV = "BISECTOR_USER_PATHS"


def captured_inputs(folder: Path, event: int) -> Path:
    """Where a capture run saves the inputs of event ``event`` for its replay."""
    return folder / f"event-{int(event)}.pt"


def captured_op(inputs: Path) -> Path:
    """The file beside captured inputs that names their op (one line: ``aten.mm.default``)."""
    return inputs.with_suffix(".op")


@dataclass
class ChildSpec:
    """What the child process is to do with the script, sent as one JSON argument.

    Exactly one of ``trace`` (record ops), ``digests`` (step digests only), ``survey`` (the
    light op survey of ``doctor``), ``plain_state`` or ``step_times`` (plain runs) is the run's
    main file; in a torchrun job the paths hold ``{rank}``.

    Attributes:
        script: the script, as the user named it.
        args: its arguments.
        trace, digests, survey, plain_state, step_times: the main file (see above).
        steps: stop after this many optimizer steps (None: run to the end).
        start_step: record ops only from this step on.
        capture: event indices whose op inputs are saved for a replay, in ``capture_dir``.
        capture_rank: in a torchrun job, the rank whose events ``capture`` numbers.
        snapshots: save the training state after each recorded step (``RunFiles.steps``).
        interventions: names of the interventions to apply (see confirm/).
        source: a file whose code runs in the script's place (a patched copy).
        modules_only: record module calls only (see RecordOptions).
        inside: record only the ops of this module (see RecordOptions).
    """

    script: str
    args: list[str] = field(default_factory=list)
    trace: str | None = None
    digests: str | None = None
    survey: str | None = None
    plain_state: str | None = None
    step_times: str | None = None
    steps: int | None = None
    start_step: int = 0
    capture: list[int] = field(default_factory=list)
    capture_dir: str | None = None
    capture_rank: int | None = None
    snapshots: bool = False
    interventions: list[str] = field(default_factory=list)
    source: str | None = None
    modules_only: bool = False
    inside: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def for_rank(self, rank: int | str) -> ChildSpec:
        """The spec with ``{rank}`` in its paths replaced by this rank."""
        values = asdict(self)
        for name in ("trace", "digests", "plain_state", "step_times"):
            if values[name]:
                values[name] = values[name].replace(RANK, str(rank))
        return ChildSpec(**values)

    @property
    def main_file(self) -> str | None:
        """The file the run writes (its status and notes are named after it)."""
        return self.trace or self.digests or self.plain_state or self.step_times
