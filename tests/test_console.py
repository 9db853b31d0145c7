"""What users read and type (issue 17): help without placeholders, a hint for script options
given before `--`, `--version` without torch, and a console report that reads at 80 columns and
when piped (no line over the width, no word split, no trailing space, one panel width, plurals).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from conftest import SCRIPTS, subprocess_env
from rich.console import Console
from test_cli import find_json, run_cli
from test_html import _diverging, _source

from bisector.render import console as console_render
from bisector.report import Report, RunInfo

WIDTH = 80


def _narrow_env() -> dict[str, str]:
    return {**subprocess_env(), "COLUMNS": str(WIDTH), "TERM": "dumb"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bisector", *args],
        capture_output=True,
        text=True,
        env=_narrow_env(),
        timeout=300,
    )


def _fits(text: str) -> None:
    """Every line fits, but one that holds a single word wider than the line (a long path),
    which overflows whole rather than split; no line ends in spaces."""
    for line in text.splitlines():
        if len(line) > WIDTH:
            assert len(line.split()) == 1, f"over {WIDTH} columns: {line!r}"
        assert line == line.rstrip(), f"trailing space: {line!r}"


def _rendered(report: Report, width: int = WIDTH) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False, soft_wrap=False)
    console_render.render(report, console)
    return out.getvalue()


@pytest.mark.parametrize("command", ["find", "record", "doctor", "diff"])
def test_help_shows_plain_placeholders_and_fits_80_columns(command):
    result = _cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text and "<int" not in text and "<path>" not in text, text
    assert "{" not in text.splitlines()[0], text  # usage: SCRIPT, not {SCRIPT}
    for line in text.splitlines():
        assert len(line) <= WIDTH, line
    if command == "find":
        assert "Usage: bisector find [OPTIONS] [SCRIPT] [ARGS]..." in text
        assert "-m, --module MODULE" in text
        assert "-n, --steps N" in text and "--json FILE" in text and "-q, --quiet  " in text


def test_version_and_help_do_not_import_torch():
    probe = (
        "import sys\n"
        "from bisector.cli import main\n"
        "for argv in (['--version'], ['--help'], ['find', '--help']):\n"
        "    main(argv)\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.stdout.strip().endswith("torch not imported"), done.stdout + done.stderr


def test_a_script_option_before_the_double_dash_gets_a_hint():
    result = _cli("find", "train.py", "--lr", "3e-4")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "No such option: --lr" in line
    assert "put the script's arguments after `--`: bisector find SCRIPT -- --lr" in line
    other = _cli("diff", "a.trace", "b.trace", "--lr")  # diff runs no script: no such hint
    assert "after `--`" not in other.stderr and "see `bisector diff --help`" in other.stderr


def test_report_reads_at_80_columns():
    report = _diverging()
    report.sources[1] = _source(
        kind="argument",
        op="aten._scaled_dot_product_efficient_attention_backward.default",
        module="model.transformer.h.11.attn",
        step=3,
        location="/home/someone/projects/a-long-project-name/training/train_language_model.py:231",
        max_abs_diff=0.0,
    )
    text = _rendered(report)
    _fits(text)
    lines = text.splitlines()
    # op names and paths are never split by the wrap
    assert any("aten._scaled_dot_product_efficient_attention_backward.default" in x for x in lines)
    long_path = "/home/someone/projects/a-long-project-name/training/train_language_model.py:231"
    assert any(x.strip().startswith(long_path) for x in lines)
    assert any(x.strip() == "/tmp/w/a.trace" for x in lines), "a run's file on its own line"
    # every panel of the report has one width
    tops = {len(x) for x in lines if x.startswith("╭")}
    assert len(tops) == 1, tops
    # a zero lower bound says why it is zero
    assert "the bits differ, but the sum and largest value" in " ".join(lines)


def test_counts_read_in_the_singular():
    report = Report(
        reproducible=False,
        first_divergence=_source(),
        sources=[_source()],
        runs=[
            RunInfo("A", "/tmp/w/a.trace", 1, 1, "stopped", True, 0, 1.0),
            RunInfo("B", "/tmp/w/b.trace", 1, 1, "stopped", True, 0, 1.0),
        ],
        compared_events=1,
        differing_events=1,
        first_differing_event=0,
        replay=[
            {"op": "aten.index_put_.default", "runs": 5, "distinct_results": 1, "repro": "r.py"}
        ],
        cause="aten.index_put_.default in layers.0.aggregate, forward, step 0 (kernel)",
    )
    text = " ".join(_rendered(report).replace("│", " ").split())
    assert "1 event, 1 optimizer step," in text
    assert "1 distinct result (" in text and "distinct results" not in text
    assert "1 of 1 event differ" in text


def test_digest_runs_and_fewer_steps_than_asked(tmp_path):
    """A ladder compares step digests: the runs say so (not "0 events"); a script that ends
    before the steps asked for gets a note."""
    result, report = find_json(tmp_path, "deterministic.py", "--steps", "6")
    assert result.returncode == 0, result.stdout
    assert "step digests of 4 optimizer steps" in result.stdout
    assert "0 events" not in result.stdout
    assert any("fewer than the 6 asked for" in note for note in report["notes"]), report["notes"]


def test_interventions_fit_80_columns():
    result = _cli("interventions")
    assert result.returncode == 0
    _fits(result.stdout)
    assert result.stdout.startswith("sdpa-math")


def test_doctor_lists_every_random_op_places_backward_ops_and_gives_no_gpu_advice(tmp_path):
    script = SCRIPTS / "doctor_ops.py"
    result = subprocess.run(
        [sys.executable, "-m", "bisector", "doctor", str(script)],
        capture_output=True,
        text=True,
        env=_narrow_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    _fits(text)
    flat = " ".join(text.split())
    # the .generator overloads draw random numbers too
    assert "aten.randperm.generator" in flat and "aten.randn.generator" in flat, text
    # the backward of `table[index]` adds with atomics: placed at that forward line
    forward = _marked(script, "# GATHER")
    assert f"aten.index_put.default on cpu, 1 call, at {script}:{forward}" in flat, text
    # the script runs on the CPU only: no GPU setting is advised
    assert "CUBLAS" not in flat and "cudnn.deterministic is off" not in flat
    assert "fused SDPA" not in flat


def _marked(script, marker: str) -> int:
    for number, line in enumerate(script.read_text().splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(marker)


def test_record_prints_its_file_whole(tmp_path):
    out = tmp_path / ("a-folder-with-a-long-name-" * 3) / "run.trace"
    result = run_cli("record", str(SCRIPTS / "deterministic.py"), "-o", str(out), "--", "2")
    assert result.returncode == 0, result.stderr
    assert f"  {out}" in result.stdout.splitlines()
    assert "Recorded 240 events over 2 optimizer steps into" in result.stdout


def test_runs_are_described_listed_and_pruned(tmp_path):
    """find keeps the newest runs under .bisector/ (BISECTOR_KEEP_RUNS), each described in its
    run.json; `bisector runs` lists them and prunes by hand."""
    env = {**_narrow_env(), "BISECTOR_KEEP_RUNS": "2"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "bisector", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    script = str(SCRIPTS / "deterministic.py")
    for _ in range(3):
        assert cli("find", script, "--no-confirm", "--", "2").returncode == 0
    folders = sorted((tmp_path / ".bisector").iterdir())
    assert len(folders) == 2, folders  # the oldest of three was removed
    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    _fits(listed.stdout)
    assert listed.stdout.count("deterministic.py 2: reproducible") == 2, listed.stdout
    assert "2 runs," in listed.stdout
    dry = cli("runs", "--prune", "--keep", "1", "--dry-run")
    assert "would remove 1 run" in dry.stdout and len(list(folders[0].parent.iterdir())) == 2
    done = cli("runs", "--prune", "--keep", "0", "--older-than", "0")
    assert "removed 2 runs" in done.stdout, done.stdout
    assert not list((tmp_path / ".bisector").iterdir())


def test_find_runs_a_module_as_python_dash_m(tmp_path):
    """`find -m package.train`: the module runs in its package (relative imports), its
    arguments after `--`; the source is named in the package's file."""
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(
        "from torch import nn\n\n\n"
        "class Pool(nn.Module):\n"
        "    def forward(self, rows, index):\n"
        "        out = rows.new_zeros(100, rows.shape[1])\n"
        "        return out.index_put_((index,), rows, accumulate=True)  # SOURCE\n"
    )
    (package / "train.py").write_text(
        "import sys\n\nimport torch\n\nfrom .model import Pool\n\n"
        "steps = int(sys.argv[sys.argv.index('--steps') + 1])\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(2)\n"
        "proj, pool = torch.nn.Linear(16, 32), Pool()\n"
        "optimizer = torch.optim.SGD(proj.parameters(), lr=0.1)\n"
        "g = torch.Generator().manual_seed(1)\n"
        "x = torch.randn(60000, 16, generator=g)\n"
        "index = torch.randint(0, 100, (60000,), generator=g)\n"
        "for _ in range(steps):\n"
        "    loss = pool(proj(x), index).pow(2).mean()\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
    )
    out = tmp_path / "report.json"
    env = _narrow_env()
    command = [sys.executable, "-m", "bisector", "find", "-m", "proj.train", "--no-confirm"]
    done = subprocess.run(
        [*command, "--json", str(out), "--", "--steps", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    first = json.loads(out.read_text())["first_divergence"]
    assert first["op"] == "aten.index_put_.default", first
    assert first["location"] == "proj/model.py:7", first
    missing = subprocess.run(
        [sys.executable, "-m", "bisector", "find", "-m", "proj.nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and "no module named proj.nope" in missing.stderr


@pytest.mark.parametrize(
    "kind, label", [("unconfirmed", "Runs diverged once:"), ("kernel", "Runs diverge:")]
)
def test_only_an_unconfirmed_cause_with_an_identical_second_pair_diverged_once(kind, label):
    """A second plain pair that happened to be identical does not make a replayed kernel's
    divergence "once": only a cause its replays could not show (``Report.diverged_once``)."""
    report = Report(
        reproducible=False,
        first_divergence=_source(kind=kind),
        sources=[_source(kind=kind)],
        runs=[],
        compared_events=10,
        differing_events=3,
        recurred=False,
        cause="...",
    )
    text = _rendered(report)
    assert label in text and report.diverged_once == (kind == "unconfirmed")
    credited = "none credited" in text
    assert credited == (kind == "unconfirmed"), text
