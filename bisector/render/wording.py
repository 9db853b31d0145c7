"""What the report says in words, shared by every renderer (console, HTML): the kinds of
source, the outcomes of the pairs, the measured effects, the replay's verdict, the proven fix.
Renderers lay these sentences out; none words them on its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bisector.report import Check, Report, Source
from bisector.words import counted

KIND_TEXT = {
    "kernel": "a nondeterministic kernel",
    "rng": "a random op with a different generator state",
    "input": "an input tensor that differs",
    "argument": "a non-tensor argument that differs",
    "structure": "the two runs stop running the same ops",
    "uninitialized": "uninitialised memory read as data",
    "unconfirmed": "an op whose outputs differ on equal inputs, for a reason not proven (see why)",
}


OUTCOMES = {
    "fixes": "both runs bitwise identical",
    "amplifier": "still differ, but the change moves the difference (its size or how fast it "
    "grows) beyond what the plain pairs vary: an amplifier, not the cause",
    "no-effect": "still differ, with no clear effect on the difference",
    "fails": "the script fails",
    "did-not-apply": "the change did not take effect, so the pair says nothing",
    "inconclusive": "both runs bitwise identical, but so was a second plain pair: says nothing",
}


def diverged_label(report: Report) -> str:
    """The headline's label for runs that differ."""
    return "Runs diverged once:" if report.diverged_once else "Runs diverge:"


def no_fix_text(report: Report) -> str:
    """The Fix line where no change is credited."""
    if report.diverged_once:
        return "none credited: the divergence did not recur in a second plain pair"
    return "no tried change made the runs identical"


def fix_check_text(check: Mapping[str, Any]) -> str:
    """What ``find --fix`` found, in one paragraph (shared with the HTML report)."""
    if not check.get("made"):
        return f"no patch: {check.get('why', '')}"
    patch = f"patch {check['patch']} (not applied to {check['file']})"
    if check.get("error"):
        return f"{patch}: the patched script failed: {check['error']}"
    steps = check.get("steps")
    over = (
        f"over {counted(steps, 'step')}"
        if steps
        else f"over {counted(check.get('events', 0), 'event')}"
    )
    if check.get("reproducible"):
        text = f"{patch}: the patched script's two runs are bitwise identical {over}"
    else:
        first = check.get("first_values") or [{}]
        what = f"{first[0].get('kind', '')} {first[0].get('name', '')}".strip()
        where = f" at step {check['first_step']}" if check.get("first_step") is not None else ""
        text = f"{patch}: the patched script's runs still differ{where} ({what})"
    times = check.get("step_seconds")
    if times and check.get("cost") is not None:
        text += (
            f"; a plain step takes {times['before']:.3g} s without it, {times['after']:.3g} s "
            f"with it ({check['cost']:.2f}x, median of a few steps)"
        )
    for note in check.get("notes") or []:
        text += f"; {note}"
    return text


def effect_numbers(c: Mapping[str, Any]) -> str:
    """What an effect was decided from: the largest parameter difference per step with the
    change and in the plain pairs, each curve's rate, and how far the change moves level and
    rate against how far the plain pairs lie apart (shared with the HTML report)."""
    e = c["effect"]
    steps = e["curve"]["steps"]
    span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    text = f"max parameter |A-B| after {span}: {_curve(e['curve'], e['rate'])} with it"
    plain = [_curve(b, r) for b, r in zip(e["baseline"], e["baseline_rates"], strict=True)]
    text += f"; {' and '.join(plain)} in {counted(len(plain), 'plain pair')}"
    parts = []
    equal = not any(e["curve"]["values"])
    if equal and any(v for b in e["baseline"] for v in b["values"]):
        parts.append(
            "with it the parameters stay bitwise equal at every step, where the plain pairs' differ"
        )
    elif e["level"] is not None:
        where = "above" if e["level"] > 0 else "below"
        parts.append(
            f"{abs(e['level']):.1f} decades {where} them"
            + _against(e["level_spread"], e["level_threshold"], "decades")
        )
    if e["rate_change"] is not None:
        parts.append(
            f"its rate {e['rate_change']:+.2f} decades/step from theirs"
            + _against(e["rate_spread"], e["rate_threshold"], "decades/step")
        )
    return text + (": " + "; ".join(parts) if parts else "")


def _curve(curve: dict, rate: float | None) -> str:
    values = ", ".join(f"{v:.2g}" for v in curve["values"]) or "none"
    return f"[{values}]" + ("" if rate is None else f" ({rate:+.2f} decades/step)")


def _against(spread: float | None, threshold: float, unit: str) -> str:
    if threshold == 1:
        unit = unit.replace("decades", "decade")
    beyond = f"counts beyond {threshold:g} {unit}"
    if spread is None:
        return f" (no second plain pair: {beyond})"
    return f" (the plain pairs {spread:g} apart: {beyond})"


def held_against(overrides: Sequence[Mapping[str, Any]]) -> str:
    """The script's own attempts to undo an intervention, which it held against."""
    shown = [f"{o['what']} at {o['line'] or '?'}" for o in overrides[:3]]
    more = f" and {len(overrides) - 3} more" if len(overrides) > 3 else ""
    return f"held against the script's own {', '.join(shown)}{more}"


def replay_verdict(replay: Mapping[str, Any]) -> str:
    """What a replay's count of distinct results says about the op (shared with the HTML)."""
    if replay["distinct_results"] > 1:
        return "nondeterministic by itself"
    if replay.get("seed") is not None:
        return "deterministic given its generator state: that state differed"
    return "deterministic by itself"


def describe_check(checked: Check) -> str:
    """How a kernel claim was checked, in words (shared with the HTML)."""
    if checked.get("result") == "not checked":
        return f"not checked: {checked.get('why')}"
    runs, distinct = checked.get("runs"), checked.get("distinct_results")
    meaning = {
        "confirmed": "the op is nondeterministic by itself",
        "contradicted": "stable: not a proven kernel source",
    }.get(str(checked.get("result")), "")
    return (
        f"replayed {runs} times on its captured inputs: "
        f"{counted(distinct or 0, 'distinct result')} ({meaning})"
    )


def describe_magnitude(source: Source) -> str:
    """'3.6e-07' or '>= 3.6e-07' depending on whether the figure is exact or a lower bound."""
    value = source.max_abs_diff
    if value is None:
        return "n/a"
    if source.max_abs_diff_bound == "lower" and value == 0:
        return (
            ">= 0 (lower bound: the bits differ, but the sum and largest value recorded of "
            "each output are equal, so no size can be told)"
        )
    if source.max_abs_diff_bound == "lower":
        return f">= {value:.3g} (lower bound)"
    return f"{value:.3g}"


def equal_runs_text(report: Report) -> tuple[str, str]:
    """(label, sentence) of a report without a live divergence: reproducible, with what was
    compared, or inconclusive, with why. Shared by the console and the HTML report."""
    if report.verdict == "inconclusive":
        reasons = report.evidence.get("reasons") or ["nothing that trains was compared"]
        return "Inconclusive:", (
            f"the recorded runs agree over {counted(report.compared_events, 'event')}, but that "
            f"does not show the training is reproducible: {'; '.join(reasons)}."
        )
    evidence = report.evidence
    compared = f"over {counted(report.compared_events, 'event')}"
    steps = evidence.get("optimizer_steps")
    if evidence.get("level") == "digests":
        compared = f"over {counted(steps or 0, 'step')} (parameters, gradients, optimizer state)"
    elif steps:
        compared += f" and {steps} optimizer {'step' if steps == 1 else 'steps'}"
    elif evidence.get("model_calls"):
        calls = evidence["model_calls"]
        compared += f" ({calls} {'call' if calls == 1 else 'calls'} of the model, no optimizer)"
    text = f"both runs are bitwise identical {compared}."
    if report.dead:
        text = (
            f"every value the runs used or kept is bitwise identical {compared}; "
            f"{len(report.dead)} unused scratch {'output' if len(report.dead) == 1 else 'outputs'}"
            " differ (see notes)."
        )
    return "Reproducible:", text
