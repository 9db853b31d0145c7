"""Training as people run it: inside Lightning, the HF Trainer, Accelerate, PyG, an LBFGS
closure, a loop without optimizer, DataLoader workers, torch.compile, a script that sets
cudnn.benchmark itself, activation checkpointing, a gradient penalty (a double backward), a
conditional GAN (two optimizers, a backward after the other network's step, an EMA), bf16
autocast with a GradScaler and gradient accumulation. Each
script in tests/scripts/frameworks/ plants one source of run-to-run difference on the CPU at
the line marked ``# SOURCE`` and has a deterministic twin (``--twin``);
the truth of each was checked with two or more plain runs (statehash.py, see its docstring).
bisector must name the planted op with its module, phase and the user's own line, and call the
twin reproducible."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SCRIPTS, bisector_command, subprocess_env

pytestmark = pytest.mark.slow

FRAMEWORKS = SCRIPTS / "frameworks"


@dataclass(frozen=True)
class Case:
    script: str
    kind: str
    op: str
    module: str
    phase: str
    needs: str = ""  # the framework the script imports
    args: tuple[str, ...] = ()
    library: str = ""  # where the library frame beside the user's line lies ("" none)
    twin_args: tuple[str, ...] = ()  # more arguments for the twin (a smaller workload)
    step: int = 0  # the optimizer step of the source (a GAN steps two optimizers an iteration)
    # interventions to try in the planted case's find, and what their pairs must show (one find
    # serves both checks: each find is a few processes that import torch)
    tries: tuple[str, ...] = ()
    outcome: Callable[[dict], None] | None = None

    def __str__(self) -> str:
        return self.script.removesuffix(".py") + "".join(self.args)


def _the_generator_op_replays_and_adam_becomes_sgd(report: dict) -> None:
    """Under the HF Trainer: the rng source replays to one result from one generator state, and
    adam-to-sgd reaches the Trainer's optimizer (applied; the rng still differs)."""
    first = report["first_divergence"]
    (replayed,) = [r for r in report["replay"] if r["event"] == first["event"]]
    assert (replayed["op"], replayed["error"]) == ("aten.rand.generator", None), replayed
    assert replayed["distinct_results"] == 1  # one result from one generator state
    (pair,) = report["confirmations"]
    assert pair["outcome"] in ("amplifier", "no-effect"), pair
    assert pair["first_divergence"] == "aten.rand.generator (rng)"


def _an_intervention_that_cannot_take_effect_says_so(report: dict) -> None:
    (pair,) = report["confirmations"]
    assert pair["outcome"] == "did-not-apply"
    assert pair["not_applied"] == "no transformers model was built in the run"


CASES = [
    Case("lightning_auto.py", "kernel", "aten.index_put_.default", "pool", "forward", "lightning"),
    Case(
        "lightning_manual.py", "kernel", "aten.index_put.default", "items", "backward", "lightning"
    ),
    Case(
        "lightning_step.py",
        "kernel",
        "aten.index_put.default",
        "TableRegressor",
        "backward",
        "lightning",
    ),
    Case(
        "hf_trainer.py",
        "rng",
        "aten.rand.generator",
        "",
        "other",
        "transformers",
        tries=("adam-to-sgd",),
        outcome=_the_generator_op_replays_and_adam_becomes_sgd,
    ),
    Case(
        "accelerate_loop.py",
        "kernel",
        "aten.index_put.default",
        "BagRegressor",
        "backward",
        "accelerate",
    ),
    Case(
        "pyg_aggr.py",
        "kernel",
        "aten.index_put_.default",
        "conv1.aggr_module",
        "forward",
        "torch_geometric",
    ),
    Case(
        "pyg_gat_dropout.py",
        "rng",
        "aten.bernoulli_.float",
        "conv1",
        "forward",
        "torch_geometric",
        library="torch_geometric/",
    ),
    Case(
        "lbfgs_closure.py",
        "kernel",
        "aten.index_put_.default",
        "encoder.pool",
        "forward",
        tries=("eager-attention",),
        outcome=_an_intervention_that_cannot_take_effect_says_so,
    ),
    Case("manual_sgd.py", "kernel", "aten.index_put_.default", "conv1", "forward"),
    Case("worker_init.py", "input", "leaf.tensor", "features.0", "forward"),
    Case("cudnn_benchmark.py", "kernel", "aten.index_put_.default", "disc.stats", "forward"),
    Case("nanogpt_compile.py", "rng", "aten.randint.generator", "", "other"),
    Case("transformer_fastpath.py", "kernel", "aten.index_put_.default", "head", "forward"),
    *(
        Case(
            "activation_checkpoint.py",
            "kernel",
            "aten.index_put.default",
            "blocks.1",
            "backward",
            args=kind,  # the non-reentrant checkpoint, and the reentrant one
            twin_args=("--rows", "20000"),
        )
        for kind in ((), ("--reentrant",))
    ),
    Case("gradient_penalty.py", "kernel", "aten.index_put.default", "Critic", "backward"),
    Case(
        "amp_accumulate.py",
        "kernel",
        "aten.index_put.default",
        "BagRegressor",
        "backward",
        twin_args=("--rows", "20000"),
    ),
    Case(
        "conditional_gan.py",
        "kernel",
        "aten.index_put.default",
        "G",
        "backward",
        twin_args=("--rows", "20000"),
        step=1,
    ),
    Case("sparse_embeddings.py", "kernel", "aten.index_put.default", "DLRM", "backward"),
]


def marked_line(script: Path) -> int:
    """The line that ends with the ``# SOURCE`` marker (docstrings mention it mid-line)."""
    for number, line in enumerate(script.read_text().splitlines(), start=1):
        if line.rstrip().endswith("# SOURCE"):
            return number
    raise AssertionError(f"no line ends with # SOURCE in {script}")


def held_against(pair: dict, script: str, statement: str) -> bool:
    """True if the pair noted the script's own ``statement`` (the line of the script that
    starts with it) as an attempt to undo the intervention, which held."""
    lines = (FRAMEWORKS / script).read_text().splitlines()
    line = next(n for n, text in enumerate(lines, start=1) if text.startswith(statement))
    return any(
        o["what"].startswith(statement) and o["line"].endswith(f"{script}:{line}")
        for o in pair["overrides"]
    )


def find(tmp_path: Path, script: str, *args: str, confirm: tuple[str, ...] = ()) -> dict:
    """`bisector find` on a corpus script (``--no-confirm`` unless interventions are given to
    try): the JSON report."""
    out = tmp_path / "report.json"
    command = [*bisector_command(), "find", str(FRAMEWORKS / script), "--quiet"]
    if confirm:
        command += [part for name in confirm for part in ("--try", name)] + ["--only-tries"]
    else:
        command.append("--no-confirm")
    command += ["--workdir", str(tmp_path / "runs"), "--json", str(out), "--", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=subprocess_env()
    )
    assert done.returncode in (0, 1, 3), done.stderr[-3000:]
    return json.loads(out.read_text())


def _needs(case: Case) -> None:
    if case.needs:
        pytest.importorskip(case.needs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_planted_source_is_named_at_the_users_line(tmp_path, case):
    _needs(case)
    report = find(tmp_path, case.script, *case.args, confirm=case.tries)
    assert report["verdict"] == "diverged", report["evidence"]
    # On a loaded machine a CPU kernel can differ by itself (exp's vectorised and scalar
    # paths split at another element when fewer threads run); its replay on the captured
    # inputs is then stable, and bisector says "unconfirmed", never "kernel". The planted
    # source is the first other one.
    sources = report["sources"]
    claimed = [s for s in sources if s["kind"] != "unconfirmed"]
    first = claimed[0]
    assert all(s["kind"] == "unconfirmed" for s in sources[: sources.index(first)])
    assert (first["kind"], first["op"], first["module"], first["phase"]) == (
        case.kind,
        case.op,
        case.module,
        case.phase,
    ), first
    # A planted race shows where the threads overlap: on a loaded machine one step's can run
    # one after the other and agree (seen in CI: transformer_fastpath's at step 1, not 0); then
    # the first differing step is a later one, and bisector must say so.
    if case.kind == "kernel":
        assert first["step"] >= case.step, first
    else:
        assert first["step"] == case.step, first
    assert first["location"].endswith(
        f"frameworks/{case.script}:{marked_line(FRAMEWORKS / case.script)}"
    )
    assert case.library in first["library"] if case.library else first["library"] == ""
    assert "/tmp/" not in first["location"] and not first["location"].startswith("<")
    if case.kind == "kernel":  # every kernel claim is checked by a replay
        assert first["checked"]["result"] == "confirmed", first["checked"]
    if case.outcome is not None:
        case.outcome(report)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_twin_is_reproducible(tmp_path, case):
    _needs(case)
    report = find(tmp_path, case.script, "--twin", *case.args, *case.twin_args)
    if report["verdict"] == "diverged":
        # On a loaded CI machine an elementwise CPU kernel (tanh, exp) has once given other
        # last bits on equal inputs (its vectorised and scalar paths split elsewhere when
        # fewer threads run): the runs really differed, and its stable replay made bisector
        # say "unconfirmed". What must never happen in a twin is a claim: kernel, rng, input.
        assert {s["kind"] for s in report["sources"]} == {"unconfirmed"}, report["sources"][:3]
        return
    assert report["verdict"] == "reproducible", (report["sources"][:3], report["evidence"])


# ----- interventions that apply, hold, or say they did not ------------------------------------


def test_adam_to_sgd_turns_every_adam_family_optimizer_into_sgd():
    from bisector.confirm.interventions import apply_interventions, child_notes

    original = torch.optim.Adam.__init__
    model = torch.nn.Linear(4, 2)
    undo = apply_interventions(["adam-to-sgd"])
    try:

        class Custom(torch.optim.AdamW):  # a subclass, as frameworks and users write them
            def __init__(self, params, lr):
                super().__init__(params, lr=lr, weight_decay=0.1)

        built = [
            torch.optim.Adam(model.parameters(), 0.1),
            torch.optim.AdamW(params=model.parameters(), lr=0.2, fused=False),
            torch.optim.NAdam(
                [{"params": [model.weight], "lr": 0.01, "weight_decay": 0.5}, {"params": []}],
                lr=0.3,
                betas=(0.8, 0.9),
            ),
            Custom(model.parameters(), 0.4),
        ]
        notes = child_notes()
    finally:
        undo()
    assert torch.optim.Adam.__init__ is original
    assert [type(o) for o in built] == [torch.optim.SGD] * 4
    lrs = [[g["lr"] for g in o.param_groups] for o in built]
    assert lrs == [[0.1], [0.2], [0.01, 0.3], [0.4]]
    assert all(g["weight_decay"] == 0 and g["momentum"] == 0 for o in built for g in o.param_groups)
    assert notes["adam-to-sgd"] == {"Adam": 1, "AdamW": 1, "NAdam": 1, "Custom": 1}


def test_switches_hold_against_the_script_and_the_line_that_tried_is_noted():
    from bisector.confirm.interventions import apply_interventions, child_notes

    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    threads = torch.get_num_threads()
    undo = apply_interventions(["cudnn", "deterministic", "single-thread"])
    try:
        torch.backends.cudnn.benchmark = True  # what the script does after us
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False):
            inside = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(4)
        held = (
            torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(),
            torch.get_num_threads(),
        )
        notes = child_notes()
    finally:
        undo()
    assert inside == (False, True) and held == (False, True, 1)
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
    assert torch.get_num_threads() == threads
    tried = {o["what"] for o in notes["overrides"]}
    assert {
        "torch.backends.cudnn.benchmark = True",
        "torch.backends.cudnn.deterministic = False",
        "torch.use_deterministic_algorithms(False)",
        "torch.set_num_threads(4)",
    } <= tried
    assert all(o["line"].startswith(__file__) for o in notes["overrides"]), notes


@pytest.mark.parametrize("load", ["config", "from_config", "pretrained"])
def test_eager_attention_reaches_models_however_built(tmp_path, load):
    transformers = pytest.importorskip("transformers")
    from torch.utils._python_dispatch import TorchDispatchMode

    from bisector.confirm.interventions import apply_interventions

    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )

    def build():
        if load == "config":
            return transformers.LlamaForCausalLM(config)
        if load == "from_config":
            return transformers.AutoModelForCausalLM.from_config(config)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / load)
        return transformers.AutoModelForCausalLM.from_pretrained(tmp_path / load)

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func))
            return func(*args, **(kwargs or {}))

    def attention_ops(model) -> set[str]:
        with Ops() as seen:
            model(torch.zeros(1, 8, dtype=torch.long))
        return {name for name in seen.names if "attention" in name}

    assert attention_ops(build())  # without the intervention: SDPA's fused kernel
    undo = apply_interventions(["eager-attention"])
    try:
        model = build()
    finally:
        undo()
    assert model.config._attn_implementation == "eager"
    assert not attention_ops(model)


def test_a_single_thread_pair_holds_against_the_scripts_own_thread_count(tmp_path):
    script = "cudnn_benchmark.py"
    # 256 images: its race (64 images, 65,536 rows into 4) did not show in 2 of 4 CI pairs,
    # which were then reproducible and ran no pair
    report = find(tmp_path, script, "--batch", "256", confirm=("single-thread",))
    (pair,) = report["confirmations"]
    assert pair["outcome"] == "fixes", pair
    assert held_against(pair, script, "torch.set_num_threads(")
    assert "set_num_threads(1)" in report["fix"]


# ----- GPU variants (marker cuda; run on the H200) -----------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("load", ["config", "pretrained"])
def test_gpu_trainer_attention_backward_is_fixed_by_eager_attention(tmp_path, load):
    pytest.importorskip("transformers")
    args = ("--twin", "--device", "cuda", "--seq-len", "1024", "--load", load)
    report = find(tmp_path, "hf_trainer.py", *args, confirm=("eager-attention",))
    first = report["first_divergence"]
    assert first["kind"] in ("kernel", "unconfirmed") and first["phase"] == "backward", first
    assert "attention" in first["op"] and first["module"].endswith("self_attn"), first
    assert first["library"].startswith("transformers/"), first
    (pair,) = report["confirmations"]
    assert pair["outcome"] == "fixes", pair


@pytest.mark.cuda
@needs_gpu
def test_gpu_lightning_pyg_scatter_is_named_at_the_users_conv_call(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("torch_geometric")
    report = find(tmp_path, "lightning_pyg.py", "--device", "cuda")
    first = report["first_divergence"]
    assert (first["kind"], first["phase"], first["step"]) == ("kernel", "forward", 0), first
    assert first["op"] in ("aten.scatter_add_.default", "aten.index_add_.default"), first
    assert first["module"].startswith("conv1"), first
    line = marked_line(FRAMEWORKS / "lightning_pyg.py")
    assert first["location"].endswith(f"lightning_pyg.py:{line}"), first
    assert first["library"].startswith("torch_geometric/"), first


@pytest.mark.cuda
@needs_gpu
def test_gpu_cudnn_pair_holds_against_the_scripts_benchmark_switch(tmp_path):
    script = "cudnn_benchmark.py"
    report = find(tmp_path, script, "--device", "cuda", confirm=("cudnn",))
    if report["verdict"] == "reproducible":
        pytest.skip("autotuning chose the same algorithms in both runs this time")
    (pair,) = report["confirmations"]
    assert pair["outcome"] == "fixes", pair
    assert held_against(pair, script, "torch.backends.cudnn.benchmark = True")


def test_an_op_with_more_inputs_than_an_event_holds_is_recorded(tmp_path):
    """default_collate stacks a batch of 66000 samples of a TensorDataset: 66000 inputs, all
    views of one storage, read as 64 leaves of a row each and one of the whole storage that the
    rest share (see ValueTable); 70000 distinct tensors stacked are cut to the first 65535,
    flagged."""
    from bisector.capture.recorder import Recorder
    from bisector.capture.values import MAX_LEAF_SPANS
    from bisector.trace import FLAG_WIDE, MAX_ROWS, load

    data = torch.randn(70000, 4)
    rows = [data[i] for i in range(66000)]
    separate = [torch.full((2,), float(i)) for i in range(70000)]
    with Recorder(tmp_path / "wide.trace"):
        torch.stack(rows)
        torch.stack(separate)
    trace = load(tmp_path / "wide.trace")
    stacks = [i for i in range(len(trace)) if trace.string("op", i) == "aten.stack.default"]
    n_in = [int(trace.columns["n_in"][i]) for i in stacks]
    flags = [int(trace.columns["flags"][i]) & FLAG_WIDE for i in stacks]
    assert (n_in, flags) == ([MAX_LEAF_SPANS + 1, MAX_ROWS], [0, FLAG_WIDE])
