"""Confirmation: replays of the source op, intervention pairs, verdict (CPU, real sources)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPTS, bisector_command, source_line, subprocess_env
from test_cli import _abs, _location, _one_error_line, find_json, run_cli

from bisector.confirm.replay import MORE_RUNS


def _by_name(report: dict) -> dict[str, dict]:
    return {c["intervention"]: c for c in report["confirmations"]}


def test_atomic_index_put_is_confirmed_replayed_and_fixed(tmp_path):
    # --jobs 2: the pairs run two at a time, the second plain pair beside them
    args = ("--replays", "8", "--jobs", "2")
    result, report = find_json(tmp_path, "forward_atomic.py", *args, confirm=True)
    assert result.returncode == 1
    outcomes = _by_name(report)
    assert outcomes["single-thread"]["outcome"] == "fixes"
    assert outcomes["deterministic"]["outcome"] == "fixes"
    assert outcomes["adam-to-sgd"]["outcome"] == "amplifier", "Adam only amplifies"
    assert outcomes["adam-to-sgd"]["reproducible"] is False
    assert "index_put_" in report["cause"] and "pool" in report["cause"]
    assert report["fix"] and "forward_atomic.py:" in report["fix"]
    # a process-wide switch, placed before the script's first statement, with no CUDA advice
    # on a run that never used CUDA
    assert "at the start of the script, before" in report["fix"], report["fix"]
    assert "CUBLAS" not in report["fix"]
    # Adam -> SGD: measured against two plain pairs, and explained
    assert report["growth_again"], "a second plain pair measures the baseline's spread"
    effect = outcomes["adam-to-sgd"]["effect"]
    assert len(effect["baseline"]) == 2 and len(effect["curve"]["steps"]) >= 2, effect
    level, rate = abs(effect["level"]), abs(effect["rate_change"] or 0)
    assert level > effect["level_threshold"] or rate > effect["rate_threshold"], effect
    adam = outcomes["adam-to-sgd"]
    assert adam["explanation"].startswith("with SGD the pair still first differs at")
    (replayed,) = report["replay"]
    assert replayed["op"] == "aten.index_put_.default" and replayed["runs"] == 8
    assert replayed["distinct_results"] > 1
    assert report["growth"] and report["growth"][0]["step"] == 0
    assert "Verdict" in result.stdout and "Evidence" in result.stdout

    # the repro is standalone: it runs without bisector on the path and shows the same
    repro = Path(replayed["repro"])
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(repro), "--runs", "6"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "distinct result" in done.stdout
    assert "bisector" not in repro.read_text().split('"""', 2)[2]  # no import of ours


def test_unseeded_numpy_data_is_fixed_by_seeding(tmp_path):
    result, report = find_json(
        tmp_path,
        "input_data.py",
        "--only-tries",
        "--try",
        "seed-everything",
        "--try",
        "single-thread",
        confirm=True,
    )
    assert result.returncode == 1
    outcomes = _by_name(report)
    assert outcomes["seed-everything"]["outcome"] == "fixes"
    assert outcomes["single-thread"]["reproducible"] is False
    assert outcomes["single-thread"]["outcome"] != "fixes"
    assert report["replay"] == [], "an input source has no op to replay"
    assert "seed" in report["fix"]


def test_reproducible_script_gets_no_confirmation_runs(tmp_path):
    result, report = find_json(tmp_path, "deterministic.py", confirm=True)
    assert result.returncode == 0
    assert report["confirmations"] == [] and report["replay"] == [] and report["fix"] is None


def test_interventions_are_listed():
    result = run_cli("interventions")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    for name in (
        "sdpa-math",
        "eager-attention",
        "deterministic",
        "cudnn",
        "no-tf32",
        "single-thread",
        "adam-to-sgd",
        "no-compile",
        "seed-everything",
        "serial-dataloader",
    ):
        assert name in names


def test_unknown_intervention_is_a_clear_error():
    line = _one_error_line(run_cli("find", str(SCRIPTS / "deterministic.py"), "--try", "magic"))
    assert "unknown intervention 'magic'" in line


def test_an_intervention_the_script_refuses_is_reported_as_failing(tmp_path):
    result, report = find_json(
        tmp_path,
        "refuses_deterministic.py",
        "--only-tries",
        "--try",
        "deterministic",
        "--try",
        "single-thread",
        confirm=True,
    )
    assert result.returncode == 1
    outcomes = _by_name(report)
    assert outcomes["deterministic"]["outcome"] == "fails"
    assert "does not have a deterministic implementation" in outcomes["deterministic"]["error"]
    assert outcomes["single-thread"]["outcome"] == "fixes"
    assert "set_num_threads(1)" in report["fix"]


def test_growth_is_exact_from_snapshots(tmp_path):
    result, report = find_json(
        tmp_path,
        "forward_atomic.py",
        "--only-tries",
        "--try",
        "single-thread",
        "--replays",
        "2",
        confirm=True,
    )
    first = report["growth"][0]
    assert first["exact"] is True and first["step"] == 0
    assert first["max_grad_diff"] > 0 and first["max_param_diff"] > 0
    assert first["max_state_diff"] > 0  # Adam's moments differ too


def test_random_op_replays_identically_with_the_same_seed(tmp_path):
    """A dropout whose seed came from the clock: deterministic given its generator state, and
    seeding at the start cannot fix a script that reseeds itself later."""
    result, report = find_json(
        tmp_path,
        "random_op.py",
        "--only-tries",
        "--try",
        "seed-everything",
        "--replays",
        "4",
        confirm=True,
    )
    (replayed,) = report["replay"]
    assert replayed["op"] == "aten.bernoulli_.float"
    assert replayed["seed"] == 0 and replayed["distinct_results"] == 1
    # one result in 4 runs: the replay went on (a rare race shows in more runs), within bounds
    assert 4 < replayed["runs"] <= MORE_RUNS, replayed
    assert _by_name(report)["seed-everything"]["outcome"] == "no-effect"
    assert "that state differed" in result.stdout


def test_eager_attention_intervention_on_transformers_models(tmp_path):
    """Models loaded directly, through the Auto classes, or from a config get eager attention;
    undoing restores the class as it was."""
    transformers = __import__("pytest").importorskip("transformers")
    from bisector.confirm.interventions import get

    config = transformers.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    before = dict(vars(transformers.PreTrainedModel))
    undo = get("eager-attention").apply()
    try:
        loaded = [
            transformers.Qwen2ForCausalLM.from_pretrained(tmp_path),
            transformers.AutoModelForCausalLM.from_pretrained(tmp_path),
            transformers.AutoModelForCausalLM.from_config(config),
        ]
    finally:
        undo()
    for model in loaded:
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert model.config._attn_implementation == "eager"
    assert dict(vars(transformers.PreTrainedModel)) == before  # whatever it patched is back


def _effect(changed: list[float], *plain: list[float], start: int = 0):
    """The effect measured from curves of the largest parameter difference per step."""
    from bisector.confirm.effects import measure

    def rows(values):
        return [{"step": start + i, "max_param_diff": v} for i, v in enumerate(values)]

    return measure(rows(changed), [rows(p) for p in plain], start)


def test_an_effect_is_measured_against_the_spread_of_two_plain_pairs():
    # SGD leaves the weights bitwise equal while Adam's differ: the level moved
    sgd = _effect([0.0, 0.0, 0.0], [3.7e-9, 4e-9, 5e-9], [5.1e-9, 5e-9, 6e-9])
    assert (sgd.outcome, sgd.decided_by) == ("amplifier", "level"), sgd
    assert sgd.level is not None and sgd.level < -30 and sgd.rate is None
    from bisector.confirm.effects import adam_explanation
    from bisector.render.wording import effect_numbers

    assert "the parameters stay bitwise equal at every step" in effect_numbers(
        {"effect": vars(sgd)}
    )
    assert "with SGD the parameters stay bitwise equal over steps 0-2" in adam_explanation(
        sgd, None
    )
    steady = _effect([3e-6, 4e-6, 5e-6], [1e-6, 2e-6, 3e-6], [2e-6, 3e-6, 4e-6])
    assert steady.outcome == "no-effect" and steady.level_spread == 0.18, steady
    # A racy kernel's difference varies by 4 decades from pair to pair: 3 decades of change
    # are within that spread, no clear effect (the H200's cudnn "amplifier" of SDPA)
    noisy = _effect([5.8e-4, 6e-4], [6.05e-8, 7e-8], [4.1e-4, 5e-4], start=3)
    assert noisy.outcome == "no-effect" and noisy.level_spread > 3, noisy
    assert noisy.curve["steps"] == [3, 4]
    # Same start, but two decades a step faster than either plain pair: the rate moved
    faster = _effect([1e-8, 1e-6, 1e-4, 1e-2], [1e-8, 2e-8, 3e-8, 4e-8], [2e-8, 2e-8, 4e-8, 5e-8])
    assert faster.decided_by == "level and rate" and faster.rate == 2.0, faster
    crossing = _effect([1e-8, 1e-6, 1e-4], [1e-6, 1e-6, 1.1e-6], [1e-6, 1.2e-6, 1e-6])
    assert crossing.decided_by == "rate" and abs(crossing.level) < 1, crossing
    assert _effect([0.0, 0.0], [0.0, 0.0], [0.0, 0.0]).outcome == "no-effect"
    # Without a second plain pair the floors double: 1.5 decades is not enough
    alone = _effect([3e-5, 3e-5], [1e-6, 1e-6])
    assert alone.outcome == "no-effect" and alone.level_threshold == 2.0, alone
    assert _effect([1e-3, 1e-3], [1e-6, 1e-6]).outcome == "amplifier"


def test_advice_is_placed_and_device_aware(tmp_path):
    from bisector.confirm import script_start
    from bisector.confirm.interventions import Place, get

    script = tmp_path / "train.py"
    script.write_text(
        '"""A script."""\n\nimport torch\nfrom torch import nn\n\n'
        "@torch.no_grad()\ndef init(m):\n    pass\n\nmodel = nn.Linear(2, 2)\n"
    )
    start, text = script_start(script)
    assert start == f"{script}:6" and text == "@torch.no_grad()"
    cpu = Place(start=start, start_text=text, source=f"{script}:10", source_kind="kernel")
    advice = get("deterministic").advice(cpu)
    assert "use_deterministic_algorithms(True)" in advice and f"before {script}:6" in advice
    assert "CUBLAS" not in advice  # no CUDA setting for a run that never used CUDA
    gpu = Place(start=start, start_text=text, source=f"{script}:10", cuda=True)
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in get("deterministic").advice(gpu)
    assert f"at {script}:10" in get("sdpa-math").advice(gpu)  # where attention is called
    assert f"before {script}:6" in get("single-thread").advice(cpu)  # a global switch
    rng = Place(start=start, source=f"{script}:10", source_kind="rng")
    assert f"the draw at {script}:10" in get("seed-everything").advice(rng)


def test_pairs_run_side_by_side_one_per_gpu_or_per_cores(monkeypatch):
    from bisector.confirm import ConfirmOptions, _slots
    from bisector.confirm.interventions import Place
    from bisector.runner import Launch, RunOptions

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert _slots(ConfirmOptions(), Place(), 6) == [()] * 4  # one per 4 cores
    assert _slots(ConfirmOptions(jobs=2), Place(), 6) == [()] * 2
    assert _slots(ConfirmOptions(), Place(), 1) == [()]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpus = _slots(ConfirmOptions(), Place(cuda=True), 6)
    assert gpus == [(("CUDA_VISIBLE_DEVICES", "2"),), (("CUDA_VISIBLE_DEVICES", "5"),)]
    # two pairs per GPU where memory allows: spread over the GPUs first
    shared = _slots(ConfirmOptions(), Place(cuda=True), 3, per_gpu=2)
    assert [dict(s)["CUDA_VISIBLE_DEVICES"] for s in shared] == ["2", "5", "2"]
    job = ConfirmOptions(run=RunOptions(launch=Launch(2)))
    assert _slots(job, Place(cuda=True), 6) == [()]  # a torchrun job takes every GPU


def test_pairs_share_a_gpu_as_its_memory_and_the_cores_allow(monkeypatch):
    from types import SimpleNamespace

    import bisector.confirm as confirm

    def pair(peak: int, total: int = 140 << 30):
        trace = SimpleNamespace(footer={"cuda_memory": {"peak_reserved": peak, "total": total}})
        return SimpleNamespace(ranks=[(0, trace, trace)])

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(confirm, "_gpus", lambda: 2)
    assert confirm._pairs_per_gpu(pair(2 << 30)) == 4  # small: as many as allowed
    assert confirm._pairs_per_gpu(pair(40 << 30)) == 2  # 2 x 40 GiB x 1.25 fit in 80%
    assert confirm._pairs_per_gpu(pair(100 << 30)) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert confirm._pairs_per_gpu(pair(2 << 30)) == 1  # two cores a pair
    cpu_only = SimpleNamespace(footer={"cuda_memory": None})
    assert confirm._pairs_per_gpu(SimpleNamespace(ranks=[(0, cpu_only, cpu_only)])) == 1


def test_set_order_structure_is_fixed_by_seeding_the_hash(tmp_path):
    """A structure source from set iteration order: seed-everything (PYTHONHASHSEED) fixes it."""
    env_seed = os.environ.pop("PYTHONHASHSEED", None)
    try:
        for attempt in range(4):  # two processes can draw hash seeds with the same set order
            result, report = find_json(
                tmp_path / str(attempt),
                "set_order.py",
                "--only-tries",
                "--try",
                "seed-everything",
                confirm=True,
            )
            if result.returncode == 1:
                break
    finally:
        if env_seed is not None:
            os.environ["PYTHONHASHSEED"] = env_seed
    assert result.returncode == 1, "set order never differed in 4 pairs"
    assert report["first_divergence"]["kind"] == "structure"
    assert _by_name(report)["seed-everything"]["outcome"] == "fixes"


def test_a_replay_that_cannot_run_says_why(tmp_path):
    """Inputs that could not be saved, and a capture run that failed before the op: each is a
    replay entry with the reason, never a silent gap."""
    from bisector.confirm import ConfirmOptions, _replays
    from bisector.confirm.replay import replay
    from bisector.report import Source
    from bisector.runner import RunOptions

    unsaved = tmp_path / "event-7.pt"
    unsaved.with_suffix(".error").write_text("TypeError: cannot save an argument of type Foo")
    result = replay(unsaved, 7)
    assert result.distinct_results is None
    assert result.error == (
        "its inputs could not be saved (TypeError: cannot save an argument of type Foo)"
    )

    late = Source("kernel", "aten.addmm.default", "fc1", "forward", 0, 0, "raises.py:18", None)
    late.event = 10_000  # never reached: the script raises in its second step
    options = ConfirmOptions(run=RunOptions(steps=None))
    (result,) = _replays(SCRIPTS / "raises.py", (), [late], ("kernel",), tmp_path, 2, options)
    assert result.op == "aten.addmm.default" and result.distinct_results is None
    assert result.error.startswith("its inputs were not captured: the capture run failed: ")
    assert "loss exploded at step 1" in result.error


def test_fix_is_written_as_a_patch_and_proven_by_a_rerun(tmp_path):
    script = SCRIPTS / "forward_atomic.py"
    before = script.read_bytes()
    args = ("--try", "deterministic", "--only-tries", "--fix")
    result, report = find_json(tmp_path, "forward_atomic.py", *args, confirm=True)
    assert result.returncode == 1, result.stdout
    check = report["fix_check"]
    assert check["made"] and check["intervention"] == "deterministic", check
    assert check["reproducible"] is True and check["steps"] == 2, check
    patch = Path(check["patch"]).read_text()
    assert "+torch.use_deterministic_algorithms(True)" in patch and "CUBLAS" not in patch
    assert "\n torch.manual_seed(0)" in patch  # placed before the script's first statement
    assert script.read_bytes() == before, "the script itself is never changed"
    assert check["cost"] > 0 and check["step_seconds"]["before"] > 0
    assert "Proven" in result.stdout and "patch" in result.stdout


def test_a_fix_the_script_undoes_later_is_not_called_proven(tmp_path):
    """The intervention holds against the script's own later use_deterministic_algorithms(False)
    and fixes the pair; the patch at the start does not hold: its rerun still differs, and the
    report names the line that undoes it."""
    args = ("--try", "deterministic", "--only-tries", "--fix")
    result, report = find_json(tmp_path, "undoes_deterministic.py", *args, confirm=True)
    assert result.returncode == 1, result.stdout
    (pair,) = report["confirmations"]
    assert pair["outcome"] == "fixes" and pair["overrides"], pair
    check = report["fix_check"]
    assert check["made"] and check["reproducible"] is False, check
    line = source_line(SCRIPTS / "undoes_deterministic.py", "use_deterministic_algorithms(det")
    assert any(f"undoes_deterministic.py:{line}" in note for note in check["notes"]), check
    assert "still differ" in result.stdout


def test_twin_of_the_undone_fix_is_reproducible(tmp_path):
    result, report = find_json(tmp_path, "undoes_deterministic.py", "--", "--twin")
    assert result.returncode == 0 and report["reproducible"], result.stdout


def test_an_unseeded_python_draw_is_named_with_the_module_as_written(tmp_path):
    """A dropout rate drawn from Python's unseeded `random`: the op sees 1 - p; the report shows
    the module as the script built it (p, and the line), names the draw, seeds only Python's
    generator, and proves the patch."""
    script = SCRIPTS / "droprate_sweep.py"
    args = ("--try", "seed-everything", "--only-tries", "--fix")
    result, report = find_json(tmp_path, "droprate_sweep.py", *args, confirm=True)
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert first["kind"] == "argument" and first["module"] == "body.2", first
    assert first["op"].startswith("aten.bernoulli_") or first["op"].startswith("aten.native_drop")
    rates = [float(text.split("p=")[1].split(",")[0]) for text in first["written"]]
    assert all(text.startswith("Dropout(p=") for text in first["written"]), first["written"]
    assert rates[0] != rates[1]
    if first["op"].startswith("aten.bernoulli_"):  # the op draws with 1 - p
        seen = [float(args.rsplit(", ", 1)[1]) for args in first["args"]]
        assert [round(1 - r, 3) for r in rates] == [round(s, 3) for s in seen], first
    assert first["built"].endswith(f"droprate_sweep.py:{source_line(script, '# BUILT')}")
    draw = f"droprate_sweep.py:{source_line(script, '# DRAW')}"
    assert any(draw in note and "never seeded" in note for note in report["notes"])
    assert "seed Python's random: `random.seed(0)`" in report["fix"], report["fix"]
    assert f"drawn from unseeded at {draw}" in report["fix"] or draw in report["fix"]
    assert "numpy" not in report["fix"] and "manual_seed" not in report["fix"]
    check = report["fix_check"]
    assert check["reproducible"] is True, check
    patch = Path(check["patch"]).read_text()
    assert "+random.seed(0)" in patch and "numpy" not in patch and "manual_seed" not in patch
    assert "module A" in result.stdout and "built at" in result.stdout


def test_twin_of_the_seeded_draw_is_reproducible(tmp_path):
    result, report = find_json(tmp_path, "droprate_sweep.py", "--", "--seed-python")
    assert result.returncode == 0 and report["reproducible"], result.stdout


def test_an_argument_from_the_clock_points_at_the_module_built_with_it(tmp_path):
    """No seed fixes a rate read from the clock: the fix points where the module is built."""
    script = SCRIPTS / "droprate_sweep.py"
    args = ("--try", "seed-everything", "--only-tries", "--", "--rate-from", "clock")
    result, report = find_json(tmp_path, "droprate_sweep.py", *args, confirm=True)
    assert result.returncode == 1
    (entry,) = report["confirmations"]
    assert entry["outcome"] != "fixes"
    built = f"droprate_sweep.py:{source_line(script, '# BUILT')}"
    assert report["fix"].startswith("no tried change made the runs identical"), report["fix"]
    assert built in report["fix"] and "nn.Dropout(dropout)" in report["fix"]
    assert not any("PYTHONHASHSEED is not set" in note for note in report["notes"])


@pytest.mark.skipif(not os.environ.get("BISECTOR_SLOW"), reason="set BISECTOR_SLOW=1")
def test_the_same_confirmed_find_twice_gives_the_same_outcomes(tmp_path):
    """The CPU example: every intervention's outcome, the cause, the replay and the fix are
    the same in two confirmed finds. Slow (two confirmed finds, about 50 s): CI runs the same
    confirmed find once (the README's command); BISECTOR_SLOW=1 runs this one."""
    example = Path(__file__).resolve().parent.parent / "examples" / "gnn_scatter.py"
    outcomes = []
    finds = {  # both at once: independent processes, half the wall time
        attempt: subprocess.Popen(
            [*bisector_command(), "find", str(example), "--workdir", str(tmp_path / attempt)]
            + ["--json", str(tmp_path / f"{attempt}.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for attempt in ("first", "second")
    }
    for attempt, process in finds.items():
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 1, stderr
        report = json.loads((tmp_path / f"{attempt}.json").read_text())
        outcomes.append(
            {
                "cause": report["cause"],
                "fix": report["fix"],
                "replay": [(r["op"], r["distinct_results"] > 1) for r in report["replay"]],
                "outcomes": {c["intervention"]: c["outcome"] for c in report["confirmations"]},
            }
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["outcomes"]["deterministic"] == "fixes", outcomes[0]


def test_a_divergence_that_does_not_recur_credits_no_change(tmp_path):
    """first_run_cache.py: the run that fills the cache runs step 0 with oneDNN off, every
    later run with it on. The first pair differs at the first convolution (equal inputs; its
    replays give one result), every later pair is identical: a second plain pair shows it, so
    the changes whose pairs were identical are not called fixes (before, `deterministic` was
    the "fix")."""
    cache = tmp_path / "cache"
    result, report = find_json(
        tmp_path, "first_run_cache.py", "--steps", "2", "--", "--cache", str(cache), confirm=True
    )
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["op"], first["kind"], first["phase"], first["step"], first["module"]) == (
        "aten.convolution.default",
        "unconfirmed",
        "forward",
        0,
        "0",
    ), result.stdout
    assert _abs(first["location"]) == _abs(_location("first_run_cache.py"))
    assert report["recurred"] is False and report["fix"] is None
    outcomes = {c["outcome"] for c in report["confirmations"]}
    assert outcomes and "fixes" not in outcomes and "inconclusive" in outcomes, outcomes
    assert "first pair only" in report["cause"]
    assert "Runs diverged once" in result.stdout and "none credited" in result.stdout


def test_twin_of_the_first_run_cache_is_reproducible(tmp_path):
    result, report = find_json(tmp_path, "first_run_cache.py", "--steps", "2", "--", "--twin")
    assert result.returncode == 0 and report["reproducible"], result.stdout
