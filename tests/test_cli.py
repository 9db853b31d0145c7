"""The real CLI in subprocesses, on scripts with real (CPU) sources of nondeterminism."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SCRIPTS, bisector_command, source_line, subprocess_env

from bisector import digests
from bisector.trace import load


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*bisector_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=cwd,
    )


def find_json(
    tmp_path: Path, script: str, *extra: str, confirm: bool = False
) -> tuple[subprocess.CompletedProcess, dict]:
    """`bisector find` with a JSON report; without confirmation unless asked (it is slower)."""
    out = tmp_path / "report.json"
    flags = [] if confirm else ["--no-confirm"]
    result = run_cli(
        "find",
        str(SCRIPTS / script),
        "--workdir",
        str(tmp_path / "runs"),
        "--json",
        str(out),
        *flags,
        *extra,
    )
    assert result.returncode in (0, 1, 3), result.stderr  # (3: inconclusive)
    return result, json.loads(out.read_text())


def _location(script: str) -> str:
    return f"{SCRIPTS / script}:{source_line(SCRIPTS / script)}"


def _abs(location: str) -> str:
    path, _, line = location.rpartition(":")
    return f"{Path(path).resolve()}:{line}"


@pytest.mark.parametrize(
    "script, kind, op, module, phase",
    [
        ("forward_atomic.py", "kernel", "aten.index_put_.default", "pool", "forward"),
        ("backward_atomic.py", "kernel", "aten.index_put_.default", "embed", "backward"),
        ("optimizer_scalar.py", "argument", "aten.add_.Tensor", "fc1", "optimizer"),
        ("input_data.py", "input", "leaf.tensor", "", "other"),
        ("random_op.py", "rng", "aten.bernoulli_.float", "drop", "forward"),
    ],
)
def test_planted_source_is_found(tmp_path, script, kind, op, module, phase):
    result, report = find_json(tmp_path, script)
    assert result.returncode == 1
    assert report["schema"] == 1 and report["reproducible"] is False
    first = report["first_divergence"]
    assert (first["kind"], first["op"], first["module"], first["phase"], first["step"]) == (
        kind,
        op,
        module,
        phase,
        0,
    )
    assert first["rank"] == 0
    assert _abs(first["location"]) == _location(script)
    assert first["max_abs_diff"] is None or first["max_abs_diff"] >= 0
    assert first == report["sources"][0]
    assert len(report["runs"]) == 2 and all(Path(r["trace"]).exists() for r in report["runs"])
    assert "First divergence" in result.stdout and op in result.stdout


def test_deterministic_script_is_reproducible_over_repeated_runs(tmp_path):
    for attempt in range(2):
        result, report = find_json(tmp_path / str(attempt), "deterministic.py", "--steps", "3")
        assert result.returncode == 0, result.stdout
        assert report["reproducible"] is True
        assert report["first_divergence"] is None and report["sources"] == []
        assert report["compared_events"] > 200
        assert "Reproducible" in result.stdout


def test_script_without_optimizer_stops_after_forward_calls(tmp_path):
    result, report = find_json(tmp_path, "inference.py", "--steps", "2")
    assert result.returncode == 0
    log = Path(report["runs"][0]["log"]).read_text()
    assert len(log.split()) == 2, "the script printed once per forward call; it must stop after 2"


def test_stop_cannot_be_swallowed_by_except_exception(tmp_path):
    result, report = find_json(tmp_path, "swallows.py", "--steps", "2")
    assert result.returncode == 0
    log = Path(report["runs"][0]["log"]).read_text()
    assert "reached the end" not in log and "ignored" not in log
    assert report["runs"][0]["steps"] == 2


def test_recording_does_not_change_the_final_weights(tmp_path):
    plain, recorded = tmp_path / "plain.pt", tmp_path / "recorded.pt"
    env = subprocess_env()
    subprocess.run(
        [sys.executable, str(SCRIPTS / "deterministic.py"), "4", str(plain)],
        check=True,
        env=env,
        timeout=120,
    )
    result = run_cli(
        "record",
        str(SCRIPTS / "deterministic.py"),
        "--all",
        "-o",
        str(tmp_path / "t.trace"),
        "--",
        "4",
        str(recorded),
    )
    assert result.returncode == 0, result.stderr
    a = torch.load(plain, weights_only=True)
    b = torch.load(recorded, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load(tmp_path / "t.trace").footer["status"] == "complete"


def test_record_then_diff_gives_the_same_report(tmp_path):
    for name in ("a", "b"):
        result = run_cli(
            "record", str(SCRIPTS / "forward_atomic.py"), "-o", str(tmp_path / f"{name}.trace")
        )
        assert result.returncode == 0, result.stderr
        assert "Recorded" in result.stdout
    result = run_cli(
        "diff",
        str(tmp_path / "a.trace"),
        str(tmp_path / "b.trace"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert result.returncode == 1
    first = json.loads((tmp_path / "r.json").read_text())["first_divergence"]
    assert (first["op"], first["module"]) == ("aten.index_put_.default", "pool")


def test_python_dash_m_and_console_script_agree(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bisector", "--version"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 0 and result.stdout.startswith("bisector ")


def test_script_arguments_after_double_dash(tmp_path):
    weights = tmp_path / "w.pt"
    result, report = find_json(
        tmp_path, "deterministic.py", "--steps", "5", "--", "1", str(weights)
    )
    assert result.returncode == 0
    assert report["runs"][0]["steps"] == 1, "the script's own argv asked for one step"
    assert weights.exists()


# ----- bad input: one clear line, exit 2, no traceback of ours ---------------------------------


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("bisector: error")]
    assert len(errors) == 1, result.stderr
    assert "bisector/" not in result.stderr.replace(str(SCRIPTS), ""), "our own frames leaked"
    return errors[0]


def test_missing_script(tmp_path):
    line = _one_error_line(run_cli("find", str(tmp_path / "nope.py")))
    assert "script not found" in line


def test_syntax_error(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import torch\ndef f(:\n    pass\n")
    line = _one_error_line(run_cli("find", str(script)))
    assert "syntax error at line 2" in line


def test_script_that_raises_shows_its_own_traceback(tmp_path):
    result = run_cli("find", str(SCRIPTS / "raises.py"), "--workdir", str(tmp_path))
    line = _one_error_line(result)
    assert "raised an exception in run A" in line
    assert "ValueError: loss exploded at step 1" in result.stderr
    assert f'File "{SCRIPTS / "raises.py"}", line' in result.stderr
    assert "runpy" not in result.stderr and "_child" not in result.stderr
    trace = load(tmp_path / "a.trace")  # what was recorded is kept
    assert trace.footer["status"] == "failed" and len(trace) > 0


def test_script_exit_status_is_reported(tmp_path):
    line = _one_error_line(
        run_cli("find", str(SCRIPTS / "exit_code.py"), "--workdir", str(tmp_path))
    )
    assert "exited with status 3" in line


def test_script_without_torch(tmp_path):
    line = _one_error_line(
        run_cli("find", str(SCRIPTS / "no_torch.py"), "--workdir", str(tmp_path))
    )
    assert "without calling any torch operator" in line


def test_bad_options():
    line = _one_error_line(run_cli("find", str(SCRIPTS / "deterministic.py"), "--steps", "zero"))
    assert "--steps" in line
    line = _one_error_line(run_cli("find", str(SCRIPTS / "deterministic.py"), "--steps", "0"))
    assert "--steps" in line
    line = _one_error_line(run_cli("frobnicate"))
    assert "No such command" in line


def test_corrupt_and_foreign_trace_files(tmp_path):
    text = tmp_path / "a.trace"
    text.write_text("not a trace")
    assert "not a bisector trace" in _one_error_line(run_cli("diff", str(text), str(text)))
    assert "not found" in _one_error_line(run_cli("diff", str(tmp_path / "x"), str(text)))
    good = tmp_path / "good.trace"
    assert run_cli("record", str(SCRIPTS / "deterministic.py"), "-o", str(good)).returncode == 0
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad = tmp_path / "bad.trace"
    bad.write_bytes(bytes(data))
    assert "corrupt" in _one_error_line(run_cli("diff", str(good), str(bad)))


@pytest.mark.parametrize("level", ["--no-ladder", "--ladder"])
def test_ctrl_c_keeps_the_trace(tmp_path, level):
    process = subprocess.Popen(
        [
            *bisector_command(),
            "find",
            str(SCRIPTS / "endless.py"),
            "--steps",
            "100000",
            level,
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        # as from a terminal: a test run in a background job would pass SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = tmp_path / "a.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "training" in log.read_text()):
        time.sleep(0.2)
    assert "training" in log.read_text()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    line = _one_error_line(result)
    if level == "--no-ladder":
        assert "interrupted" in line and "a.trace" in line
        trace = load(tmp_path / "a.trace")
        assert trace.footer["status"] == "interrupted" and len(trace) > 0
    else:  # the first level of the ladder: step digests
        assert "interrupted" in line and "a.digests" in line
        kept = digests.load(tmp_path / "a.digests")
        assert kept.footer["status"] == "interrupted" and kept.complete


def test_structure_divergence_is_found_at_the_branch(tmp_path):
    result, report = find_json(
        tmp_path, "structure.py", "--steps", "3", "--", str(tmp_path / "counter")
    )
    assert result.returncode == 1
    first = report["first_divergence"]
    assert first["kind"] == "structure" and first["step"] == 1
    assert first["args"] == ["aten.sub.Tensor", "aten.tanh.default"]
    assert report["structure"]["event"] == first["event"]
    # run B's extra tanh (and its backward) have no partner; the streams pair again after them
    assert report["structure"]["resumed_at"] == first["event"]
    assert report["structure"]["resumed_at_b"] > first["event"]
    assert report["compared_events"] == report["runs"][0]["events"]
    assert {s["kind"] for s in report["sources"]} == {"structure"}, "the breaks explain the rest"
    assert first["spread"] > 0
    assert any("stop matching" in note and "misaligned" in note for note in report["notes"])


def test_dataloader_workers_do_not_disturb_recording(tmp_path):
    result, report = find_json(tmp_path, "dataloader_workers.py", "--steps", "3")
    assert result.returncode == 0, result.stdout
    assert report["reproducible"] and report["runs"][0]["steps"] == 3


def test_console_script(tmp_path):
    import shutil

    exe = shutil.which("bisector")
    if exe is None:
        pytest.skip("the bisector console script is not installed on PATH")
    result = subprocess.run(
        [
            exe,
            "find",
            str(SCRIPTS / "forward_atomic.py"),
            "--workdir",
            str(tmp_path),
            "--no-confirm",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 1
    assert "aten.index_put_.default" in result.stdout


def test_doctor_shows_the_environment_and_the_known_ops_of_a_script(tmp_path):
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "Environment" in result.stdout and "deterministic_algorithms" in result.stdout

    out = tmp_path / "doctor.json"
    result = run_cli("doctor", str(SCRIPTS / "forward_atomic.py"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    found = json.loads(out.read_text())
    assert found["survey_steps"] == 1 and found["settings"]["num_threads"] >= 1
    known = [h for h in found["known_ops"] if not h["random"]]
    assert [(h["op"], h["device"]) for h in known] == [("aten.index_put_.default", "cpu")]
    line = source_line(SCRIPTS / "forward_atomic.py")
    assert known[0]["location"].endswith(f"forward_atomic.py:{line}")
    assert "Known nondeterministic ops this script runs" in result.stdout


def test_check_observer_finds_no_effect_of_recording(tmp_path):
    result, report = find_json(tmp_path, "deterministic.py", "--check-observer")
    assert result.returncode == 0
    observer = report["observer"]
    assert observer["checked"] and observer["equal"] and observer["steps"] == 2
    assert observer["tensors"] > 10 and "recording changed nothing" in result.stdout


def test_snapshots_compared_in_order_see_one_changed_bit(tmp_path):
    """Snapshots are read back without torch: the raw bytes in the order they were taken."""
    from bisector.capture import snapshots

    state = {
        "param/w": torch.randn(4, 4),
        "param/b": torch.randn(3).to(torch.bfloat16),
        "grad/w": torch.randn(4, 4),
        "state/w/exp_avg": torch.randn(5, dtype=torch.float64),
    }
    assert snapshots.save(tmp_path / "a.safetensors", state)
    changed = {k: v.clone() for k, v in state.items()}
    changed["grad/w"].view(-1).view(torch.int32)[5] ^= 1
    changed["param/b"][1] += 0.5
    # names differ (a plain run does not know module names): values compare in order
    renamed = dict(zip("zyxw", changed.values(), strict=True))
    assert snapshots.save(tmp_path / "b.safetensors", renamed)
    same = snapshots.compare_in_order(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    assert same["equal"] and same["tensors"] == 4
    other = snapshots.compare_in_order(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    expected = (changed["param/b"].double() - state["param/b"].double()).abs().max().item()
    assert not other["equal"] and other["differing"] == 2
    assert other["max_abs_diff"] == expected  # the bf16 change, widened exactly
    assert snapshots.save(tmp_path / "c.safetensors", changed)
    largest = snapshots.max_differences(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    grad = (changed["grad/w"] - state["grad/w"]).abs().max().item()
    assert largest == {"param": expected, "grad": grad, "state": 0.0}
    # what torch.save took as it was: a sparse gradient, complex and 16-bit unsigned state
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    odd = {"grad/e": embedding.weight.grad, "state/c": torch.ones(2, dtype=torch.complex128)}
    odd["state/u"] = torch.tensor([0, 1, 2]).to(torch.uint16)
    assert snapshots.save(tmp_path / "odd.safetensors", odd)
    more = {**odd, "state/u": torch.tensor([1, 2, 3]).to(torch.uint16)}
    assert snapshots.save(tmp_path / "more.safetensors", more)
    odd_change = snapshots.compare_in_order(
        tmp_path / "odd.safetensors", tmp_path / "more.safetensors"
    )
    assert (odd_change["tensors"], odd_change["differing"]) == (3, 1)


def test_compiled_code_is_recorded_at_its_boundary_and_changes_nothing(tmp_path):
    """A deterministic compiled model: reproducible, its calls recorded as compiled.* events,
    and a plain (compiled) run ends bitwise where the recorded run ends."""
    result, report = find_json(tmp_path, "compiled.py", "--steps", "2", "--check-observer")
    assert result.returncode == 0, result.stdout
    assert report["reproducible"]
    assert any("recorded at its boundary" in note for note in report["notes"]), report["notes"]
    assert report["observer"]["equal"], report["observer"]


def test_a_source_inside_compiled_code_is_named_at_its_boundary(tmp_path):
    """The racy index_put of an embedding's backward runs inside compiled code: the source is
    the compiled backward; rerunning without compiling shows the op inside."""
    result, report = find_json(
        tmp_path,
        "compiled_atomic.py",
        "--steps",
        "1",
        "--try",
        "no-compile",
        "--only-tries",
        "--replays",
        "2",
        confirm=True,
    )
    assert result.returncode == 1, result.stdout
    first = report["first_divergence"]
    assert (first["kind"], first["op"], first["module"], first["phase"]) == (
        "kernel",
        "compiled.Net.backward",
        "Net",
        "backward",
    )
    assert first["location"].endswith("compiled_atomic.py:35")
    assert "no-compile" in first["detail"]
    assert report["replay"] == [], "a compiled region is not one op to replay"
    (pair,) = report["confirmations"]
    assert pair["intervention"] == "no-compile" and not pair["reproducible"]
    assert "aten.index_put" in pair["first_divergence"]


def test_the_parent_of_find_never_imports_torch(tmp_path):
    """Each run imports torch; the process that runs them, reads their traces, compares them
    and replays the source (in a process of its own) does not: on a busy machine its 1.5 s of
    importing would compete with the runs for the cores. Nor does reading their snapshots (the
    growth), ``diff`` of two traces, nor its console and HTML pages."""
    code = (
        "import sys\n"
        "from bisector.api import ConfirmOptions, FindOptions, diff, find\n"
        "tries = ConfirmOptions(forced=('deterministic',), only_forced=True)\n"
        "report = find(sys.argv[1], options=FindOptions(workdir=sys.argv[2], confirm=tries))\n"
        "again = diff(f'{sys.argv[2]}/a.trace', f'{sys.argv[2]}/b.trace')\n"
        "from rich.console import Console\n"
        "from bisector.render import to_console, to_file\n"
        "to_console(again, Console(file=open(sys.argv[2] + '/report.txt', 'w')))\n"
        "to_file(again, 'html')\n"
        "exact = bool(report.growth) and all(row['exact'] for row in report.growth)\n"
        "print(report.verdict, report.sources[0].checked['result'], exact, again.verdict,\n"
        "      'torch' in sys.modules)\n"
    )
    script = SCRIPTS / "forward_atomic.py"
    done = subprocess.run(
        [sys.executable, "-c", code, str(script), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # (exact: the growth compared the runs' snapshots, read without torch)
    assert done.stdout.split() == ["diverged", "confirmed", "True", "diverged", "False"]
