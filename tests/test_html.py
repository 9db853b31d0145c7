"""The HTML report: one self-contained, well-formed page for each kind of report, text escaped."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import pytest

from bisector.checkpoint import CheckpointReport
from bisector.confirm.effects import measure
from bisector.digests import DigestReport
from bisector.render.html import render_html
from bisector.report import Report, RunInfo, Source
from bisector.tensor_diff import TensorDiff

# A module name that would run a script if it were written into the page unescaped.
EVIL = 'layers.1.<script>alert("x")</script>&co'
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


class _Balance(HTMLParser):
    """Checks that every element opened is closed, in order, and collects the tags seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()


def _parse(page: str) -> _Balance:
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], parser.stack
    return parser


def _self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>bisector report</title>" in page
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "@import" not in page and "@font-face" not in page


def _source(**changes) -> Source:
    values = dict(
        kind="kernel",
        op="aten.index_put_.default",
        module="layers.0.aggregate",
        phase="forward",
        step=0,
        rank=0,
        location="examples/gnn_scatter.py:35",
        max_abs_diff=1.12e-11,
        max_abs_diff_bound="lower",
        event=34,
        detail="its inputs and arguments are equal in both runs but its outputs differ",
        spread=218,
    )
    values.update(changes)
    return Source(**values)


def _runs() -> list[RunInfo]:
    return [
        RunInfo("A", "/tmp/w/a.trace", 495, 3, "stopped", True, 0, 2.9),
        RunInfo("B", "/tmp/w/b.trace", 495, 3, "stopped", True, 0, 2.7),
    ]


def _diverging() -> Report:
    first = _source()
    later = _source(
        kind="rng",
        op="aten.dropout.default",
        module=EVIL,
        step=1,
        rank=1,
        event=300,
        location="train.py:12",
        max_abs_diff=0.5,
        detail="generator state differed",
    )
    # Three steps of differing events, with a zero and an infinite bound among them.
    curve = [[34, 0, 1.12e-11], [40, 0, 2e-7], [90, 0, 0.0], [170, 1, 3e-6], [200, 1, math.inf]]
    curve += [[330, 2, 4e-6], [400, 2, 1e-5]]
    sgd = [{"step": s, "max_param_diff": 7.45e-9 * 10**s} for s in range(3)]
    plain = [{"step": s, "max_param_diff": 1.49e-6 * (s + 1)} for s in range(3)]
    plain_again = [{"step": s, "max_param_diff": 2e-6 * (s + 1)} for s in range(3)]
    return Report(
        reproducible=False,
        first_divergence=first,
        sources=[first, later],
        runs=_runs(),
        compared_events=495,
        differing_events=219,
        first_differing_event=34,
        notes=["python's hash seed differs & matters <maybe>"],
        sources_total=2,
        cause="aten.index_put_.default in layers.0.aggregate, forward, step 0 (kernel)",
        fix="call `torch.use_deterministic_algorithms(True)` at the start",
        confirmations=[
            {
                "intervention": "deterministic",
                "outcome": "fixes",
                "reproducible": True,
                "growth": [{"step": 0, "max_param_diff": 0.0}],
            },
            {
                "intervention": "adam-to-sgd",
                "outcome": "amplifier",
                "reproducible": False,
                "first_divergence": "aten.index_put_.default (kernel)",
                "growth": sgd,
                "effect": vars(measure(sgd, [plain, plain_again], start=0)),
            },
            {"intervention": "no-compile", "outcome": "fails", "error": "ValueError: <boom>"},
        ],
        replay=[
            {
                "op": "aten.index_put_.default",
                "event": 34,
                "runs": 20,
                "distinct_results": 20,
                "repro": "/tmp/w/replay/event-34.py",
            }
        ],
        growth=[
            {"step": s, "differing_events": 90 + s, "max_grad_diff": 3.8e-6 * (s + 1)}
            | {"max_param_diff": plain[s]["max_param_diff"]}
            | {"max_state_diff": 0.0 if s == 0 else 1e-7}
            | {"exact": True}
            for s in range(3)
        ],
        growth_again=plain_again,
        environment=[{"what": "torch", "a": "2.13.0+cpu", "b": "2.12.0+cpu"}],
        levels=[{"level": "digests", "steps": "0-9", "found": "step 0", "seconds": 4.2}],
        spreaders=[
            {
                "op": "c10d.allreduce_.default",
                "module": "",
                "phase": "backward",
                "step": 0,
                "location": "train.py:40",
                "ranks": [0],
                "from_ranks": [1],
                "origin": "aten.dropout.default",
            }
        ],
        curve=curve,
        modules=[
            {"module": "", "events": 251, "differing": 129},
            {"module": "embed", "events": 28, "differing": 0},
            {"module": "layers.0", "events": 20, "differing": 9},
            {"module": "layers.0.aggregate", "events": 6, "differing": 4},
            {"module": "layers.0.message", "events": 34, "differing": 12},
            {"module": EVIL, "events": 6, "differing": 4},
        ],
    )


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(_diverging())


def test_report_page_is_well_formed_and_self_contained(page):
    tags = _parse(page).tags
    _self_contained(page)
    assert {"svg", "details", "table", "section"} <= set(tags)
    assert "aten.index_put_.default" in page
    assert "examples/gnn_scatter.py:35" in page


def test_report_sections_in_order(page):
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    expected = [
        "First divergence: kernel",
        "Verdict",
        "The difference over the run",
        "How the difference grows, step by step",
        "Where the differences are: module tree",
        "Spread across ranks by collectives",
        "Other sources (1)",
        "How find got here",
        "Growth per step",
        "The runs&#x27; environments differ",
        "Notes",
        "Runs",
    ]
    assert titles == expected


def test_text_from_the_report_is_escaped(page):
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;co" in page
    assert "python&#x27;s hash seed differs &amp; matters &lt;maybe&gt;" in page
    assert "ValueError: &lt;boom&gt;" in page
    # The fix's backticks become code, its text still escaped.
    assert "<code>torch.use_deterministic_algorithms(True)</code>" in page


def test_op_names_are_escaped_in_the_plot_too():
    report = _diverging()
    report.first_divergence = _source(op="custom.my<op>&", module=EVIL)
    page = render_html(report)
    _parse(page)
    assert "first source: custom.my&lt;op&gt;&amp; (event 34)" in page
    assert "my<op>" not in page and "<script" not in page


def test_verdict_shows_replay_and_confirmations(page):
    assert "20 distinct results" in page and "nondeterministic by itself" in page
    assert "/tmp/w/replay/event-34.py" in page
    assert '<span class="pill fixes">fixes</span>' in page
    assert "an amplifier" in page
    assert "[7.4e-09, 7.4e-08, 7.4e-07] (+1.00 decades/step) with it" in page
    assert '<span class="pill fails">fails</span>' in page


def test_pairs_plot_shows_each_pair_against_the_plain_pairs(page):
    verdict = page[page.index("<h2>Verdict") :]
    plot = verdict[verdict.index("<svg") : verdict.index("</svg>")]
    for label in ("plain pair", "plain pair again", "with deterministic", "with adam-to-sgd"):
        assert f">{label}</text>" in plot
    assert "with deterministic, step 0: 0" in plot  # identical runs: in the zero lane
    assert "with adam-to-sgd, step 0: 7.45e-09" in plot
    assert "stroke-dasharray" in plot  # the plain pairs' lines are dashed
    assert "no-compile" not in plot  # a rerun that failed measured nothing


def test_curve_plot_marks_first_source_steps_and_decades(page):
    plot = page[page.index("<h2>The difference over the run") :]
    plot = plot[: plot.index("</svg>")]
    assert 'class="first-source"' in plot
    assert "first source: aten.index_put_.default (event 34)" in plot
    assert plot.count('class="step-label"') == 3  # step 0, 1 and 2
    exponents = re.findall(r'class="tick-y">10<tspan dy="-6" font-size="9">(-?\d+)</tspan>', plot)
    assert exponents and "-11" in exponents and "-5" in exponents
    assert 'class="tick-y">0</text>' in plot  # the lane of zero and infinite bounds
    assert plot.count("<circle") == 5 and plot.count("<path") == 2


def test_growth_plot_has_a_legend(page):
    plot = page[page.index("<h2>How the difference grows") :]
    plot = plot[: plot.index("</svg>")]
    for label in ("gradients", "parameters", "optimizer state"):
        assert f">{label}</text>" in plot
    assert plot.count("<polyline") == 3


def test_module_tree_marks_the_path_to_the_first_source(page):
    tree = page[page.index('<ul class="tree">') :]
    tree = tree[: tree.index("</section>")]
    on_path = re.findall(r'class="node[^"]*\bpath\b[^"]*" title="([^":]*)', tree)
    assert on_path == ["(all events)", "layers", "layers.0", "layers.0.aggregate"]
    assert '<span class="badge">first source</span>' in tree
    # Parents not listed are made from their children: layers = 20 + 6 + 34 + 6 events.
    assert 'title="layers"><span class="twisty"></span><span class="name">layers<' in tree
    assert "<b>29</b> of 66 differ" in tree
    assert "(outside every module)" in tree
    assert 'class="node" title="embed"' in tree  # nothing differs there: not coloured


def test_other_sources_have_a_rank_column_when_a_rank_is_not_0(page):
    others = page[page.index("<h2>Other sources") :]
    others = others[: others.index("</table>")]
    assert "<th>ranks</th>" in others and "aten.dropout.default" in others


def test_report_without_curve_modules_or_growth():
    report = _diverging()
    report.curve, report.modules, report.growth, report.growth_again = [], [], [], []
    report.confirmations = [
        {k: v for k, v in c.items() if k != "growth"} for c in report.confirmations
    ]
    page = render_html(report)
    _parse(page)
    _self_contained(page)
    assert "<svg" not in page and 'class="tree"' not in page
    assert "The difference over the run" not in page and "Growth per step" not in page


def test_reproducible_report():
    report = Report(True, None, [], _runs(), compared_events=495)
    page = render_html(report)
    _parse(page)
    _self_contained(page)
    assert "Reproducible:" in page and "bitwise identical over 495 events" in page
    assert "First divergence" not in page and "Verdict" not in page


def test_digest_report():
    report = DigestReport(
        reproducible=False,
        first_step=3,
        first=[
            {"kind": "rng", "name": "torch", "max_abs_diff": None},
            {"kind": "grad", "name": "layers.0.<w>", "max_abs_diff": 2.4e-7},
        ],
        growth=[
            {"step": s, "differing": 0 if s < 3 else 4, "max_grad_diff": 0.0 if s < 3 else 1e-7}
            | {"max_param_diff": 0.0 if s < 4 else 1e-9, "max_state_diff": 0.0}
            for s in range(6)
        ],
        steps_compared=6,
        paths=["a.digests", "b.digests"],
        notes=["steps 6-7 are only in A (a.digests)"],
    )
    page = render_html(report)
    _parse(page)
    _self_contained(page)
    assert "layers.0.&lt;w&gt;" in page and "the backward pass differs" in page
    assert "Values that differ at step 3" in page and page.count("<svg") == 1
    assert ">gradients</text>" in page and "a.digests" in page


def test_checkpoint_report():
    tensors = [
        TensorDiff("model.0.weight", "float32", [16, 8], False, 3, 1.5e-8, 2),
        TensorDiff("model.0.bias", "float32", [16], False, 2, 0.0, 0, nan_differing=2),
        TensorDiff("model.1.weight", "float32", [16], True),
    ]
    report = CheckpointReport(
        reproducible=False,
        tensors=tensors,
        missing=["optimizer.<state>"],
        mismatched=[{"name": "model.2.weight", "a": "float32[4, 16]", "b": "bfloat16[4, 16]"}],
        values=[{"name": "step", "a": 2, "b": 3}],
        groups=[
            {"prefix": "model.0", "tensors": 2, "differing": 2, "max_abs_diff": 1.5e-8}
            | {"nan_differing": 2},
            {"prefix": "model.1", "tensors": 1, "differing": 0, "max_abs_diff": 0.0}
            | {"nan_differing": 0},
        ],
        paths=["a.pt", "b.pt"],
    )
    page = render_html(report)
    _parse(page)
    _self_contained(page)
    assert "Checkpoints differ:" in page and "2 of 3 tensors differ" in page
    assert "float32[16, 8]" in page and "1.5e-08" in page and "NaN" in page
    assert "optimizer.&lt;state&gt;" in page and "bfloat16[4, 16]" in page
    assert "Fully identical: <code>model.1</code>" in page


def test_identical_checkpoints():
    report = CheckpointReport(True, [TensorDiff("w", "float32", [2], True)], paths=["a", "b"])
    page = render_html(report)
    _parse(page)
    assert "Checkpoints are bitwise identical:" in page


def test_other_objects_are_refused():
    with pytest.raises(TypeError):
        render_html({"reproducible": True})


def test_cli_writes_html_and_quiet_prints_nothing(tmp_path):
    """`bisector find --html --quiet`: the HTML file is written, stdout stays empty."""
    from conftest import SCRIPTS
    from test_cli import run_cli

    html = tmp_path / "report.html"
    result = run_cli(
        "find",
        str(SCRIPTS / "forward_atomic.py"),
        "--no-confirm",
        "--quiet",
        "--html",
        str(html),
        "--workdir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and result.stderr == ""
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and "aten.index_put_.default" in text
    assert "<svg" in text and "http://" not in text and "https://" not in text


def test_every_report_file_comes_from_one_renderer_interface():
    import io

    from rich.console import Console

    from bisector.render import to_console, to_file

    report = _diverging()
    assert to_file(report, "json") == report.to_json()
    assert to_file(report, "html") == render_html(report)
    with pytest.raises(ValueError, match="one of json, html"):
        to_file(report, "xml")
    out = io.StringIO()
    to_console(report, Console(file=out, width=80))
    assert "First divergence" in out.getvalue() and "Verdict" in out.getvalue()
