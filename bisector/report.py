"""The Report: what a comparison found, as plain JSON-serialisable dataclasses.

The JSON shape is a contract: ``schema`` is an integer and keys are only ever added.
Schema versions (keys are only added; ``schema`` changes only if a meaning changes):
    1: first version: reproducible, first_divergence, sources, runs, and the added keys below;
       later additions within 1: cause, fix, confirmations, replay, growth, environment,
       levels, spreaders, curve, modules, observer, verdict, evidence, dead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

SCHEMA = 1

# Kinds of source (see DESIGN.md).
KINDS = ("kernel", "rng", "input", "argument", "structure", "uninitialized", "unconfirmed")


# ----- the parts of a report, as typed records (plain dicts in memory and in JSON) -----------


class EnvironmentRow(TypedDict):
    """One setting that differs between the two processes (see environment.py): a version, a
    device, a determinism setting or an environment variable (``what`` starts with ``$``)."""

    what: str
    a: Any
    b: Any


class ModuleRow(TypedDict):
    """One module path of run A: events recorded inside it and how many of them differ."""

    module: str
    events: int
    differing: int


class Evidence(TypedDict, total=False):
    """What the verdict rests on (see analysis/evidence.py)."""

    events: int  # events compared
    optimizer_steps: int
    model_calls: int | None  # calls of top-level modules that own parameters (None: unknown)
    parameter_writes: int | None
    unseen_processes: list[dict[str, Any]]  # processes that trained unrecorded
    reasons: list[str]  # why the verdict is inconclusive (empty otherwise)
    level: str  # "digests" when only step digests were compared
    ranks: dict[int, Evidence]  # in a job of several ranks: each rank's own


class StructureBreak(TypedDict, total=False):
    """Where the two op streams stop matching (analysis/align.py), and where they resume."""

    event: int
    event_b: int | None
    resumed_at: int | None
    resumed_at_b: int | None
    reason: str
    breaks: list[StructureBreak]  # every break (at most 100), the first one included
    rank: int  # in a job of several ranks: the rank whose streams break first


class Check(TypedDict, total=False):
    """How a kernel source's claim was checked: replayed on its captured inputs."""

    how: str  # "replay"
    runs: int
    distinct_results: int
    result: str  # "confirmed", "contradicted" or "not checked"
    why: str  # for "not checked"


class ReplicaSplit(TypedDict):
    """The first value that the ranks of one run held differently (analysis/replicas.py)."""

    step: int
    kind: str  # "parameter" or "buffer"
    name: str
    groups: list[list[int]]  # ranks grouped by the value they held, the largest group first
    values: int  # how many values differed at that step


class DigestValue(TypedDict, total=False):
    """One value of a step digest that differs (see digests.py): where it was taken and a
    lower bound of its largest difference."""

    kind: str  # rng, batch, loss, grad, param, state, buffer
    name: str
    max_abs_diff: float | None
    rank: int  # in a torchrun job


class Override(TypedDict):
    """The script's own attempt to undo an intervention (it did not take effect)."""

    what: str
    line: str


class GrowthRow(TypedDict, total=False):
    """One step of a pair's difference: differing events (or values, for digests) and the
    largest gradient, parameter and optimizer-state differences (exact from snapshots, else
    lower bounds)."""

    step: int
    differing_events: int
    differing: int
    max_grad_diff: float | None
    max_param_diff: float | None
    max_state_diff: float | None
    exact: bool


class Confirmation(TypedDict, total=False):
    """One pair of runs with an intervention (see confirm/)."""

    intervention: str | None
    outcome: str  # fixes, amplifier, no-effect, fails, did-not-apply, inconclusive
    reproducible: bool | None
    error: str | None
    first_divergence: str | None
    summary: str
    growth: list[GrowthRow]
    overrides: list[Override]
    not_applied: str
    effect: dict[str, Any]  # confirm.effects.Effect, as a dict
    explanation: str


class Replayed(TypedDict, total=False):
    """One source op replayed on its captured inputs (confirm.replay.Replay, as a dict)."""

    op: str
    event: int
    runs: int
    distinct_results: int | None
    repro: str
    error: str | None
    seed: int | None
    rank: int


class Level(TypedDict, total=False):
    """One rung of the ladder: what it recorded, what it found, how long it took."""

    level: str  # digests, modules, ops
    steps: str
    found: str
    seconds: float
    first_step: int | None
    first_values: list[DigestValue]


class Spreader(TypedDict, total=False):
    """A collective that carried another rank's difference to this rank."""

    op: str
    module: str
    phase: str
    step: int
    location: str
    library: str
    ranks: list[int]
    from_ranks: list[int]
    origin: str


class SnapshotMatch(TypedDict):
    """Two saved training states compared value by value (capture/snapshots.py)."""

    equal: bool
    tensors: int
    differing: int
    max_abs_diff: float


class ObserverCheck(TypedDict, total=False):
    """``--check-observer``: a plain run's training state against the recorded run's."""

    checked: bool
    why: str
    steps: int
    equal: bool
    tensors: int
    differing: int
    max_abs_diff: float
    ranks: dict[int, SnapshotMatch]
    verdict: str


class FixCheck(TypedDict, total=False):
    """``find --fix``: the fix written as a patch, and the patched script's runs."""

    made: bool
    why: str
    intervention: str
    patch: str
    diff: str
    file: str
    line: int
    reproducible: bool | None
    steps: int
    events: int
    first_step: int | None
    first_values: list[DigestValue]
    step_seconds: dict[str, float]
    cost: float | None
    notes: list[str]
    error: str


@dataclass
class Source:
    """An event whose outputs differ between the runs while its inputs were identical.

    Attributes:
        kind: "kernel" (the op itself is nondeterministic), "rng" (a random op whose generator
            state differed), "input" (a leaf tensor differs: data, initial weights), "argument"
            (a non-tensor argument differs), "structure" (the op streams stop matching),
            "uninitialized" (it reads memory made by torch.empty and kin, never written),
            "unconfirmed" (it looked like a kernel source, but its replay on the captured
            inputs was bitwise stable: see ``checked`` and ``detail``).
        op: the aten overload, e.g. "aten.index_put_.default" ("leaf.tensor" for leaves).
        module: module path, e.g. "layers.0.self_attn" ("" outside every module).
        phase: "forward", "backward", "optimizer" or "other".
        step: optimizer steps completed before the event.
        rank: the process rank (0 unless distributed).
        location: "file.py:LINE" in the user's code ("" when unknown): the innermost frame in
            the user's own files (see capture/lines.py).
        library: "file.py:LINE" of the innermost library frame inside that line (the library
            code that issued the op: Lightning, transformers, PyG's generated code), "" if none.
        max_abs_diff: how large the difference is (see ``max_abs_diff_bound``).
        max_abs_diff_bound: "lower" when ``max_abs_diff`` is a lower bound derived from the
            recorded stats (the sum and largest absolute value of each output), "exact" when
            computed from the values themselves.
        event: the event's index in run A's trace.
        detail: one sentence saying what differs.
        spread: differing events that depend on this one (its reach in the dataflow graph).
        args: the non-tensor arguments in run A and run B (for "argument" and "structure").
        written: for "argument": the module (or its nearest parent) whose own arguments differ,
            as the user wrote them in run A and run B ("Dropout(p=0.114, inplace=False)": the
            op may see a derived value, 1 - p); empty when the modules are alike.
        built: the user's line that built that module ("" if unknown).
        checked: for a kernel claim, how it was checked: ``how`` ("replay"), ``runs``,
            ``distinct_results``, ``result`` ("confirmed", "contradicted", "not checked") and
            ``why`` (when not checked); None for other kinds.
    """

    kind: str
    op: str
    module: str
    phase: str
    step: int
    rank: int
    location: str
    max_abs_diff: float | None
    library: str = ""
    max_abs_diff_bound: str = "lower"
    event: int = 0
    detail: str = ""
    spread: int | None = None
    args: list[str] = field(default_factory=list)
    checked: Check | None = None
    written: list[str] = field(default_factory=list)
    built: str = ""


@dataclass
class RunInfo:
    """One of the two runs compared."""

    name: str
    trace: str
    events: int
    steps: int
    status: str
    complete: bool
    exit_code: int | None = None
    seconds: float | None = None
    log: str | None = None


@dataclass
class Report:
    """What comparing two runs found.

    Attributes:
        reproducible: True if the verdict is "reproducible": every live compared value is
            bitwise equal, the streams match, and the runs showed training (see verdict).
        first_divergence: the first source in execution order (the headline), or None.
        sources: every source, in execution order.
        runs: the two runs (traces, events, how they ended).
        compared_events: events paired and compared.
        differing_events: paired events with at least one differing output.
        first_differing_event: index of the first event with a differing output, or None.
        structure: where the op streams stop matching, or None if they match throughout.
        notes: other findings worth reading (seeds, settings, incomplete traces).
        cause: one line naming the first source (set by confirmation).
        fix: the smallest change that made the runs identical, with the user's line, or None.
        confirmations: one entry per intervention pair: intervention, outcome ("fixes",
            "amplifier", "no-effect", "fails", "did-not-apply" with ``not_applied``: why the
            change did not take effect in a run, "inconclusive": identical, but so was a second
            plain pair, see ``recurred``), reproducible, error, first_divergence,
            overrides (the script's own attempts to undo the change, each ``{"what",
            "line"}``: the change held), growth (the pair's own rows, as ``growth``), and
            for a pair that still differs: effect (see confirm/effects.py: the pair's curve of
            the largest parameter difference per step from the first differing step on, the
            plain pairs' curves, level and rate against them with the plain pairs' spread
            and the thresholds used, decided_by) and for adam-to-sgd an explanation.
            "amplifier": the change moves the level or the rate beyond 3x the plain pairs'
            spread (and beyond 1 decade, or 0.5 decades a step); "no-effect": it does not
            (no clear effect). Pairs run a few steps past the first differing step.
        replay: one entry per replayed source op: op, event, runs, distinct_results, repro,
            error (why it could not run: inputs not captured or not savable, with the reason).
        growth: per step, differing events and the largest gradient, parameter and
            optimizer-state differences (exact from snapshots, else lower bounds).
        growth_again: the same per step for a second plain pair, made when a pair with an
            intervention still differs or the first cause is unconfirmed: how much the
            difference varies from pair to pair.
        recurred: whether that second plain pair differed too (None: none was made, or it
            failed). False with an unconfirmed first cause: the divergence did not recur, and
            no change is credited with making the runs identical (their outcome is
            "inconclusive").
        fix_check: with ``find --fix``: the fix written as a patch and proven: made (False,
            with why, when the fix is not a switch bisector can write), intervention, patch
            (the .patch file), diff, file, line, reproducible (the patched script's two runs
            bitwise alike over ``steps`` steps), first_step and first_values where they are
            not, step_seconds {before, after} (median plain step time without and with the
            patch), cost (after / before), notes, error (the patched script failed).
        environment: what differs between the two processes: ``{"what", "a", "b"}`` for
            versions, devices, determinism settings and environment variables.
        levels: how ``find`` got here when it bisected over steps: one entry per level
            (``"digests"``: every step, values only; ``"ops"``: every op of the chosen steps)
            with what it found and what it cost.
        spreaders: in a multi-process job, collectives that carried a difference from one rank
            to others: op, module, phase, step, location, ranks (where it arrived), from_ranks,
            origin (the op it came from).
        curve: the difference over the run: ``[event, step, max_abs_diff lower bound]`` per
            differing event (at most 2000: the largest of each bucket), for plots.
        modules: per module path, ``{"module", "events", "differing"}`` (the module tree).
        verdict: "reproducible", "diverged" or "inconclusive" (equal runs that do not prove
            anything: the model never ran, no parameter changed, training ran in processes
            bisector did not record; ``evidence["reasons"]`` says why). "" in reports of
            older versions.
        evidence: what the verdict rests on: events compared, optimizer_steps, model_calls
            (calls of top-level modules that own parameters), parameter_writes,
            unseen_processes (processes that trained unrecorded), reasons.
        dead: sources whose difference nothing used (it reaches no later differing event
            and was freed before the run ended: scratch); they never make runs diverge.
        observer: with ``--check-observer``: whether a plain run's training state equals the
            recorded run's (``checked``, ``equal``, ``steps``, ``tensors``, ``differing``,
            ``max_abs_diff``, ``verdict``); None when not asked.
        replicas: in a job of several ranks, the first value that the ranks held differently
            within run A although every rank should hold it alike (DDP parameters, replicated
            DTensors, buffers): ``{"step", "kind", "name", "groups", "values"}`` (``groups``:
            the ranks grouped by the value they held, the largest group first); None when
            they agreed or the job had one rank.
    """

    reproducible: bool
    first_divergence: Source | None
    sources: list[Source]
    runs: list[RunInfo]
    compared_events: int = 0
    differing_events: int = 0
    first_differing_event: int | None = None
    structure: StructureBreak | None = None
    notes: list[str] = field(default_factory=list)
    sources_total: int = 0
    cause: str | None = None
    fix: str | None = None
    confirmations: list[Confirmation] = field(default_factory=list)
    replay: list[Replayed] = field(default_factory=list)
    growth: list[GrowthRow] = field(default_factory=list)
    growth_again: list[GrowthRow] = field(default_factory=list)
    recurred: bool | None = None
    fix_check: FixCheck | None = None
    environment: list[EnvironmentRow] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)
    spreaders: list[Spreader] = field(default_factory=list)
    curve: list[list] = field(default_factory=list)
    modules: list[ModuleRow] = field(default_factory=list)
    observer: ObserverCheck | None = None
    verdict: str = ""
    evidence: Evidence = field(default_factory=lambda: Evidence())
    dead: list[Source] = field(default_factory=list)
    replicas: ReplicaSplit | None = None
    schema: int = SCHEMA

    @property
    def diverged_once(self) -> bool:
        """The first pair differed at an unconfirmed first cause and a second plain pair was
        identical (``recurred`` False): the divergence did not recur, no change is credited."""
        first = self.first_divergence
        return self.recurred is False and first is not None and first.kind == "unconfirmed"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the JSON contract)."""
        data = asdict(self)
        ordered = {"schema": data.pop("schema"), "reproducible": data.pop("reproducible")}
        ordered["first_divergence"] = data.pop("first_divergence")
        ordered["sources"] = data.pop("sources")
        ordered["runs"] = data.pop("runs")
        ordered.update(data)
        return ordered

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a Report from ``to_dict`` output (unknown keys are ignored)."""
        source_keys = set(Source.__dataclass_fields__)
        run_keys = set(RunInfo.__dataclass_fields__)

        def source(d: dict[str, Any] | None) -> Source | None:
            return None if d is None else Source(**{k: v for k, v in d.items() if k in source_keys})

        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["first_divergence"] = source(data.get("first_divergence"))
        fields["sources"] = [source(s) for s in data.get("sources", [])]
        fields["dead"] = [source(s) for s in data.get("dead", [])]
        fields["runs"] = [
            RunInfo(**{k: v for k, v in r.items() if k in run_keys}) for r in data.get("runs", [])
        ]
        return cls(**fields)
